"""Issue 13: the program's life on a shared machine, not the ELF bytes.

1. Terminal injection: names and paths from input are shown escaped in every text output (on a
   pipe and on a pty), JSON/SARIF stay valid UTF-8 and lossless.
2. Special files and sizes: FIFOs, devices and directories are refused without blocking; files
   over Xen's limit (or the stated read bound) are refused on their size, sparse ones in a stat.
3. Input changing under the tool: deleted, truncated or rewritten mid-run is exit 2, never 70.
4. ``--in-place --backup`` under concurrency: the backup is the bytes read; a changed destination
   is not replaced.
5. ``check DIR`` with an unreadable directory is a finding and exit 2, never a silent PASS.
6. Ownership kept by ``--in-place`` as root; usage errors are one line and exit 2.

Hangs are bounded by subprocess timeouts as a safety net only; every assertion is on an outcome.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile

from lp_rewrite import rewrite
from lp_rewrite.errors import InputError, UsageError
from lp_rewrite.inputs import MAX_INPUT_SIZE, read_input
from lp_rewrite.livepatch_abi import MAX_PAYLOAD_SIZE
from lp_rewrite.textsafe import for_json, shown
from tests.conftest import COMMITTED, ROOT, assert_one_line_error, run_cli

GOOD = COMMITTED / "x86_64" / "keyhandler.livepatch"  # one LP001 finding in .text.lp_load, one retarget

# Bytes a terminal acts on; none may reach the output raw.
RAW_CONTROLS = (b"\x1b", b"\x07", b"\x9b", b"\xc2\x9b", b"\x7f", b"\r")
# The target section's new name (13 bytes, as long as ".text.lp_load"): a line break, a fake verdict,
# a byte that is not UTF-8 and ESC.
SECTION = b"\nFAKE: PASS\xff\x1b"
SECTION_SHOWN = "\\x0aFAKE: PASS\\xff\\x1b"
SECTION_JSON = "\nFAKE: PASS\\xff\x1b"
# The 5 bytes before it, only in ".rela" + that name: an OSC title change.
RELA_HEAD = b"\x1b]0;\x07"
# The load hook's symbol (7 bytes, as long as "lp_load"): C1 CSI in UTF-8, CR, ESC.
SYMBOL = b"\xc2\x9b2J\r\x1bc"
SYMBOL_SHOWN = "\\x9b2J\\x0d\\x1bc"


def _unescape(text: str) -> bytes:
    """Invert :func:`shown` (the test's own reading of the documented rule)."""
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c != "\\":
            out += c.encode()
            i += 1
            continue
        kind = text[i + 1]
        if kind == "\\":
            out += b"\\"
            i += 2
        elif kind == "x":
            value = int(text[i + 2 : i + 4], 16)
            out += bytes([value]) if value >= 0x80 and not 0x80 <= value <= 0x9F else chr(value).encode()
            i += 4
        elif kind == "u":
            out += chr(int(text[i + 2 : i + 6], 16)).encode()
            i += 6
        else:
            assert kind == "U", text
            out += chr(int(text[i + 2 : i + 10], 16)).encode()
            i += 10
    return bytes(out)


def _strtab_offset(data: bytes, name: bytes, table: str) -> int:
    import io

    sec = ELFFile(io.BytesIO(data)).get_section_by_name(table)
    assert sec is not None
    at = data.index(b"\0" + name + b"\0", sec["sh_offset"]) + 1
    assert at < sec["sh_offset"] + sec["sh_size"]
    return at


def hostile_payload(path: Path) -> Path:
    """GOOD with a section and a symbol renamed to terminal escapes, a line break and invalid UTF-8."""
    data = bytearray(GOOD.read_bytes())
    rela = _strtab_offset(bytes(data), b".rela.text.lp_load", ".shstrtab")
    data[rela : rela + 18] = RELA_HEAD + SECTION
    sym = _strtab_offset(bytes(data), b"lp_load", ".strtab")
    data[sym : sym + 7] = SYMBOL
    path.write_bytes(bytes(data))
    return path


def _cmd(*args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", "lp_rewrite", *map(str, args)]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LP_REWRITE_DEBUG", "CI")}
    env.update(extra)
    return env


def run_on_pty(*args: str | os.PathLike[str]) -> tuple[int, bytes, bytes]:
    """Run the CLI with stdout on a pseudo-terminal (stderr on a pipe); CR LF from the tty's onlcr become LF."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            _cmd(*args), stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE, cwd=ROOT, env=_env()
        )
    finally:
        os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError as exc:  # EIO: the other side is closed
            assert exc.errno == errno.EIO
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.stderr.close()
    code = proc.wait(timeout=120)
    return code, b"".join(chunks).replace(b"\r\n", b"\n"), err


def run_on_pipe(*args: str | os.PathLike[str]) -> tuple[int, bytes, bytes]:
    proc = subprocess.run(_cmd(*args), capture_output=True, cwd=ROOT, env=_env(), timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def assert_inert(out: bytes) -> None:
    for raw in RAW_CONTROLS:
        assert raw not in out, (raw, out)
    assert not any(line.startswith(b"FAKE") for line in out.split(b"\n")), out


# -- 1. terminal injection --------------------------------------------------------------------


def test_shown_escapes_controls_invalid_utf8_and_backslash_losslessly() -> None:
    raw = b"a\x1b[2J\x07\r\n\t\x7f\xc2\x9b\xff\\x1b\xe2\x80\xae\xe2\x80\xa8\xf0\x9f\x98\x80 ok"
    text = raw.decode("utf-8", "surrogateescape")
    out = shown(text)
    assert out.isprintable() and out.isascii() is False  # the emoji stays; nothing else unprintable
    assert out == ("a\\x1b[2J\\x07\\x0d\\x0a\\x09\\x7f\\x9b\\xff\\\\x1b\\u202e\\u2028\U0001f600 ok")
    assert _unescape(out) == raw
    assert shown("plain.name+0x10") == "plain.name+0x10"


def test_for_json_is_valid_utf8_and_lossless() -> None:
    raw = b"sec\xff\\n\x1b"
    doc = for_json({"name": raw.decode("utf-8", "surrogateescape"), "n": 1, "list": ["ok"]})
    text = json.dumps(doc)
    back = json.loads(text)
    back["name"].encode("utf-8")  # no lone surrogate
    assert back == {"name": "sec\\xff\\\\n\x1b", "n": 1, "list": ["ok"]}
    assert _unescape(back["name"].replace("\x1b", "\\x1b")) == raw


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    return hostile_payload(tmp_path / "hostile.livepatch")


@pytest.mark.parametrize("runner", [run_on_pipe, run_on_pty], ids=["pipe", "pty"])
@pytest.mark.parametrize("command", ["check", "explain", "rewrite-v", "verify"])
def test_names_from_the_payload_are_shown_escaped(runner: Any, command: str, hostile: Path, tmp_path: Path) -> None:
    out_path = tmp_path / "out.livepatch"
    if command == "check":
        args: list[str | os.PathLike[str]] = ["check", hostile]
    elif command == "explain":
        args = ["explain", hostile]
    elif command == "rewrite-v":
        args = ["rewrite", "-v", hostile, "-o", out_path]
    else:
        assert run_cli("rewrite", hostile, "-o", out_path).returncode == 0
        args = ["verify", hostile, out_path]
    code, out, err = runner(*args)
    assert code == (1 if command == "check" else 0), (out, err)
    assert_inert(out)
    assert_inert(err)
    text = out.decode()
    assert SECTION_SHOWN in text  # the section, inside its row
    if command == "check":
        assert SYMBOL_SHOWN in text  # the hook's symbol, in the finding's message
        assert text.rstrip().splitlines()[-1].startswith("lp-rewrite check: 1 payload(s)")
        assert "-> FAIL" in text


@pytest.mark.parametrize("fmt", ["json", "sarif"])
def test_json_and_sarif_carry_the_names_as_valid_utf8(fmt: str, hostile: Path) -> None:
    code, out, _ = run_on_pipe("check", "--format", fmt, hostile)
    assert code == 1
    doc = json.loads(out.decode("utf-8"))  # strict UTF-8
    strings: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, str):
            strings.append(node)
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(k)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    for s in strings:
        s.encode("utf-8")  # no lone surrogate anywhere
    # Exact but for the one byte that is not UTF-8 (the controls are JSON escapes, not text).
    assert any(s.startswith(SECTION_JSON) for s in strings)
    assert any("\x9b2J\r\x1bc+0x14" in s for s in strings)


def test_explain_json_symbol_is_the_documented_form(hostile: Path) -> None:
    code, out, _ = run_on_pipe("explain", "--format", "json", hostile)
    assert code == 0
    doc = json.loads(out.decode("utf-8"))
    assert SECTION_JSON in {d["section"] for d in doc["decisions"]}
    assert "\x1b]0;\x07" + SECTION_JSON in {d["reloc_section"] for d in doc["decisions"]}


@pytest.mark.parametrize("runner", [run_on_pipe, run_on_pty], ids=["pipe", "pty"])
def test_paths_in_error_lines_and_batch_lines_are_escaped(runner: Any, tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    batch.mkdir()
    shutil.copy(GOOD, batch / "good.livepatch")
    evil = os.fsencode(batch) + b"/\x1b]0;pwned\x07\nFAKE: 0 finding(s) -> PASS\xff.livepatch"
    with open(evil, "wb") as f:
        f.write(b"not an ELF file")
    code, out, err = runner("check", batch)
    assert code == 2
    assert_inert(out)
    assert_inert(err)
    assert b"\\x1b]0;pwned\\x07\\x0aFAKE: 0 finding(s) -> PASS\\xff.livepatch: not checked" in out
    (line,) = err.decode().splitlines()
    assert line.startswith("lp-rewrite: error: ") and "\\x1b]0;pwned\\x07\\x0aFAKE" in line
    # A single path given on the command line: the one-line error.
    code, out, err = runner("rewrite", os.fsdecode(evil), "-o", tmp_path / "out")
    assert code == 2 and out == b""
    assert_inert(err)
    assert len(err.decode().splitlines()) == 1


# -- 2. special files and sizes ---------------------------------------------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo.livepatch"
    os.mkfifo(path)
    return path


SPECIAL_COMMANDS = [["rewrite", "{}", "-o", "{out}"], ["explain", "{}"], ["check", "{}"], ["verify", "{}", "{}"]]


def _fill(args: list[str], path: Path, out: Path) -> list[str]:
    return [a.format(path, out=out) for a in args]


@pytest.mark.parametrize(
    "args,kind",
    [
        (args, kind)
        for args in SPECIAL_COMMANDS
        for kind in ("fifo", "/dev/zero", "/dev/urandom", "directory")
        if not (kind == "directory" and args[0] == "check")  # a directory is a batch for check
    ],
    ids=lambda v: v if isinstance(v, str) else v[0],
)
def test_non_regular_files_are_refused_without_blocking(args: list[str], kind: str, fifo: Path, tmp_path: Path) -> None:
    path = {"fifo": fifo, "directory": tmp_path}.get(kind, Path(kind))
    out = tmp_path / "out.livepatch"
    proc = subprocess.run(_cmd(*_fill(args, path, out)), capture_output=True, text=True, env=_env(), timeout=60)
    line = assert_one_line_error(proc)
    assert ("is a directory" if kind == "directory" else "not a regular file") in line
    assert not out.exists()


def test_xen_syms_fifo_is_refused(fifo: Path) -> None:
    line = assert_one_line_error(run_cli("check", "--xen-syms", fifo, GOOD))
    assert "not a regular file (a FIFO)" in line


@pytest.mark.parametrize("size", [1 << 30, 8 << 30], ids=["1GiB", "8GiB"])
def test_sparse_giant_files_are_refused_on_their_size(size: int, tmp_path: Path) -> None:
    big = tmp_path / "big.livepatch"
    with open(big, "wb") as f:
        f.truncate(size)
    out = tmp_path / "out.livepatch"
    line = assert_one_line_error(run_cli("rewrite", big, "-o", out))
    assert f"{size} bytes" in line and f"{MAX_PAYLOAD_SIZE}-byte payload limit" in line
    line = assert_one_line_error(run_cli("rewrite", "--ignore-xen-limits", big, "-o", out))
    assert f"{size} bytes" in line and f"{MAX_INPUT_SIZE}-byte bound" in line
    assert not out.exists()
    line = assert_one_line_error(run_cli("explain", big))
    assert f"{size} bytes" in line
    # check: its LP011 finding, from the size alone.
    proc = run_cli("check", "--format", "json", big)
    assert proc.returncode == 1, proc.stderr
    (payload,) = json.loads(proc.stdout)["payloads"]
    assert [f["rule"] for f in payload["findings"]] == ["LP011"]
    assert f"{size} bytes" in payload["findings"][0]["message"]


def test_a_payload_over_xens_limit_needs_the_flag(tmp_path: Path) -> None:
    padded = tmp_path / "padded.livepatch"
    padded.write_bytes(GOOD.read_bytes() + bytes(MAX_PAYLOAD_SIZE))
    line = assert_one_line_error(run_cli("rewrite", padded, "-o", tmp_path / "out"))
    assert "--ignore-xen-limits" in line
    proc = run_cli("explain", "--ignore-xen-limits", padded)
    assert proc.returncode == 0, proc.stderr


def test_check_dir_with_bad_files_reports_every_one_and_never_aborts(fifo: Path, tmp_path: Path) -> None:
    batch = fifo.parent
    shutil.copy(GOOD, batch / "good.livepatch")
    with open(batch / "sparse.livepatch", "wb") as f:
        f.truncate(8 << 30)
    (batch / "zero.livepatch").symlink_to("/dev/zero")
    (batch / "dangling.livepatch").symlink_to(batch / "nowhere")
    (batch / "dir.livepatch").mkdir()  # a directory is walked, not read
    proc = subprocess.run(
        _cmd("check", "--format", "json", batch), capture_output=True, text=True, env=_env(), timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    doc = json.loads(proc.stdout)
    by_name = {Path(p["path"]).name: p for p in doc["payloads"]}
    assert set(by_name) == {
        "good.livepatch",
        "sparse.livepatch",
        "zero.livepatch",
        "dangling.livepatch",
        "fifo.livepatch",
    }
    assert [f["rule"] for f in by_name["good.livepatch"]["findings"]] == ["LP001"]
    assert [f["rule"] for f in by_name["sparse.livepatch"]["findings"]] == ["LP011"]
    assert "a FIFO" in by_name["fifo.livepatch"]["error"]
    assert "character device" in by_name["zero.livepatch"]["error"]
    assert "No such file" in by_name["dangling.livepatch"]["error"]
    assert len(proc.stderr.splitlines()) == 4  # fifo, zero, dangling: one line each; plus the summary


def test_read_input_refuses_special_files_in_process(fifo: Path) -> None:
    with pytest.raises(InputError, match="a FIFO"):
        read_input(fifo)
    with pytest.raises(InputError, match="character device"):
        read_input("/dev/null")


# -- 3. input changing under the tool ---------------------------------------------------------


_DRIVER = textwrap.dedent(
    """
    import os, sys
    import lp_rewrite.pipeline as pipeline
    from lp_rewrite.cli import main

    action, target = sys.argv[1], sys.argv[2]
    real = pipeline._check_written

    def meddle(*args, **kwargs):
        real(*args, **kwargs)
        if action == "delete":
            os.unlink(target)
        elif action == "replace":
            with open(target + ".new", "wb") as f:
                f.write(b"another writer")
            os.replace(target + ".new", target)
        elif action == "eio":
            raise OSError(5, "Input/output error", target)

    pipeline._check_written = meddle
    sys.argv = ["lp-rewrite", *sys.argv[3:]]
    main()
    """
)


def _driven(action: str, target: Path, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """The real CLI, with the input deleted/replaced (or an I/O error) after the self-check, before the rename."""
    return subprocess.run(
        [sys.executable, "-c", _DRIVER, action, str(target), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(),
        timeout=120,
    )


def _temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_input_deleted_mid_run_in_place_is_exit_2(tmp_path: Path) -> None:
    src = tmp_path / "p.livepatch"
    shutil.copy(GOOD, src)
    line = assert_one_line_error(_driven("delete", src, "rewrite", "--in-place", "--backup", ".orig", src))
    assert "removed since it was read" in line and str(src) in line
    assert not src.exists() and not (tmp_path / "p.livepatch.orig").exists()
    assert _temps(tmp_path) == []


def test_input_deleted_mid_run_with_output_still_writes_the_rewrite_of_what_was_read(tmp_path: Path) -> None:
    src = tmp_path / "p.livepatch"
    shutil.copy(GOOD, src)
    os.chmod(src, 0o640)
    out = tmp_path / "out.livepatch"
    proc = _driven("delete", src, "rewrite", src, "-o", out, "-q")
    assert proc.returncode == 0, proc.stderr
    ref = tmp_path / "ref.livepatch"
    assert run_cli("rewrite", GOOD, "-o", ref).returncode == 0
    assert out.read_bytes() == ref.read_bytes()
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # the mode of the file as it was read


def test_an_os_error_is_exit_2_not_70(tmp_path: Path) -> None:
    src = tmp_path / "p.livepatch"
    shutil.copy(GOOD, src)
    line = assert_one_line_error(_driven("eio", src, "rewrite", src, "-o", tmp_path / "out"))
    assert "Input/output error" in line and "internal error" not in line


def test_input_truncated_and_restored_while_read_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    src = tmp_path / "p.livepatch"
    shutil.copy(GOOD, src)
    original = src.read_bytes()
    real_read = os.read

    def racing_read(fd: int, n: int) -> bytes:
        # Another writer truncates the file and writes it back while it is read.
        with open(src, "r+b") as f:
            f.truncate(0)
            f.write(original)
        os.utime(src, ns=(1, 1))  # a timestamp tick later, seen as a change
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", racing_read)
    with pytest.raises(InputError, match="changed while it was read"):
        rewrite(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_input_shortened_while_read_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    src = tmp_path / "p.livepatch"
    shutil.copy(GOOD, src)
    real_read = os.read
    calls = []

    def short_read(fd: int, n: int) -> bytes:
        calls.append(n)  # the file is cut to 1000 bytes after the size was taken
        return real_read(fd, 1000) if len(calls) == 1 else b""

    monkeypatch.setattr(os, "read", short_read)
    with pytest.raises(InputError, match="1000 read"):
        rewrite(src, tmp_path / "out")


def test_concurrent_truncate_and_restore_never_yields_a_wrong_output(tmp_path: Path) -> None:
    """A writer loops truncate/restore while rewrites run: each is exit 0 with the right bytes, or exit 2."""
    src = tmp_path / "p.livepatch"
    shutil.copy(GOOD, src)
    ref = tmp_path / "ref.livepatch"
    assert run_cli("rewrite", GOOD, "-o", ref).returncode == 0
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\ndata = open(sys.argv[1], 'rb').read()\nwhile True:\n"
            "    with open(sys.argv[1], 'r+b') as f:\n        f.truncate(0)\n        f.write(data)\n",
            str(src),
        ]
    )
    try:
        codes = []
        for i in range(10):
            out = tmp_path / f"out{i}.livepatch"
            proc = run_cli("rewrite", src, "-o", out, "-q")
            codes.append(proc.returncode)
            if proc.returncode == 0:
                assert out.read_bytes() == ref.read_bytes()
            else:
                assert_one_line_error(proc)
                assert not out.exists()
    finally:
        writer.kill()
        writer.wait()
    assert set(codes) <= {0, 2}


# -- 4. --in-place --backup under concurrency -------------------------------------------------


def test_parallel_in_place_rewrites_keep_the_original_in_the_backup(tmp_path: Path) -> None:
    src = tmp_path / "p.livepatch"
    shutil.copy(GOOD, src)
    original = src.read_bytes()
    ref = tmp_path / "ref.livepatch"
    assert run_cli("rewrite", GOOD, "-o", ref).returncode == 0
    procs = [
        subprocess.Popen(
            _cmd("rewrite", "--in-place", "--backup", ".orig", src, "-q"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=_env(),
        )
        for _ in range(20)
    ]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    for code, err in results:
        assert code in (0, 2), err
        if code == 2:
            # The same race, met at one of three points: another rewrite renamed its output over the
            # file while this one read it (the inode read lost its link), before this one's rename,
            # or during it. Each is refused, naming the file, and nothing is lost (below).
            (line,) = err.splitlines()
            races = ("changed while it was read", "changed since it was read", "another process")
            assert str(src) in line and any(race in line for race in races), line
    assert (tmp_path / "p.livepatch.orig").read_bytes() == original
    assert src.read_bytes() == ref.read_bytes()
    assert _temps(tmp_path) == []


def test_a_destination_replaced_by_another_writer_is_not_replaced(tmp_path: Path) -> None:
    src = tmp_path / "p.livepatch"
    shutil.copy(GOOD, src)
    line = assert_one_line_error(_driven("replace", src, "rewrite", "--in-place", "--backup", ".orig", src))
    assert "changed since it was read" in line and str(src) in line
    assert src.read_bytes() == b"another writer"  # the newer content is kept
    assert not (tmp_path / "p.livepatch.orig").exists()
    assert _temps(tmp_path) == []


def test_backup_holds_the_bytes_read_with_mode_and_time(tmp_path: Path) -> None:
    src = tmp_path / "p.livepatch"
    shutil.copy(GOOD, src)
    os.chmod(src, 0o640)
    os.utime(src, ns=(10**18, 10**18))
    rewrite(src, in_place=True, backup_suffix=".orig")
    backup = tmp_path / "p.livepatch.orig"
    assert backup.read_bytes() == GOOD.read_bytes()
    assert stat.S_IMODE(backup.stat().st_mode) == 0o640 and backup.stat().st_mtime_ns == 10**18


@pytest.mark.parametrize("suffix", ["", "/x"])
def test_bad_backup_suffix_is_refused(suffix: str, tmp_path: Path) -> None:
    src = tmp_path / "p.livepatch"
    shutil.copy(GOOD, src)
    line = assert_one_line_error(run_cli("rewrite", "--in-place", "--backup", suffix, src))
    assert "backup suffix" in line
    assert src.read_bytes() == GOOD.read_bytes()
    with pytest.raises(UsageError):
        rewrite(src, in_place=True, backup_suffix=suffix)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 KiB tmpfs (two pages): room for the payload and one more file, no more."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_in_place_backup_on_a_full_disk_leaves_the_original(small_tmpfs: Path) -> None:
    src = small_tmpfs / "p.livepatch"
    shutil.copy(GOOD, src)
    line = assert_one_line_error(run_cli("rewrite", "--in-place", "--backup", ".orig", src))
    assert "No space left on device" in line
    assert src.read_bytes() == GOOD.read_bytes()
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["p.livepatch"]


# -- 5. check DIR that cannot see -------------------------------------------------------------


def _unprivileged() -> list[str]:
    """A prefix that runs a command as root without the capabilities that bypass file permissions."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root, and no setpriv to drop CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]


def test_check_dir_with_an_unreadable_directory_is_exit_2_not_pass(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "ok").mkdir(parents=True)
    (tree / "locked").mkdir()
    ref = tree / "ok" / "rewritten.livepatch"
    assert run_cli("rewrite", GOOD, "-o", ref).returncode == 0
    shutil.copy(GOOD, tree / "locked" / "unrewritten.livepatch")
    os.chmod(tree / "locked", 0)
    try:
        probe = subprocess.run([*_unprivileged(), "ls", str(tree / "locked")], capture_output=True)
        if probe.returncode == 0:
            pytest.skip("this process can still read a mode-000 directory")
        proc = subprocess.run(
            [*_unprivileged(), *_cmd("check", "--format", "json", tree)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=_env(),
            timeout=120,
        )
    finally:
        os.chmod(tree / "locked", 0o755)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    doc = json.loads(proc.stdout)
    errors = [p for p in doc["payloads"] if p["error"]]
    assert [Path(p["path"]).name for p in errors] == ["locked"]
    assert errors[0]["findings"][0]["rule"] == "LP012"
    assert "Permission denied" in errors[0]["error"]
    assert "cannot list the directory" in proc.stderr


def test_check_dir_walk_errors_become_findings_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lp_rewrite.check import batch
    from lp_rewrite.check.findings import Severity
    from lp_rewrite.check.run import CheckOptions

    (tmp_path / "a.livepatch").write_bytes(GOOD.read_bytes())
    real_walk = os.walk

    def walk(top: Any, onerror: Any = None, **kw: Any) -> Any:
        onerror(PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "hidden")))
        return real_walk(top, onerror=onerror, **kw)

    monkeypatch.setattr(os, "walk", walk)
    import io

    result = batch.run([tmp_path], CheckOptions(), progress=False, stream=io.StringIO())
    assert result.unreadable == 1 and result.exit_code(Severity.ERROR) == 2


# -- 6. ownership and usage errors ------------------------------------------------------------


def test_in_place_as_root_keeps_owner_and_group(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    nobody = pwd.getpwnam("nobody")
    src = tmp_path / "p.livepatch"
    shutil.copy(GOOD, src)
    os.chown(src, nobody.pw_uid, nobody.pw_gid)
    os.chmod(src, 0o604)
    proc = run_cli("rewrite", "--in-place", "--backup", ".orig", src)
    assert proc.returncode == 0, proc.stderr
    for path in (src, tmp_path / "p.livepatch.orig"):
        st = path.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (nobody.pw_uid, nobody.pw_gid, 0o604), path
    assert src.read_bytes() != GOOD.read_bytes()


@pytest.mark.parametrize(
    "args,expect",
    [
        (["rewrite", "--frobnicate", "x"], "No such option: --frobnicate"),
        (["rewrite"], "Missing argument"),
        (["rewrite", str(GOOD), "-o"], "requires an argument"),
        (["explain", "--format", "xml", str(GOOD)], "'xml' is not one of"),
        (["check", "--format", "xml", str(GOOD)], "'xml' is not one of"),
        (["check", "--fail-on", "never", str(GOOD)], "Invalid value for '--fail-on'"),
        (["frobnicate"], "No such command"),
        (["rewrite", "/nonexistent/p.livepatch", "-o", "/tmp/x"], "No such file or directory"),
        (["check", "/nonexistent/p.livepatch"], "No such file or directory"),
        (["verify", str(GOOD), "/nonexistent"], "No such file or directory"),
        (["check", "--allow-file", "/nonexistent", str(GOOD)], "No such file or directory"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], expect: str) -> None:
    proc = run_cli(*args)
    line = assert_one_line_error(proc)
    assert expect in line, line
    assert "╭" not in proc.stderr and "Usage:" not in proc.stderr


def test_unreadable_path_argument_is_one_line(tmp_path: Path) -> None:
    src = tmp_path / "p.livepatch"
    shutil.copy(GOOD, src)
    os.chmod(src, 0)
    proc = subprocess.run(
        [*_unprivileged(), *_cmd("explain", src)], capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=120
    )
    line = assert_one_line_error(proc)
    assert "Permission denied" in line and str(src) in line

"""The command line's contract: outputs, exit codes and one-line errors.

Bad inputs are real fixtures damaged at a precise field (located with
pyelftools, not with the project's reader) or real files of the wrong kind.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from tests.conftest import COMMITTED, assert_one_line_error, run_cli
from tests.oracle import Payload as Oracle

GOOD = COMMITTED / "x86_64" / "global_refs.livepatch"
GOOD_ARM = COMMITTED / "arm" / "global_refs.livepatch"


def _relocation_sections(elf: ELFFile) -> list[RelocationSection]:
    """Every SHT_RELA and SHT_REL section (pyelftools reads each as a RelocationSection)."""
    out = []
    for s in elf.iter_sections():
        if s["sh_type"] in ("SHT_RELA", "SHT_REL"):
            assert isinstance(s, RelocationSection), s.name
            out.append(s)
    return out


def _section(path: Path, name: str) -> tuple[int, int]:
    with open(path, "rb") as f:
        s = ELFFile(f).get_section_by_name(name)
        assert s is not None, f"no {name}"
        return s["sh_offset"], s["sh_size"]


def _patched(src: Path, dst: Path, edit: Callable[[bytearray], None]) -> Path:
    data = bytearray(src.read_bytes())
    edit(data)
    dst.write_bytes(bytes(data))
    return dst


def _set_version(data: bytearray, path: Path = GOOD, version: int = 3) -> None:
    off, _ = _section(path, ".livepatch.funcs")
    data[off + 32] = version


def _first_rela_info(path: Path, section: str) -> int:
    off, _ = _section(path, section)
    return off + 8  # r_info of entry 0 (Elf64_Rela)


BAD_INPUTS: dict[str, tuple[Callable[[Path], Path], str]] = {}


def bad(name: str, expect: str) -> Callable[[Callable[[Path], Path]], Callable[[Path], Path]]:
    def register(fn: Callable[[Path], Path]) -> Callable[[Path], Path]:
        BAD_INPUTS[name] = (fn, expect)
        return fn

    return register


@bad("not-elf", "not an ELF file")
def _not_elf(tmp: Path) -> Path:
    p = tmp / "notes.txt"
    p.write_text("this is not a payload\n")
    return p


@bad("empty", "not an ELF file")
def _empty(tmp: Path) -> Path:
    p = tmp / "empty.livepatch"
    p.write_bytes(b"")
    return p


@bad("truncated-header", "truncated ELF header")
def _truncated_header(tmp: Path) -> Path:
    p = tmp / "t.livepatch"
    p.write_bytes(GOOD.read_bytes()[:40])
    return p


@bad("truncated-half", "past the end of the file")
def _truncated_half(tmp: Path) -> Path:
    p = tmp / "t.livepatch"
    data = GOOD.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


@bad("et-exec", "ET_EXEC")
def _et_exec(tmp: Path) -> Path:
    return _patched(GOOD, tmp / "exec.livepatch", lambda d: struct.pack_into("<H", d, 16, 2))


@bad("et-dyn-real-binary", "ET_DYN")
def _et_dyn(tmp: Path) -> Path:
    true = Path(shutil.which("true") or "/bin/true").resolve()
    return _patched(true, tmp / "true", lambda d: None)


@bad("nothing-to-patch", "Nothing to patch")
def _nothing_to_patch(tmp: Path) -> Path:
    """Neither .livepatch.funcs nor a hook section (a hooks-only payload is fine: tests/test_nothing_to_do.py)."""

    def unhook(d: bytearray) -> None:
        assert b".livepatch.hooks.load\0" in d
        d[:] = d.replace(b".livepatch.hooks.load\0", b".livepatch.hooks.loaX\0")  # same length: no offset moves

    return _patched(COMMITTED / "x86_64" / "no_funcs.livepatch", tmp / "nf.livepatch", unhook)


@bad("wrong-version", "payload version 3 is not supported")
def _wrong_version(tmp: Path) -> Path:
    return _patched(GOOD, tmp / "v3.livepatch", _set_version)


@bad("unsupported-type-real", "R_X86_64_32S")
def _unsupported_real(tmp: Path) -> Path:
    return _patched(COMMITTED / "x86_64" / "unsupported_reloc.livepatch", tmp / "u.livepatch", lambda d: None)


@bad("unsupported-type-edited", "R_X86_64_32 (10)")
def _unsupported_edit(tmp: Path) -> Path:
    pos = _first_rela_info(GOOD, ".rela.text.install")
    return _patched(GOOD, tmp / "u.livepatch", lambda d: struct.pack_into("<I", d, pos, 10))


@bad("symbol-index-out-of-range", "but the symbol table has")
def _sym_range(tmp: Path) -> Path:
    pos = _first_rela_info(GOOD, ".rela.text.install")
    return _patched(GOOD, tmp / "s.livepatch", lambda d: struct.pack_into("<I", d, pos + 4, 0xFFFF))


@bad("arm-thumb-type", "R_ARM_THM_CALL")
def _arm_thumb(tmp: Path) -> Path:
    off, _ = _section(GOOD_ARM, ".rel.text.caller")
    return _patched(GOOD_ARM, tmp / "t.livepatch", lambda d: struct.pack_into("<B", d, off + 4, 10))


@bad("big-endian", "big-endian")
def _big_endian(tmp: Path) -> Path:
    return _patched(GOOD, tmp / "be.livepatch", lambda d: d.__setitem__(5, 2))


@bad("wrong-machine", "e_machine 3 is not a Xen livepatch target")
def _wrong_machine(tmp: Path) -> Path:
    return _patched(GOOD, tmp / "m.livepatch", lambda d: struct.pack_into("<H", d, 18, 3))


@bad("funcs-size-not-multiple", "not a multiple of the version-2 entry size 104")
def _funcs_size(tmp: Path) -> Path:
    with open(GOOD, "rb") as f:
        elf = ELFFile(f)
        idx = next(i for i, s in enumerate(elf.iter_sections()) if s.name == ".livepatch.funcs")
        shdr = elf["e_shoff"] + idx * elf["e_shentsize"]
    return _patched(GOOD, tmp / "f.livepatch", lambda d: struct.pack_into("<Q", d, shdr + 32, 100))


@bad("directory", "is a directory")
def _directory(tmp: Path) -> Path:
    d = tmp / "adir"
    d.mkdir()
    return d


@bad("missing-file", "No such file or directory")
def _missing(tmp: Path) -> Path:
    return tmp / "nope.livepatch"


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_no_output(kind: str, tmp_path: Path) -> None:
    make, expect = BAD_INPUTS[kind]
    src = make(tmp_path)
    before = src.read_bytes() if src.is_file() else None
    out = tmp_path / "out" / "result.livepatch"
    out.parent.mkdir()
    line = assert_one_line_error(run_cli("rewrite", src, "-o", out))
    assert expect in line
    assert list(out.parent.iterdir()) == [], "no output (and no temporary file) may be left"
    if before is not None:
        assert src.read_bytes() == before
    # explain reads the same way and fails the same way (no .livepatch.funcs aside).
    if kind not in ("unsupported-type-real", "unsupported-type-edited", "arm-thumb-type"):
        assert expect in assert_one_line_error(run_cli("explain", src))


def test_usage_errors(tmp_path: Path) -> None:
    copy = tmp_path / "p.livepatch"
    shutil.copy(GOOD, copy)
    assert "-o OUTPUT or --in-place" in assert_one_line_error(run_cli("rewrite", copy))
    assert "is the input file" in assert_one_line_error(run_cli("rewrite", copy, "-o", copy))
    assert "not both" in assert_one_line_error(run_cli("rewrite", copy, "-o", tmp_path / "x", "--in-place"))
    assert "only made for an in-place" in assert_one_line_error(
        run_cli("rewrite", copy, "-o", tmp_path / "x", "--backup", ".orig")
    )
    assert "{name}" in assert_one_line_error(run_cli("rewrite", copy, "--in-place", "--rename-template", "x"))
    assert "does not exist" in assert_one_line_error(run_cli("rewrite", copy, "-o", tmp_path / "no" / "dir" / "x"))
    assert copy.read_bytes() == GOOD.read_bytes()


def test_input_untouched_without_in_place(tmp_path: Path) -> None:
    copy = tmp_path / "p.livepatch"
    shutil.copy(GOOD, copy)
    proc = run_cli("rewrite", copy, "-o", tmp_path / "o.livepatch")
    assert proc.returncode == 0, proc.stderr
    assert copy.read_bytes() == GOOD.read_bytes()
    assert (tmp_path / "o.livepatch").read_bytes() != GOOD.read_bytes()


def test_in_place_with_backup_keeps_mode_bits(tmp_path: Path) -> None:
    copy = tmp_path / "p.livepatch"
    shutil.copy(GOOD, copy)
    os.chmod(copy, 0o640)
    proc = run_cli("rewrite", copy, "--in-place", "--backup", ".orig")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "p.livepatch.orig").read_bytes() == GOOD.read_bytes()
    assert copy.read_bytes() != GOOD.read_bytes()
    assert stat.S_IMODE(copy.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.livepatch", "p.livepatch.orig"]
    # A second in-place run changes nothing and says so.
    again = run_cli("rewrite", copy, "--in-place")
    assert again.returncode == 0 and "nothing to retarget" in again.stdout


def test_explain_json_lists_every_relocation(tmp_path: Path) -> None:
    proc = run_cli("explain", "--format", "json", GOOD)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    with open(GOOD, "rb") as f:
        elf = ELFFile(f)
        total = sum(s.num_relocations() for s in _relocation_sections(elf))
    assert len(doc["decisions"]) == total
    reasons = {d["reason"] for d in doc["decisions"]}
    assert {"retarget", "keep-exempt-section", "keep-not-replaced"} <= reasons
    assert doc["replacements"][0]["original"] == "do_work"
    retargets = [d for d in doc["decisions"] if d["decision"] == "retarget"]
    assert len(retargets) == 4 and all(d["original"] == "do_work" for d in retargets)


def test_rewrite_json_summary(tmp_path: Path) -> None:
    proc = run_cli("rewrite", "--format", "json", GOOD, "-o", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["changed"] is True
    assert doc["aliases"] == [{"name": "do_work", "index": doc["aliases"][0]["index"], "reused": False}]
    assert doc["renamed"] == {"do_work": "do_work.lp_new"}
    assert sum(doc["retargeted"].values()) == 4


def test_help_lists_commands() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert "rewrite" in proc.stdout and "explain" in proc.stdout


def _decision_table(stdout: str) -> list[str]:
    """The decision table's rows in a command's text output (header to the next blank line)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:3] == ["section", "offset", "type"])
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        rows.append(line)
    return rows


def _relocation_count(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(s.num_relocations() for s in _relocation_sections(ELFFile(f)))


@pytest.mark.parametrize("src", [GOOD, GOOD_ARM], ids=["x86_64", "arm"])
def test_rewrite_verbose_prints_every_decision_as_explain_does(src: Path, tmp_path: Path) -> None:
    proc = run_cli("rewrite", "-v", src, "-o", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    rows = _decision_table(proc.stdout)
    assert len(rows) == _relocation_count(src)
    assert rows == _decision_table(run_cli("explain", "--all", src).stdout)
    doc = json.loads(run_cli("rewrite", "-v", "--format", "json", src, "-o", tmp_path / "p").stdout)
    assert len(doc["decisions"]) == _relocation_count(src)
    assert "decisions" not in json.loads(run_cli("rewrite", "--format", "json", src, "-o", tmp_path / "q").stdout)


def test_api_everything_returns_every_decision_and_the_default_only_the_relevant(tmp_path: Path) -> None:
    from lp_rewrite import analyse, rewrite

    total = _relocation_count(GOOD)
    fast, full = rewrite(GOOD), rewrite(GOOD, tmp_path / "o", everything=True)
    assert len(full.decisions.items) == total
    # The default materialises only what can reach a replacement; the rest is counted.
    assert 0 < len(fast.decisions.items) < total
    assert sum(fast.decisions.counts.values()) == sum(full.decisions.counts.values()) == total
    key = [(d.reloc_section, d.index) for d in fast.plan.retargets]
    assert key == [(d.reloc_section, d.index) for d in full.plan.retargets] and len(key) == 4
    assert (tmp_path / "o").read_bytes() == fast.output
    assert len(analyse(GOOD, everything=True).decisions.items) == total


def _uncovered_byte(data: bytes) -> int:
    """A byte of the file that no header and no section claims (alignment padding)."""
    elf = ELFFile(io.BytesIO(data))
    used = bytearray(len(data))
    spans = [(0, elf["e_ehsize"]), (elf["e_shoff"], elf["e_shnum"] * elf["e_shentsize"])]
    spans += [(s["sh_offset"], s["sh_size"]) for s in elf.iter_sections() if s["sh_type"] != "SHT_NOBITS"]
    for off, size in spans:
        used[off : off + size] = b"\1" * size
    return used.index(0)


def _first_byte_of(data: bytes, section: str) -> int:
    sec = ELFFile(io.BytesIO(data)).get_section_by_name(section)
    assert sec is not None, f"no {section}"
    return int(sec["sh_offset"])


# Where a byte is flipped on its way to the disk. The written file is read back
# and compared with the planned bytes, so each is found at its exact offset.
CORRUPTIONS: dict[str, tuple[Path, Callable[[bytes], int]]] = {
    "code": (GOOD, lambda d: _first_byte_of(d, ".text.caller")),
    "symbol-table": (GOOD, lambda d: _first_byte_of(d, ".symtab") + 24 + 4),
    "padding": (GOOD, _uncovered_byte),  # no section's content
    # Nothing to retarget: the byte-identical copy is checked too.
    "unchanged-copy": (
        COMMITTED / "x86_64" / "hello_world.livepatch",
        lambda d: _first_byte_of(d, ".text.xen_hello_world"),
    ),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_self_check_reads_back_the_written_file(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lp_rewrite.write as write_mod
    from lp_rewrite import rewrite
    from lp_rewrite.errors import VerificationError

    src, locate = CORRUPTIONS[kind]
    planned = rewrite(src).output
    pos = locate(planned)
    expect = f"the written file is not what was planned (byte {pos:#x} differs)"
    real = write_mod.write_all

    def corrupting_write(fd: int, pieces: list[bytes]) -> None:
        flipped = bytearray(b"".join(pieces))
        assert flipped == planned
        flipped[pos] ^= 0x40
        real(fd, [bytes(flipped)])

    monkeypatch.setattr(write_mod, "write_all", corrupting_write)
    out = tmp_path / "out" / "o.livepatch"
    out.parent.mkdir()
    with pytest.raises(VerificationError, match=re.escape(expect)):
        rewrite(src, out)
    assert list(out.parent.iterdir()) == [], "no output and no temporary file"
    monkeypatch.setattr(write_mod, "write_all", real)
    rewrite(src, out)  # the same rewrite, written faithfully, passes
    assert out.read_bytes() == planned


def _bound_to_original(path: Path, original: str) -> Counter[str]:
    """Per section, the relocations that resolve to the undefined symbol ``original`` (read with the oracle)."""
    return Counter(r.section for r in Oracle(path).relocations() if r.resolved[:2] == ("undef", original))


SPECIAL = {arch: COMMITTED / arch / "special_sections.livepatch" for arch in ("x86_64", "arm")}
EXEMPT_BY_DEFAULT = {".altinstructions", ".alt_call_sites", ".ex_table", ".bug_frames.0", ".bug_frames.3"}


@pytest.mark.parametrize("arch", sorted(SPECIAL))
def test_cli_no_default_keep_retargets_the_default_exempt_sections(arch: str, tmp_path: Path) -> None:
    src = SPECIAL[arch]
    default, loose = tmp_path / "default", tmp_path / "loose"
    assert run_cli("rewrite", src, "-o", default).returncode == 0
    proc = run_cli("rewrite", "--no-default-keep", src, "-o", loose)
    assert proc.returncode == 0, proc.stderr
    assert _bound_to_original(default, "patched_fn") == Counter({".rodata.rel_words": 1})
    everywhere = Counter(dict.fromkeys(EXEMPT_BY_DEFAULT | {".rodata.rel_words"}, 1))
    assert _bound_to_original(loose, "patched_fn") == everywhere
    # .livepatch.funcs is kept whatever the options: new_addr still names the payload's copy.
    funcs = [r for r in Oracle(loose).relocations() if r.section == ".livepatch.funcs"]
    assert any(r.resolved[0] == "def" and r.resolved[1].startswith(".text") for r in funcs)
    doc = json.loads(run_cli("explain", "--no-default-keep", "--format", "json", src).stdout)
    retargeted = {d["section"] for d in doc["decisions"] if d["reason"] == "retarget"}
    assert retargeted == EXEMPT_BY_DEFAULT | {".rodata.rel_words"}


@pytest.mark.parametrize(
    ("arch", "pattern", "data_section"),
    [("x86_64", ".data*", ".data.rel.ro.local.work_table"), ("arm", ".rodata.*", ".rodata.work_table")],
)
def test_cli_keep_section_keeps_a_data_pointer(arch: str, pattern: str, data_section: str, tmp_path: Path) -> None:
    src = COMMITTED / arch / "global_refs.livepatch"
    default, kept = tmp_path / "default", tmp_path / "kept"
    assert run_cli("rewrite", src, "-o", default).returncode == 0
    proc = run_cli("rewrite", "--keep-section", pattern, src, "-o", kept)
    assert proc.returncode == 0, proc.stderr
    before, after = _bound_to_original(default, "do_work"), _bound_to_original(kept, "do_work")
    assert before[data_section] == 1 and data_section not in after
    assert after == before - Counter({data_section: 1})  # the code references still move
    # The pointer still designates the payload's copy, as in the input.
    (ptr,) = [r for r in Oracle(kept).relocations() if r.section == data_section and r.rtype in (1, 2)]
    (orig,) = [r for r in Oracle(src).relocations() if r.section == data_section and r.rtype in (1, 2)]
    assert ptr.resolved == orig.resolved and ptr.resolved[0] == "def"
    doc = json.loads(run_cli("explain", "--keep-section", pattern, "--format", "json", src).stdout)
    assert {d["reason"] for d in doc["decisions"] if d["section"] == data_section} == {"keep-exempt-section"}
    # A pattern that covers the only stored reference leaves nothing to do: the copy is byte-identical.
    same = tmp_path / "same"
    special = SPECIAL[arch]
    proc = run_cli("rewrite", "--keep-section", ".rodata.rel_*", special, "-o", same)
    assert proc.returncode == 0 and "nothing to retarget" in proc.stdout
    assert same.read_bytes() == special.read_bytes()


_IMPORTS_DRIVER = r"""
import json, sys
from lp_rewrite.cli import main
sys.argv = ["lp-rewrite", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


@pytest.mark.parametrize("arch", ["x86_64", "aarch64", "arm"])
def test_a_rewrite_imports_only_what_it_runs(arch: str, tmp_path: Path) -> None:
    """The build hook's start-up: no lief, unicorn, capstone or pyelftools, and
    of the command modules only `rewrite` (typer builds every registered one)."""
    import subprocess
    import sys

    src = COMMITTED / arch / "global_refs.livepatch"
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORTS_DRIVER, "rewrite", str(src), "-o", str(tmp_path / "out"), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report["code"] in (0, None), proc.stderr
    assert (tmp_path / "out").is_file()
    loaded = set(report["modules"])
    assert not {"lief", "unicorn", "capstone", "elftools"} & loaded
    assert "lp_rewrite.cli.rewrite" in loaded
    assert not {"lp_rewrite.cli.check", "lp_rewrite.cli.explain", "lp_rewrite.cli.verify"} & loaded
    assert not any(m.startswith(("lp_rewrite.check", "lp_rewrite.loader")) for m in loaded)
    # Start-up cost: a dataclass costs about a millisecond to create; a quiet rewrite prints no report.
    assert not {"dataclasses", "lp_rewrite.report"} & loaded


def test_help_lists_every_command() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    listed = re.findall(r"^│ (\w+) ", proc.stdout, flags=re.M)
    assert listed == ["rewrite", "explain", "check", "verify"], proc.stdout

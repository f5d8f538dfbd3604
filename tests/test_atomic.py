"""Output safety: the destination is always the old file or the complete new one.

Real runs of the command line on a payload made large enough (a 16 MiB
non-loaded section) that writing it takes a while are killed -- SIGKILL at
random moments, SIGTERM/SIGINT/SIGHUP while the temporary file exists -- and
the invariant is checked after each: the destination holds exactly the old
bytes or exactly the new ones, a backup (when asked for) is whole before the
destination changes, and only SIGKILL may leave a temporary file behind.
Failures of the file system (disk full, permission denied, a failing fsync or
rename or backup) are real where they can be made real (RLIMIT_FSIZE, an
unwritable directory) and injected otherwise; each is one line, exit 2, with
the destination untouched and no temporary file left.
"""

from __future__ import annotations

import errno
import os
import random
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from lp_rewrite import write as write_mod
from lp_rewrite.errors import InputError, VerificationError
from lp_rewrite.pipeline import rewrite
from lp_rewrite.write import Interrupted, write_atomic
from tests.conftest import COMMITTED, ROOT, assert_one_line_error, load_script, run_cli

GOOD = COMMITTED / "x86_64" / "global_refs.livepatch"
BALLAST = 16 << 20


FUZZ = load_script("fuzz")


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, bytes]:
    """(path, input bytes, rewritten bytes) of a payload with a 16 MiB non-ALLOC section."""
    data = FUZZ.add_section(GOOD.read_bytes(), ".lp_ballast", bytes(range(256)) * (BALLAST // 256), 1)
    path = tmp_path_factory.mktemp("big") / "big.livepatch"
    path.write_bytes(data)
    new = rewrite(data).output
    assert new != data and len(new) > BALLAST
    return path, data, new


def _temps(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


def _cli(*args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", "lp_rewrite", *map(str, args)]


def _signal_during_write(cmd: list[str], directory: Path, sig: int, delay: float) -> tuple[int, str, bool]:
    """Run ``cmd``; ``delay`` seconds after its temporary file appears, send ``sig``.

    Returns (exit status, stderr, whether the temporary file was seen).
    """
    env = dict(os.environ)
    env.pop("LP_REWRITE_DEBUG", None)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = False
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if _temps(directory):
            seen = True
            break
        time.sleep(0.0002)
    if seen:
        time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, seen


class Attempts:
    """``minimum`` attempts, then more until one is a hit (``maximum`` in all).

    Where a signal lands depends on the machine's load: instead of hoping one
    of a fixed few lands inside the write, a test counts the attempts that
    did (``hits``), aims earlier after each that came too late, and keeps
    trying within the bound.
    """

    def __init__(self, minimum: int, maximum: int) -> None:
        self.minimum, self.maximum = minimum, maximum
        self.count = 0
        self.hits = 0

    def __iter__(self) -> Iterator[int]:
        while self.count < self.minimum or (self.count < self.maximum and not self.hits):
            self.count += 1
            yield self.count


def _write_window(cmd: list[str], directory: Path) -> float:
    """Seconds from the temporary file's appearance to the end of a run."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = None
    while proc.poll() is None:
        if start is None and _temps(directory):
            start = time.monotonic()
        time.sleep(0.0002)
    assert proc.returncode == 0
    return time.monotonic() - (start or time.monotonic())


def test_sigkill_at_random_moments_leaves_old_or_new(big: tuple[Path, bytes, bytes], tmp_path: Path) -> None:
    src, _old_input, new = big
    out = tmp_path / "out.livepatch"
    old = GOOD.read_bytes()  # what the destination held before
    cmd = _cli("rewrite", "--ignore-xen-limits", src, "-o", out)  # 16 MiB: over Xen's upload limit
    out.write_bytes(old)
    window = _write_window(cmd, tmp_path)
    assert out.read_bytes() == new
    rng = random.Random(8)
    aim = window  # kills land at a random moment of [0, aim) after the temporary file appears
    tries = Attempts(8, 40)  # a hit: a kill while the temporary file exists
    for _ in tries:
        out.write_bytes(old)
        _, _, seen = _signal_during_write(cmd, tmp_path, signal.SIGKILL, rng.uniform(0, aim))
        got = out.read_bytes()
        assert got in (old, new), f"destination is neither the old nor the new file ({len(got)} bytes)"
        stray = _temps(tmp_path)
        if stray:  # SIGKILL cannot be handled: a stray temporary file, never a partial destination
            assert got == old
            tries.hits += 1
        else:  # the run had finished (or, unseen, was too quick to watch): aim earlier
            assert got == new or not seen, "killed before the rename, yet no temporary file"
            aim /= 2
        for p in stray:
            p.unlink()
    assert tries.hits >= 1, f"none of {tries.count} kills landed while the output was being written"
    # And kills anywhere in the run, before or after the write.
    total = window * 3
    for _ in range(3):
        out.write_bytes(old)
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0, total))
        proc.kill()
        proc.wait()
        assert out.read_bytes() in (old, new)
        for p in _temps(tmp_path):
            p.unlink()


def test_sigkill_in_place_with_backup(big: tuple[Path, bytes, bytes], tmp_path: Path) -> None:
    src, old, new = big
    work = tmp_path / "p.livepatch"
    backup = tmp_path / "p.livepatch.orig"
    cmd = _cli("rewrite", "--ignore-xen-limits", work, "--in-place", "--backup", ".orig")
    shutil.copy(src, work)
    window = _write_window(cmd, tmp_path) * 2  # the backup copy is written first
    assert work.read_bytes() == new and backup.read_bytes() == old
    rng = random.Random(9)
    outcomes: set[tuple[bool, bool]] = set()  # (the destination was replaced, a backup exists)
    aim = window
    tries = Attempts(6, 30)  # a hit: a kill before the destination was replaced
    for _ in tries:
        backup.unlink(missing_ok=True)
        work.write_bytes(old)
        _signal_during_write(cmd, tmp_path, signal.SIGKILL, rng.uniform(0, aim))
        got = work.read_bytes()
        assert got in (old, new)
        if got == new:
            # The backup is complete before the destination is replaced.
            assert backup.read_bytes() == old
            aim /= 2
        else:
            tries.hits += 1
            if backup.exists():
                assert backup.read_bytes() == old
        outcomes.add((got == new, backup.exists()))
        for p in _temps(tmp_path):
            p.unlink()
    assert (False, False) in outcomes or (False, True) in outcomes, "every run finished before the kill"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_termination_signal_during_write_removes_the_temporary_file(
    sig: signal.Signals, big: tuple[Path, bytes, bytes], tmp_path: Path
) -> None:
    src, old, new = big
    work = tmp_path / "p.livepatch"
    cmd = _cli("rewrite", "--ignore-xen-limits", work, "--in-place")
    shutil.copy(src, work)
    window = _write_window(cmd, tmp_path)
    rng = random.Random(int(sig))
    aim = window / 2
    tries = Attempts(3, 20)  # a hit: the signal interrupted the write
    for _ in tries:
        work.write_bytes(old)
        code, err, seen = _signal_during_write(cmd, tmp_path, sig, rng.uniform(0, aim))
        assert _temps(tmp_path) == [], f"{sig.name} left a temporary file behind"
        got = work.read_bytes()
        assert got in (old, new)
        if code == 128 + sig:
            assert seen
            tries.hits += 1
            assert err.strip() == f"lp-rewrite: error: interrupted ({sig.name})"
        else:
            # The signal came after the rename (or the run was over): the new file is complete.
            assert code in (0, -sig) and got == new, (code, err)
            aim /= 2
    assert tries.hits >= 1, f"none of {tries.count} {sig.name}s interrupted the write"


# -- the mechanism, deterministically -------------------------------------------


class _Overriding:
    """A module as lp_rewrite.write sees it, with some functions replaced (only there)."""

    def __init__(self, module: ModuleType, **overrides: object) -> None:
        self._module = module
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> object:
        return getattr(self._module, name)


def _dest_with_old(tmp_path: Path) -> tuple[Path, bytes]:
    dest = tmp_path / "dest.livepatch"
    dest.write_bytes(b"old contents")
    return dest, b"old contents"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_signal_before_rename_cleans_up(sig: signal.Signals, tmp_path: Path) -> None:
    dest, old = _dest_with_old(tmp_path)

    def hook(tmp: Path) -> None:
        assert tmp.read_bytes() == b"new contents"
        os.kill(os.getpid(), sig)
        time.sleep(1)  # the handler runs first

    with pytest.raises(KeyboardInterrupt) as info:
        write_atomic(dest, b"new contents", before_rename=hook)
    if sig != signal.SIGINT:
        assert isinstance(info.value, Interrupted) and info.value.signum == sig
    assert dest.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest.livepatch"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, "the handler is only installed while writing"
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL


def test_signal_during_rename_is_held_until_the_rename_is_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest, _old = _dest_with_old(tmp_path)
    real_replace = os.replace

    def replace_under_fire(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # blocked here: delivered when the rename is recorded
        real_replace(a, b)

    monkeypatch.setattr(write_mod, "os", _Overriding(os, replace=replace_under_fire))
    with pytest.raises(Interrupted):
        write_atomic(dest, b"new contents")
    assert dest.read_bytes() == b"new contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest.livepatch"]


def test_an_embedding_programs_handler_is_left_alone(tmp_path: Path) -> None:
    dest, _old = _dest_with_old(tmp_path)
    calls: list[int] = []

    def mine(signum: int, frame: object) -> None:
        calls.append(signum)

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        write_atomic(dest, b"new", before_rename=lambda tmp: os.kill(os.getpid(), signal.SIGTERM))
        assert calls == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert dest.read_bytes() == b"new"


# -- file-system failures ---------------------------------------------------------


def _failing(exc: OSError) -> Callable[..., None]:
    def fail(*args: object, **kwargs: object) -> None:
        raise exc

    return fail


@pytest.mark.parametrize(
    ("target", "exc", "expect"),
    [
        ("fsync", OSError(errno.ENOSPC, "No space left on device"), "cannot write: No space left on device"),
        ("writev", OSError(errno.EIO, "Input/output error"), "cannot write: Input/output error"),
        ("replace", PermissionError(errno.EACCES, "Permission denied"), "cannot write: Permission denied"),
        ("chmod", PermissionError(errno.EPERM, "Operation not permitted"), "cannot write: Operation not permitted"),
    ],
)
def test_os_failure_is_one_error_and_leaves_nothing(
    target: str, exc: OSError, expect: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest, old = _dest_with_old(tmp_path)
    src = tmp_path / "src.livepatch"
    shutil.copy(GOOD, src)
    monkeypatch.setattr(write_mod, "os", _Overriding(os, **{target: _failing(exc)}))
    with pytest.raises(InputError) as info:
        rewrite(src, dest)
    assert expect in str(info.value) and str(dest) in str(info.value)
    assert dest.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest.livepatch", "src.livepatch"]


def test_failed_backup_leaves_target_and_no_backup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "p.livepatch"
    shutil.copy(GOOD, src)
    real_write_all = write_mod.write_all
    writes: list[int] = []

    def no_space_for_the_backup(fd: int, data: list[bytes]) -> None:
        writes.append(fd)  # the output first, then the backup (written from the bytes read)
        if len(writes) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_all(fd, data)

    monkeypatch.setattr(write_mod, "write_all", no_space_for_the_backup)
    with pytest.raises(InputError, match="cannot write the backup: No space left"):
        rewrite(src, in_place=True, backup_suffix=".orig")
    assert src.read_bytes() == GOOD.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.livepatch"]


def test_failed_check_before_rename_leaves_target(tmp_path: Path) -> None:
    dest, old = _dest_with_old(tmp_path)

    def refuse(payload: object, tmp: Path) -> None:
        assert tmp.exists() and tmp.parent == dest.parent
        raise VerificationError("refused by the check")

    with pytest.raises(VerificationError):
        rewrite(GOOD, dest, before_rename=refuse)
    assert dest.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest.livepatch"]


def test_disk_full_for_real(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes write(2) fail with EFBIG, as a full disk fails it with ENOSPC."""
    out = tmp_path / "out.livepatch"
    out.write_bytes(b"old contents")
    limit = GOOD.stat().st_size // 2

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = dict(os.environ)
    env.pop("LP_REWRITE_DEBUG", None)
    proc = subprocess.run(
        _cli("rewrite", GOOD, "-o", out),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
        timeout=120,
    )
    line = assert_one_line_error(proc)
    assert "File too large" in line and str(out) in line
    assert out.read_bytes() == b"old contents"
    assert _temps(tmp_path) == []


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Path:
    """A directory where creating a file fails with EACCES or EROFS, for real."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o500)
        return d
    for candidate in (Path("/sys"), Path("/proc/sys")):
        try:
            fd, name = tempfile.mkstemp(dir=candidate)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                return candidate
            continue
        os.close(fd)
        os.unlink(name)
    pytest.skip("running as root with no read-only directory to write into")


def test_permission_denied_for_real(unwritable_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "p.livepatch"
    shutil.copy(GOOD, src)
    line = assert_one_line_error(run_cli("rewrite", src, "-o", unwritable_dir / "out.livepatch"))
    assert "cannot create a file in" in line
    assert not (unwritable_dir / "out.livepatch").exists()
    assert src.read_bytes() == GOOD.read_bytes()


# -- mode bits ------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o751, 0o604, 0o400])
def test_output_keeps_the_input_mode_bits(mode: int, tmp_path: Path) -> None:
    src = tmp_path / "p.livepatch"
    shutil.copy(GOOD, src)
    os.chmod(src, mode)
    fresh = tmp_path / "fresh.livepatch"
    assert run_cli("rewrite", src, "-o", fresh).returncode == 0
    assert stat.S_IMODE(fresh.stat().st_mode) == mode
    existing = tmp_path / "existing.livepatch"
    existing.write_bytes(b"old")
    os.chmod(existing, 0o666)
    assert run_cli("rewrite", src, "-o", existing).returncode == 0
    assert stat.S_IMODE(existing.stat().st_mode) == mode
    work = tmp_path / "w.livepatch"
    shutil.copy(src, work)
    os.chmod(work, mode)
    assert run_cli("rewrite", work, "--in-place", "--backup", "~").returncode == 0
    assert stat.S_IMODE(work.stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "w.livepatch~").stat().st_mode) == mode
    assert (tmp_path / "w.livepatch~").read_bytes() == GOOD.read_bytes()


def test_pieces_are_written_whole_in_order_in_bounded_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each write call carries at most _WRITE_BLOCK bytes and _IOV_BATCH pieces (the page cache
    keeps a call's bytes in folios as large as the call), and a short write resumes where it stopped."""
    rng = random.Random(15)
    data = rng.randbytes(3 * write_mod._WRITE_BLOCK + 12345)
    cuts = sorted(rng.sample(range(1, len(data)), 2500))
    pieces: list[bytes | bytearray | memoryview] = []
    for k, (lo, hi) in enumerate(zip([0, *cuts], [*cuts, len(data)], strict=True)):
        kind = k % 3
        pieces.append(data[lo:hi] if kind == 0 else bytearray(data[lo:hi]) if kind == 1 else memoryview(data)[lo:hi])
    pieces.insert(7, b"")  # an empty piece is nothing to write
    calls: list[tuple[int, int]] = []
    real_writev = os.writev

    def short_writev(fd: int, views: list[memoryview]) -> int:
        calls.append((len(views), sum(v.nbytes for v in views)))
        room = max(1, sum(v.nbytes for v in views) // 3)  # a third of what was asked: it ends mid-piece
        prefix: list[memoryview] = []
        for v in views:
            prefix.append(v[:room])
            room -= prefix[-1].nbytes
            if not room:
                break
        return real_writev(fd, prefix)

    monkeypatch.setattr(os, "writev", short_writev)
    out = tmp_path / "out"
    write_atomic(out, pieces)
    assert out.read_bytes() == data
    assert all(n <= write_mod._IOV_BATCH and size <= write_mod._WRITE_BLOCK for n, size in calls)
    assert max(n for n, _size in calls) > 3 and max(size for _n, size in calls) == write_mod._WRITE_BLOCK

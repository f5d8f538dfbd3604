"""Pipeline stage 5, *write*: put the new bytes in place atomically.

The output goes to a temporary file in the destination's directory, is
flushed and fsync'ed, given the input's permission bits, optionally checked
by a caller-supplied function, and only then renamed over the destination
(POSIX rename is atomic). On any failure the temporary file is removed and
the destination is untouched; an OS error (disk full, permissions) is a
one-line :class:`InputError`. SIGINT, SIGTERM and SIGHUP during the write
raise :class:`Interrupted` and get the same cleanup; only SIGKILL (or a
power cut) can leave a stray ``.tmp`` file, and never a partial destination.
With a backup suffix the backup is written the same way and is whole before
the destination is replaced.

An in-place rewrite passes ``expect``, the :class:`~lp_rewrite.inputs.Snapshot`
of the file as it was read: the destination is replaced only while it still
is that file, unchanged (checked under an exclusive ``flock`` on it, which
other lp-rewrite processes also take, just before the rename; a file that
changed, vanished or is being replaced is an InputError naming it), the new
file and the backup get its mode and owner, and the backup is written from
``original``, the bytes that were read, never copied from whatever the
destination holds by then.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from lp_rewrite.errors import InputError
from lp_rewrite.inputs import Snapshot

if TYPE_CHECKING:  # a type only: writing a file atomically knows nothing of ELF
    from lp_rewrite.elf.writer import Chunk


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Signals that end a command-line run. While the output is written they raise
# Interrupted instead, so that the temporary file is removed.
_STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


class Interrupted(KeyboardInterrupt):
    """A termination signal arrived while the output was being written."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Interrupted` (SIGINT already raises
    KeyboardInterrupt) instead of killing the process mid-write (or, in
    ``check --jobs``, before it stops its workers). Handlers an embedding
    program installed are left alone."""
    installed: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) == signal.SIG_DFL:
                signal.signal(sig, _raise_interrupted)
                installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            signal.signal(sig, signal.SIG_DFL)


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold termination signals across a few statements that must not be split
    (creating a file and recording its name; renaming it and forgetting it).
    A held signal is delivered, and raises, when this block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# Pieces per writev(2) call: at most IOV_MAX (1024 on Linux).
_IOV_BATCH = 1024
# Bytes per write call. The page cache keeps what one call writes in folios
# as large as the call (ext4, XFS, tmpfs: up to 2 MiB), and a later read fault
# on a mapping of the file maps a whole folio: the self-check maps the output
# and reads a few hundred bytes here and there (.livepatch.funcs, names), which
# mapped a megabyte each, 4 MiB at once. 64 KiB is the kernel's fault-around.
_WRITE_BLOCK = 64 << 10


def _blocks(pieces: Iterable[Chunk]) -> Iterator[list[memoryview]]:
    """The pieces' bytes in order, as lists of views of at most _IOV_BATCH views and _WRITE_BLOCK bytes.

    Views are made a batch at a time: a memoryview is about 200 bytes, and one
    for each of 30k pieces at once held megabytes through the write.
    """
    batch: list[memoryview] = []
    room = _WRITE_BLOCK
    for piece in pieces:
        view = memoryview(piece).cast("B")
        while view.nbytes:
            part = view[:room]
            batch.append(part)
            room -= part.nbytes
            view = view[part.nbytes :]
            if not room or len(batch) == _IOV_BATCH:
                yield batch
                batch, room = [], _WRITE_BLOCK
    if batch:
        yield batch


def write_all(fd: int, pieces: Iterable[Chunk]) -> None:
    """Write the pieces in order, whole: a stress object's output is 30k of them (views of the input);
    ``check --jobs`` sends its tasks and answers through pipes with it."""
    for pending in _blocks(pieces):
        k = 0
        while k < len(pending):
            written = os.writev(fd, pending[k:])
            while written:  # skip what was written; a partly written piece keeps its rest
                size = pending[k].nbytes
                if written < size:
                    pending[k] = pending[k][written:]
                    break
                written -= size
                k += 1


def write_atomic(
    dest: Path,
    data: bytes | Iterable[Chunk],
    *,
    mode_from: Path | Snapshot | None = None,
    backup_suffix: str | None = None,
    before_rename: Callable[[Path], None] | None = None,
    expect: Snapshot | None = None,
    original: bytes | None = None,
) -> None:
    """Write ``data`` (bytes, or pieces written in turn) to ``dest`` so that ``dest`` is always whole.

    ``expect``: replace ``dest`` only while it is still this file (an in-place
    rewrite), giving the output its mode and owner; ``original``: the bytes the
    backup holds (default: a copy of ``dest`` as it is when the backup is made).
    """
    directory = dest.parent if str(dest.parent) else Path(".")
    if not directory.is_dir():
        raise InputError(f"{dest}: directory {directory} does not exist")
    if dest.is_dir():
        raise InputError(f"{dest}: is a directory")
    mode = None
    if isinstance(mode_from, Snapshot):
        mode = mode_from.mode
    elif mode_from is not None:
        try:
            mode = stat.S_IMODE(mode_from.stat().st_mode)
        except OSError as exc:
            raise InputError(f"{mode_from}: {exc.strerror or exc}") from None
    if expect is not None:
        mode = expect.mode
    target = _Target(dest, expect, original)
    pieces = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    with signals_raise():
        _replace_via_temporary(dest, directory, pieces, mode, backup_suffix, before_rename, target)
    _fsync_dir(directory)


class _Target:
    """The destination of an in-place rewrite: locked and compared with what was read, just before the rename."""

    def __init__(self, dest: Path, expect: Snapshot | None, original: bytes | None) -> None:
        self.dest = dest
        self.expect = expect
        self.original = original
        self.fd = -1

    def own(self, fd: int) -> None:
        """Give a new file (the output, the backup) the owner and group of the file it replaces, where we can."""
        if self.expect is None:
            return
        try:
            os.fchown(fd, self.expect.uid, self.expect.gid)
            os.fchmod(fd, self.expect.mode)  # a chown may clear set-id bits
        except PermissionError:
            pass  # not root: the file is ours, as any file we create

    def lock(self) -> None:
        """Take the destination's flock and check it still is the file that was read."""
        if self.expect is None:
            return
        try:
            self.fd = os.open(self.dest, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise InputError(f"{self.dest}: removed since it was read; not replaced") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{self.dest}: being replaced by another process; not replaced") from None
        self.check()

    def check(self) -> None:
        """The locked file is still the one that was read, and the path still names it."""
        assert self.expect is not None and self.fd >= 0
        try:
            same = self.expect.same(os.fstat(self.fd)) and self.expect.same(os.stat(self.dest))
        except FileNotFoundError:
            same = False
        if not same:
            raise InputError(f"{self.dest}: changed since it was read (another writer?); not replaced")

    def unlock(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the flock
            self.fd = -1


class _Scratch:
    """A temporary file beside its destination, removed again unless it was renamed into place.

    Created, closed, renamed and removed with signals held, so that an
    interrupt never leaves a stray file nor loses one that was renamed.
    """

    def __init__(self, beside: Path, directory: Path) -> None:
        self.fd = -1
        self.path: Path | None = None  # set exactly while the file is ours
        with signals_held():
            self.fd, name = tempfile.mkstemp(prefix=f".{beside.name}.", suffix=".tmp", dir=directory)
            self.path = Path(name)

    def close(self) -> None:
        with signals_held():
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def rename(self, dest: Path) -> None:
        assert self.path is not None
        with signals_held():
            os.replace(self.path, dest)
            self.path = None

    def __enter__(self) -> _Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        with signals_held():
            if self.path is not None:
                self.path.unlink(missing_ok=True)


def _replace_via_temporary(
    dest: Path,
    directory: Path,
    pieces: Iterable[Chunk],
    mode: int | None,
    backup_suffix: str | None,
    before_rename: Callable[[Path], None] | None,
    target: _Target,
) -> None:
    try:
        scratch = _Scratch(dest, directory)
    except OSError as exc:
        target.unlock()
        raise InputError(f"{dest}: cannot create a file in {directory}: {exc.strerror}") from None
    try:
        with scratch as tmp:
            assert tmp.path is not None
            write_all(tmp.fd, pieces)
            target.own(tmp.fd)
            os.fsync(tmp.fd)
            tmp.close()
            if mode is not None:
                os.chmod(tmp.path, mode)
            if before_rename is not None:
                before_rename(tmp.path)
            target.lock()
            if backup_suffix and target.original is not None:
                _write_backup(target, Path(str(dest) + backup_suffix))
            elif backup_suffix and dest.exists():
                _backup(dest, Path(str(dest) + backup_suffix))
            with signals_held():
                if target.expect is not None:
                    target.check()
                tmp.rename(dest)
    except OSError as exc:
        raise InputError(f"{dest}: cannot write: {exc.strerror or exc}") from None
    finally:
        target.unlock()


def _write_backup(target: _Target, dst: Path) -> None:
    """Write the bytes that were read to ``dst`` atomically, with the original's mode, owner and times."""
    assert target.original is not None and target.expect is not None
    try:
        with _Scratch(dst, dst.parent) as tmp:
            assert tmp.path is not None
            write_all(tmp.fd, [target.original])
            os.fchmod(tmp.fd, target.expect.mode)
            target.own(tmp.fd)
            os.fsync(tmp.fd)
            tmp.close()
            os.utime(tmp.path, ns=(target.expect.atime_ns, target.expect.mtime_ns))
            tmp.rename(dst)
    except OSError as exc:
        raise InputError(f"{dst}: cannot write the backup: {exc.strerror or exc}") from None


def _backup(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (the backup is whole or absent)."""
    try:
        with _Scratch(dst, dst.parent) as tmp:
            assert tmp.path is not None
            tmp.close()
            shutil.copy2(src, tmp.path)
            with open(tmp.path, "rb+") as f:
                os.fsync(f.fileno())
            tmp.rename(dst)
    except OSError as exc:
        raise InputError(f"{dst}: cannot write the backup: {exc.strerror or exc}") from None

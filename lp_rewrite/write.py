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
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from lp_rewrite.errors import InputError


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
def _signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Interrupted` (SIGINT already raises
    KeyboardInterrupt) instead of killing the process mid-write. Handlers an
    embedding program installed are left alone."""
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
def _signals_held() -> Iterator[None]:
    """Hold termination signals across a few statements that must not be split
    (creating a file and recording its name; renaming it and forgetting it).
    A held signal is delivered, and raises, when this block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_atomic(
    dest: Path,
    data: bytes,
    *,
    mode_from: Path | None = None,
    backup_suffix: str | None = None,
    before_rename: Callable[[Path], None] | None = None,
) -> None:
    """Write ``data`` to ``dest`` so that ``dest`` is always whole."""
    directory = dest.parent if str(dest.parent) else Path(".")
    if not directory.is_dir():
        raise InputError(f"{dest}: directory {directory} does not exist")
    if dest.is_dir():
        raise InputError(f"{dest}: is a directory")
    mode = None
    if mode_from is not None:
        mode = stat.S_IMODE(mode_from.stat().st_mode)
    with _signals_raise():
        _replace_via_temporary(dest, directory, data, mode, backup_suffix, before_rename)
    _fsync_dir(directory)


def _replace_via_temporary(
    dest: Path,
    directory: Path,
    data: bytes,
    mode: int | None,
    backup_suffix: str | None,
    before_rename: Callable[[Path], None] | None,
) -> None:
    tmp: Path | None = None  # set exactly while a temporary file of ours exists
    fd = -1
    try:
        with _signals_held():
            try:
                fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=directory)
            except OSError as exc:
                raise InputError(f"{dest}: cannot create a file in {directory}: {exc.strerror}") from None
            tmp = Path(tmp_name)
        _write_all(fd, data)
        os.fsync(fd)
        with _signals_held():
            os.close(fd)
            fd = -1
        if mode is not None:
            os.chmod(tmp, mode)
        if before_rename is not None:
            before_rename(tmp)
        if backup_suffix and dest.exists():
            _backup(dest, Path(str(dest) + backup_suffix))
        with _signals_held():
            os.replace(tmp, dest)
            tmp = None
    except BaseException as exc:
        with _signals_held():
            if fd >= 0:
                os.close(fd)
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise InputError(f"{dest}: cannot write: {exc.strerror or exc}") from None
        raise


def _backup(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (the backup is whole or absent)."""
    tmp: Path | None = None
    try:
        with _signals_held():
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
            os.close(fd)
            tmp = Path(tmp_name)
        shutil.copy2(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        with _signals_held():
            os.replace(tmp, dst)
            tmp = None
    except BaseException as exc:
        with _signals_held():
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise InputError(f"{dst}: cannot write the backup: {exc.strerror or exc}") from None
        raise

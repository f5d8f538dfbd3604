"""Pipeline stage 5, *write*: put the new bytes in place atomically.

The output goes to a temporary file in the destination's directory, is
flushed and fsync'ed, given the input's permission bits, optionally checked
by a caller-supplied function, and only then renamed over the destination
(POSIX rename is atomic). On any failure the temporary file is removed and
the destination is untouched; a crash leaves at worst a stray ``.tmp`` file
next to it, never a partial destination.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

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
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise InputError(f"{dest}: cannot create a file in {directory}: {exc.strerror}") from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        if before_rename is not None:
            before_rename(tmp)
        if backup_suffix and dest.exists():
            _backup(dest, Path(str(dest) + backup_suffix))
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)


def _backup(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (the backup is whole or absent)."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        shutil.copy2(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

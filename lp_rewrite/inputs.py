"""Reading an input file on a shared machine: only regular files, bounded, and consistent.

Every file the tool reads as a payload (and the ``--xen-syms`` image, and an
allow file) goes through :func:`open_regular`: the path is ``stat``'ed and
then opened with ``O_NONBLOCK``, and the open file is ``fstat``'ed again, so
that a FIFO, a device (``/dev/zero``, ``/dev/urandom``), a socket or a
directory is refused with one line before a byte is read, and nothing
blocks on a FIFO without a writer.

:func:`read_input` reads a payload whole, after checking its size against
a bound the caller states (Xen's 2 MiB upload limit, or :data:`MAX_INPUT_SIZE`
with ``--ignore-xen-limits``), so a sparse file of many GiB costs one
``fstat``. It compares the file's identity, size and times before and after
the read (and the byte count with the size): a file that was truncated,
extended or rewritten while it was read is refused, not rewritten into
something that is no version of it. The :class:`Snapshot` it returns is what
an in-place rewrite compares the destination with before replacing it.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO, NamedTuple

from lp_rewrite.errors import InputError
from lp_rewrite.livepatch_abi import MAX_PAYLOAD_SIZE

# The most bytes read from one input with --ignore-xen-limits (and by `check`,
# which reports a larger file as LP011 without reading it): 128 times Xen's
# limit, twice the largest stress object the benchmarks make.
MAX_INPUT_SIZE = 256 * 1024 * 1024


# A NamedTuple, not a frozen dataclass: creating one costs about a millisecond of every start-up.
class Snapshot(NamedTuple):
    """What a file was when it was read: identity, size, times, mode and owner."""

    path: str
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    atime_ns: int
    mode: int
    uid: int
    gid: int

    @classmethod
    def of(cls, path: str | os.PathLike[str], st: os.stat_result) -> Snapshot:
        return cls(
            os.fspath(path),
            st.st_dev,
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_atime_ns,
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
        )

    def same(self, st: os.stat_result) -> bool:
        """``st`` is this file, unchanged (same inode, size, modification and change times)."""
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) == (
            self.dev,
            self.ino,
            self.size,
            self.mtime_ns,
            self.ctime_ns,
        )


class TooLarge(InputError):
    """The file is larger than the stated bound (nothing of it was read)."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _refuse_special(label: str, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise InputError(f"{label}: is a directory")
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    raise InputError(f"{label}: not a regular file ({kind})")


def open_regular(path: str | os.PathLike[str], label: str | None = None) -> tuple[int, os.stat_result]:
    """An open, blocking descriptor on ``path`` and its fstat, or InputError when it is not a regular file."""
    label = label or os.fspath(path)
    try:
        _refuse_special(label, os.stat(path).st_mode)  # a device is refused before it is opened
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError(f"{label}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        _refuse_special(label, st.st_mode)  # swapped for one between the stat and the open
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def open_binary(path: str | os.PathLike[str], label: str | None = None) -> BinaryIO:
    """:func:`open_regular` as a file object (for readers that seek, such as pyelftools)."""
    fd, _ = open_regular(path, label)
    return os.fdopen(fd, "rb")


def too_large(label: str, size: int, limit: int) -> TooLarge:
    if limit == MAX_PAYLOAD_SIZE:
        return TooLarge(
            f"{label}: the file is {size} bytes, over Xen's {MAX_PAYLOAD_SIZE}-byte payload limit "
            f"(LIVEPATCH_MAX_SIZE); --ignore-xen-limits reads files of up to {MAX_INPUT_SIZE} bytes",
            size,
        )
    return TooLarge(f"{label}: the file is {size} bytes, over the {limit}-byte bound lp-rewrite reads", size)


def read_input(path: str | os.PathLike[str], limit: int = MAX_INPUT_SIZE) -> tuple[bytes, Snapshot]:
    """The whole of a regular file of at most ``limit`` bytes, and what it was when read."""
    label = os.fspath(path)
    fd, before = open_regular(path, label)
    try:
        if before.st_size > limit:
            raise too_large(label, before.st_size, limit)
        chunks = []
        left = before.st_size + 1  # one byte more than the size: a file that grew is seen
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        after = os.fstat(fd)
    except OSError as exc:
        raise InputError(f"{label}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    snap = Snapshot.of(label, before)
    if len(data) != before.st_size or not snap.same(after):
        raise InputError(
            f"{label}: the file changed while it was read ({before.st_size} bytes before, {len(data)} read, "
            f"{after.st_size} after); not processed"
        )
    return data, snap

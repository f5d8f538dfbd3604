"""Serialise an :class:`ElfFile` with some sections' contents replaced.

The writer re-lays out the file the way a linker would: ELF header, then
every section's data in its original file order (each at its own alignment),
then the section header table. Section *indices* never change, so everything
that refers to a section by index stays valid; only ``sh_offset`` and
``sh_size`` follow the new contents. Object files have no program headers,
so nothing refers to file offsets except the section headers themselves.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping

from lp_rewrite.elf.file import ElfFile

# sh_addralign constrains where a section is *loaded* (a loader copies each one
# to an address aligned on its own), not its file offset; a linker aligns file
# offsets anyway, and so does this writer, up to a page. A hostile
# sh_addralign of 2**40 must not make the output a terabyte of padding.
MAX_FILE_ALIGN = 4096


def _align(pos: int, alignment: int) -> int:
    alignment = min(alignment, MAX_FILE_ALIGN)
    if alignment <= 1:
        return pos
    return (pos + alignment - 1) & ~(alignment - 1)


Chunk = bytes | bytearray | memoryview

# Section headers per piece of the header table, when it is made (64 KiB of them).
_HEADERS_PER_PIECE = 1024


class Made:
    """Sections whose new contents are made when the pieces are first read: a byte per
    section (1: made by ``make(index)``, as long as the input's)."""

    def __init__(self, mask: bytes, make: Callable[[int], Chunk]) -> None:
        self.mask = mask
        self.make = make


class Pieces:
    """The output, as consecutive pieces made when iterated.

    Held between the write and its read-back, it keeps only what cannot be
    made again: the replaced contents, and per copy of the input its span, as
    machine words. A view of the input for each of a stress object's 7k copies
    (200 bytes each), and the 4 MB section header table of 60k headers, are
    made a piece at a time each time the pieces are read (written, compared).
    Contents a :class:`Made` makes are made on the first read and kept until
    :meth:`clear`: the editor's relocation tables, made from rows at the write
    instead of copied while the edits were planned.
    """

    def __init__(
        self, elf: ElfFile, new_off: array[int], new_size: array[int], updates: list[_Update], made: Made | None
    ) -> None:
        self._elf = elf
        self._maker = made
        self._made_later: dict[int, Chunk] = {}
        self._new_off = new_off
        self._new_size = new_size
        self._updates = sorted(updates)  # by section index, for each slice of the table to find its own
        # A piece is a copy of the input (code -1: its span is the next in _lo/_hi),
        # one of _made (code k >= 0: _made[k]; None stands for the header table),
        # or section i's contents, made on the first read (code -2 - i).
        self._codes = array("q")
        self._lo = array("Q")
        self._hi = array("Q")
        self._made: list[Chunk | None] = []

    def later(self, index: int) -> None:
        """Append section ``index``'s contents, made by the Made given (once, when first read)."""
        self._codes.append(-2 - index)

    def copy(self, lo: int, hi: int) -> None:
        """Append a copy of the input's bytes ``lo:hi``."""
        self._codes.append(-1)
        self._lo.append(lo)
        self._hi.append(hi)

    def add(self, piece: Chunk | None) -> int:
        """Append a piece made already (None: the header table); its position among those."""
        self._codes.append(len(self._made))
        self._made.append(piece)
        return len(self._made) - 1

    def replace(self, at: int, piece: Chunk) -> None:
        """Give the piece :meth:`add` put at ``at`` its bytes."""
        self._made[at] = piece

    def __iter__(self) -> Iterator[Chunk]:
        view = self._elf.view
        made = self._made
        spans = zip(self._lo, self._hi, strict=True)
        for code in self._codes:
            if code == -1:
                lo, hi = next(spans)
                yield view[lo:hi]
            elif code < 0:  # made on the first read, kept for the read-back (made twice, 2.5% of a rewrite)
                assert self._maker is not None
                got = self._made_later.get(code)
                if got is None:
                    got = self._made_later[code] = self._maker.make(-2 - code)
                yield got
            else:
                piece = made[code]
                if piece is None:
                    yield from self._header_table()
                else:
                    yield piece

    def clear(self) -> None:
        """Let everything go (iterating gives nothing from here on)."""
        self._codes = array("q")
        self._lo, self._hi = array("Q"), array("Q")
        self._made = []
        self._new_off, self._new_size, self._updates = array("Q"), array("Q"), []
        self._maker = None
        self._made_later = {}

    def _header_table(self) -> Iterator[bytearray]:
        """The input's header table with the new offsets, sizes and updated fields, a slice at a time."""
        elf = self._elf
        lay = elf.layout
        size = lay.shdr.size
        total = len(elf.sections)
        for first in range(0, total, _HEADERS_PER_PIECE):
            last = min(first + _HEADERS_PER_PIECE, total)
            part = bytearray(elf.view[elf.e_shoff + first * size : elf.e_shoff + last * size])
            for field, values in ((lay.shdr_fields[4], self._new_off), (lay.shdr_fields[5], self._new_size)):
                fmt, byte = field
                words: memoryview = memoryview(part).cast(fmt)  # type: ignore[call-overload]
                step = size // words.itemsize
                column = values[first:last]
                words[byte // words.itemsize :: step] = memoryview(column if fmt == "Q" else array(fmt, column))
            at = bisect_left(self._updates, (first,))
            for i, field_index, value in self._updates[at : bisect_left(self._updates, (last,), at)]:
                fmt, byte = lay.shdr_fields[field_index]
                struct.pack_into("<" + fmt, part, (i - first) * size + byte, value)
            yield part


# A header field set by the caller: (section index, field position in the header, value).
_Update = tuple[int, int, int]


def serialize(
    elf: ElfFile,
    new_data: Mapping[int, bytes | bytearray],
    new_info: Mapping[int, int] | None = None,
    new_entsize: Mapping[int, int] | None = None,
    new_addralign: Mapping[int, int] | None = None,
) -> bytes:
    """The bytes of ``elf`` with section ``i``'s data replaced by ``new_data[i]`` (see :func:`chunks`)."""
    return b"".join(chunks(elf, new_data, new_info, new_entsize, new_addralign))


def chunks(
    elf: ElfFile,
    new_data: Mapping[int, bytes | bytearray],
    new_info: Mapping[int, int] | None = None,
    new_entsize: Mapping[int, int] | None = None,
    new_addralign: Mapping[int, int] | None = None,
    made: Made | None = None,
) -> Pieces:
    """The bytes of ``elf`` with section ``i``'s data replaced by ``new_data[i]``, as
    consecutive pieces: most are views of the input, made as they are iterated,
    so the output need never be held whole (a caller writes them to a file in turn).

    ``new_info`` replaces ``sh_info`` of the given sections (the symbol table's
    first-global index moves when local symbols are inserted); ``new_entsize``
    replaces ``sh_entsize``; ``new_addralign`` replaces ``sh_addralign``, and
    the section's file offset follows the new alignment too. Every other
    header field is the input's. ``made``: sections whose contents, as long
    as the input's, are made when the pieces are first read.
    """
    lay = elf.layout
    secs = elf.sections
    starts, aligns = secs.offset, secs.addralign
    if new_addralign:
        aligns = array(aligns.typecode, aligns)
        for i, value in new_addralign.items():
            aligns[i] = value
    new_off = array("Q", starts)  # arrays, not lists: a stress object's 100k offsets as machine words
    new_size = array("Q", secs.size)
    fields = ((7, new_info), (8, new_addralign), (9, new_entsize))  # positions of sh_info, sh_addralign, sh_entsize
    out = Pieces(elf, new_off, new_size, [(i, k, v) for k, given in fields for i, v in (given or {}).items()], made)
    later = made.mask if made is not None else bytes(len(secs))
    ehdr_at = out.add(b"")  # the ELF header, once e_shoff is known
    pos = lay.ehdr.size
    # Unchanged sections that stay adjacent and keep one shift are copied as a
    # single run of the input (with the input's padding between them): a
    # stress object has 100k sections, and a chunk per section costs memory.
    run_lo = run_hi = -1  # input span of the pending run
    run_shift = 0

    def flush() -> None:
        if run_lo >= 0:
            out.copy(run_lo, run_hi)

    # Section 0 keeps its header as is (it holds e_shnum/e_shstrndx overflow).
    # The loop runs once per section (100k in a stress object): it reads
    # columns, and the alignment is inlined.
    has_data = secs.data_mask
    masks = array("Q", [0 if a <= 1 else min(a, MAX_FILE_ALIGN) - 1 for a in aligns])
    for i in secs.file_order:  # ties in index order
        mask = masks[i]
        start = (pos + mask) & ~mask
        if not has_data[i]:
            new_off[i] = start
            continue
        old = starts[i]
        size = new_size[i]
        if (
            i not in new_data
            and not later[i]
            and run_lo >= 0
            and old >= run_hi
            and start - old == run_shift
            and start - pos == old - run_hi
        ):
            run_hi = old + size  # extends the run: same shift, same gap
        else:
            flush()
            if start > pos:
                out.add(bytes(start - pos))
            if i in new_data:
                run_lo = -1
                replaced = new_data[i]
                out.add(replaced)
                size = new_size[i] = len(replaced)
            elif later[i]:
                run_lo = -1
                out.later(i)
            else:
                run_lo, run_hi, run_shift = old, old + size, start - old
        new_off[i] = start
        pos = start + size
    flush()
    shoff = _align(pos, lay.ptr_size)
    if shoff > pos:
        out.add(bytes(shoff - pos))
    out.add(None)  # the header table: the input's, with offsets and sizes rewritten as columns, made when written
    ehdr = list(lay.ehdr.unpack_from(elf.data, 0))
    ehdr[6] = shoff  # e_shoff
    out.replace(ehdr_at, lay.ehdr.pack(*ehdr))
    return out

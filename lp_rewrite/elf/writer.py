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
from collections.abc import Mapping

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
) -> list[Chunk]:
    """The bytes of ``elf`` with section ``i``'s data replaced by ``new_data[i]``, as
    consecutive pieces: most are views of the input, so the output need never be
    held whole (a caller writes them to a file in turn).

    ``new_info`` replaces ``sh_info`` of the given sections (the symbol table's
    first-global index moves when local symbols are inserted); ``new_entsize``
    replaces ``sh_entsize``; ``new_addralign`` replaces ``sh_addralign``, and
    the section's file offset follows the new alignment too. Every other
    header field is the input's.
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
    out: list[Chunk] = [b""]  # placeholder for the ELF header
    pos = lay.ehdr.size
    view = elf.view
    # Unchanged sections that stay adjacent and keep one shift are copied as a
    # single run of the input (with the input's padding between them): a
    # stress object has 100k sections, and a chunk per section costs memory.
    run_lo = run_hi = -1  # input span of the pending run
    run_shift = 0

    def flush() -> None:
        if run_lo >= 0:
            out.append(view[run_lo:run_hi])

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
            and run_lo >= 0
            and old >= run_hi
            and start - old == run_shift
            and start - pos == old - run_hi
        ):
            run_hi = old + size  # extends the run: same shift, same gap
        else:
            flush()
            if start > pos:
                out.append(bytes(start - pos))
            if i in new_data:
                run_lo = -1
                replaced = new_data[i]
                out.append(replaced)
                size = new_size[i] = len(replaced)
            else:
                run_lo, run_hi, run_shift = old, old + size, start - old
        new_off[i] = start
        pos = start + size
    flush()
    shoff = _align(pos, lay.ptr_size)
    if shoff > pos:
        out.append(bytes(shoff - pos))
    # The header table: the input's, with offsets and sizes rewritten as columns.
    headers = bytearray(view[elf.e_shoff : elf.e_shoff + len(secs) * lay.shdr.size])
    for field, values in ((lay.shdr_fields[4], new_off), (lay.shdr_fields[5], new_size)):
        fmt, byte = field
        words: memoryview = memoryview(headers).cast(fmt)  # type: ignore[call-overload]
        step = lay.shdr.size // words.itemsize
        words[byte // words.itemsize :: step] = memoryview(values if fmt == "Q" else array(fmt, values))
    for field_index, updates in ((7, new_info), (8, new_addralign), (9, new_entsize)):
        fmt, byte = lay.shdr_fields[field_index]
        for i, value in (updates or {}).items():
            struct.pack_into("<" + fmt, headers, i * lay.shdr.size + byte, value)
    out.append(headers)
    ehdr = list(lay.ehdr.unpack_from(elf.data, 0))
    ehdr[6] = shoff  # e_shoff
    out[0] = lay.ehdr.pack(*ehdr)
    return out

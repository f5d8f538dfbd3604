"""Serialise an :class:`ElfFile` with some sections' contents replaced.

The writer re-lays out the file the way a linker would: ELF header, then
every section's data in its original file order (each at its own alignment),
then the section header table. Section *indices* never change, so everything
that refers to a section by index stays valid; only ``sh_offset`` and
``sh_size`` follow the new contents. Object files have no program headers,
so nothing refers to file offsets except the section headers themselves.
"""

from __future__ import annotations

from collections.abc import Mapping

from lp_rewrite.elf.file import ElfFile

# sh_addralign constrains where a section is *loaded* (Xen copies each one to
# an address aligned on its own), not its file offset; a linker aligns file
# offsets anyway, and so does this writer, up to a page. A hostile
# sh_addralign of 2**40 must not make the output a terabyte of padding.
MAX_FILE_ALIGN = 4096


def _align(pos: int, alignment: int) -> int:
    alignment = min(alignment, MAX_FILE_ALIGN)
    if alignment <= 1:
        return pos
    return (pos + alignment - 1) & ~(alignment - 1)


def serialize(
    elf: ElfFile,
    new_data: Mapping[int, bytes],
    new_info: Mapping[int, int] | None = None,
) -> bytes:
    """The bytes of ``elf`` with section ``i``'s data replaced by ``new_data[i]``.

    ``new_info`` replaces ``sh_info`` of the given sections (the symbol table's
    first-global index moves when local symbols are inserted).
    """
    lay = elf.layout
    new_info = new_info or {}
    chunks: list[bytes | memoryview] = [b""]  # placeholder for the ELF header
    pos = lay.ehdr.size
    offsets: dict[int, int] = {}
    sizes: dict[int, int] = {}
    order = sorted((s for s in elf.sections[1:]), key=lambda s: (s.sh_offset, s.index))
    for sec in order:
        if not sec.has_file_data:
            offsets[sec.index] = _align(pos, sec.sh_addralign)
            continue
        replaced = new_data.get(sec.index)
        data: bytes | memoryview = elf.section_data(sec.index) if replaced is None else replaced
        start = _align(pos, sec.sh_addralign)
        if start > pos:
            chunks.append(bytes(start - pos))
        chunks.append(data)
        offsets[sec.index] = start
        sizes[sec.index] = len(data)
        pos = start + len(data)
    shoff = _align(pos, lay.ptr_size)
    if shoff > pos:
        chunks.append(bytes(shoff - pos))
    headers = bytearray()
    for sec in elf.sections:
        h = list(sec.header_tuple())
        if sec.index:
            h[4] = offsets[sec.index]
            h[5] = sizes.get(sec.index, sec.sh_size)
            h[7] = new_info.get(sec.index, sec.sh_info)
        headers += lay.shdr.pack(*h)
    chunks.append(bytes(headers))
    ehdr = list(lay.ehdr.unpack_from(elf.data, 0))
    ehdr[6] = shoff  # e_shoff
    chunks[0] = lay.ehdr.pack(*ehdr)
    return b"".join(chunks)

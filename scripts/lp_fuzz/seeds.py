"""Seeds: the committed fixtures, and variants derived from them with plain struct edits.

The ELF surgery here (extended numbering, a ``.symtab_shndx``, added sections)
never goes through the project's reader; the tests reuse it to build
objects no toolchain writes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

from lp_fuzz.fields import read_uint, shdr_geometry

ROOT = Path(__file__).resolve().parent.parent.parent
SEED_DIR = ROOT / "testdata" / "build"


def fixture_seeds() -> list[bytes]:
    return [p.read_bytes() for p in sorted(SEED_DIR.glob("*/*.livepatch"))]


def extended_numbering(data: bytes) -> bytes:
    """The same object with e_shnum = 0 and e_shstrndx = SHN_XINDEX (gABI extended numbering)."""
    buf = bytearray(data)
    is64, shoff, _ent, shnum, shstrndx = shdr_geometry(buf)
    if is64:
        struct.pack_into("<HH", buf, 0x3C, 0, 0xFFFF)
        struct.pack_into("<Q", buf, shoff + 0x20, shnum)  # section 0's sh_size
    else:
        struct.pack_into("<HH", buf, 0x30, 0, 0xFFFF)
        struct.pack_into("<I", buf, shoff + 0x14, shnum)
    struct.pack_into("<I", buf, shoff + (0x28 if is64 else 0x18), shstrndx)  # section 0's sh_link
    return bytes(buf)


def _section_headers(data: bytes | bytearray) -> tuple[struct.Struct, list[list[int]]]:
    is64, shoff, ent, shnum, _ = shdr_geometry(data)
    hdr = struct.Struct("<IIQQQQIIQQ" if is64 else "<IIIIIIIIII")
    return hdr, [list(hdr.unpack_from(data, shoff + i * ent)) for i in range(shnum)]


def edit_sections(data: bytes, edit: Callable[[list[list[int]], bytearray], None]) -> bytes:
    """Let ``edit`` change the section headers (``[sh_name, sh_type, sh_flags,
    sh_addr, sh_offset, sh_size, sh_link, sh_info, sh_addralign, sh_entsize]``,
    appending to the list adds a section) and append data to the file; a new
    header table is then written at the end. The old table stays behind as
    bytes no section claims."""
    buf = bytearray(data)
    hdr, headers = _section_headers(buf)
    is64 = buf[4] == 2
    edit(headers, buf)
    buf.extend(bytes(-len(buf) % 8))
    shoff = len(buf)
    buf.extend(b"".join(hdr.pack(*h) for h in headers))
    if is64:
        struct.pack_into("<Q", buf, 0x28, shoff)
        struct.pack_into("<H", buf, 0x3C, len(headers))
    else:
        struct.pack_into("<I", buf, 0x20, shoff)
        struct.pack_into("<H", buf, 0x30, len(headers))
    return bytes(buf)


def append_blob(buf: bytearray, blob: bytes, align: int = 8) -> int:
    """Append ``blob`` (aligned) to the file; its offset."""
    buf.extend(bytes(-len(buf) % max(align, 1)))
    pos = len(buf)
    buf.extend(blob)
    return pos


def section_index(data: bytes, name: str) -> int:
    """Index of the first section called ``name`` (read without the project's reader)."""
    _, _, _, _, shstrndx = shdr_geometry(data)
    _, headers = _section_headers(data)
    names = headers[shstrndx]
    table = data[names[4] : names[4] + names[5]]
    for i, h in enumerate(headers):
        if table[h[0] : table.index(b"\0", h[0])] == name.encode():
            return i
    raise KeyError(name)


def add_section(data: bytes, name: str, blob: bytes, sh_type: int, **fields: int) -> bytes:
    """The object with one more section (named in a grown copy of the section
    name table). ``fields``: flags, link, info, align, entsize."""
    _, _, _, _, shstrndx = shdr_geometry(data)

    def edit(headers: list[list[int]], buf: bytearray) -> None:
        names = headers[shstrndx]
        table = bytes(buf[names[4] : names[4] + names[5]]) + name.encode() + b"\0"
        name_off = names[5]
        names[4], names[5] = append_blob(buf, table, 1), len(table)
        align = fields.get("align", 1)
        offset = append_blob(buf, blob, align)
        headers.append(
            [
                name_off,
                sh_type,
                fields.get("flags", 0),
                0,
                offset,
                len(blob),
                fields.get("link", 0),
                fields.get("info", 0),
                align,
                fields.get("entsize", 0),
            ]
        )

    return edit_sections(data, edit)


def with_symtab_shndx(data: bytes, every: int = 2) -> bytes:
    """The same object with a ``.symtab_shndx`` section holding every ``every``-th
    symbol's section index (its st_shndx becomes SHN_XINDEX), as an assembler
    writes one for objects with more than 65279 sections."""
    buf = bytearray(data)
    is64 = buf[4] == 2
    _, headers = _section_headers(buf)
    symtab = next(i for i, h in enumerate(headers) if h[1] == 2)
    symsize, shndx_at = (24, 6) if is64 else (16, 14)
    nsym = headers[symtab][5] // symsize
    ext = bytearray(4 * nsym)
    for i in range(1, nsym, every):
        pos = headers[symtab][4] + i * symsize + shndx_at
        s = read_uint(buf, pos, 2)
        if 0 < s < 0xFF00:
            struct.pack_into("<H", buf, pos, 0xFFFF)
            struct.pack_into("<I", ext, 4 * i, s)
    return add_section(bytes(buf), ".symtab_shndx", bytes(ext), 18, link=symtab, align=4, entsize=4)


def all_seeds() -> list[bytes]:
    base = fixture_seeds()
    extra = []
    for data in base:
        extra.append(extended_numbering(data))
        extra.append(with_symtab_shndx(data))
    return base + extra

"""The field locator: where the editable fields of a (possibly damaged) object are.

One locator for the long run's mutator (:mod:`lp_fuzz.mutate`) and for the
bounded hypothesis run (tests/test_fuzz.py), which edits the fields it finds
on the pristine fixtures with :func:`edit`. The headers are read leniently,
with plain struct reads, never with the project's reader.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field


def read_uint(data: bytes | bytearray, off: int, size: int) -> int:
    return int.from_bytes(data[off : off + size], "little")


def shdr_geometry(data: bytes | bytearray) -> tuple[bool, int, int, int, int]:
    """(is64, e_shoff, shentsize, e_shnum, e_shstrndx) of a well-formed object."""
    is64 = data[4] == 2
    if is64:
        return True, read_uint(data, 0x28, 8), 64, read_uint(data, 0x3C, 2), read_uint(data, 0x3E, 2)
    return False, read_uint(data, 0x20, 4), 40, read_uint(data, 0x30, 2), read_uint(data, 0x32, 2)


@dataclass
class Fields:
    """Editable fields of a (possibly damaged) object: kind -> [(offset, width)]."""

    by_kind: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    shnum: int = 0
    nsyms: int = 0

    def add(self, kind: str, off: int, width: int, size: int) -> None:
        if off >= 0 and off + width <= size:
            self.by_kind.setdefault(kind, []).append((off, width))


_EHDR64 = [(16, 2), (18, 2), (20, 4), (24, 8), (32, 8), (40, 8), (48, 4), (52, 2), (54, 2), (56, 2), (58, 2)]
_EHDR64 += [(60, 2), (62, 2)]
_EHDR32 = [(16, 2), (18, 2), (20, 4), (24, 4), (28, 4), (32, 4), (36, 4), (40, 2), (42, 2), (44, 2), (46, 2)]
_EHDR32 += [(48, 2), (50, 2)]
_SHDR64 = [(0, 4), (4, 4), (8, 8), (16, 8), (24, 8), (32, 8), (40, 4), (44, 4), (48, 8), (56, 8)]
_SHDR32 = [(0, 4), (4, 4), (8, 4), (12, 4), (16, 4), (20, 4), (24, 4), (28, 4), (32, 4), (36, 4)]
_SYM64 = [(0, 4), (4, 1), (5, 1), (6, 2), (8, 8), (16, 8)]
_SYM32 = [(0, 4), (4, 4), (8, 4), (12, 1), (13, 1), (14, 2)]
_CAP = 4096  # entries looked at per table: enough to reach every fixture's fields


def locate(data: bytes | bytearray) -> Fields:
    """Find fields by reading the headers leniently (never the project's reader)."""
    size = len(data)
    out = Fields()
    for i in range(min(size, 16)):
        out.add("ident", i, 1, size)
    if size < 52 or data[:4] != b"\x7fELF":
        return out
    is64 = data[4] == 2
    for off, w in _EHDR64 if is64 else _EHDR32:
        out.add("ehdr", off, w, size)
    if is64 and size < 64:
        return out
    _, shoff, ent, shnum, shstrndx = shdr_geometry(data)
    layout = _SHDR64 if is64 else _SHDR32
    ptr = 8 if is64 else 4
    headers: list[tuple[int, ...]] = []
    if 0 < shoff < size:
        if shnum == 0 and shoff + ent <= size:
            shnum = read_uint(data, shoff + (32 if is64 else 20), ptr)
        shnum = min(shnum, (size - shoff) // ent, _CAP)
        fmt = struct.Struct("<IIQQQQIIQQ" if is64 else "<IIIIIIIIII")
        for i in range(shnum):
            base = shoff + i * ent
            for off, w in layout:
                out.add("shdr", base + off, w, size)
            headers.append(fmt.unpack_from(data, base))
    out.shnum = len(headers)
    names: dict[int, bytes] = {}
    if 0 < shstrndx < len(headers):
        s = headers[shstrndx]
        if s[4] + s[5] <= size:
            table = bytes(data[s[4] : s[4] + s[5]])
            for i, h in enumerate(headers):
                end = table.find(b"\0", h[0])
                names[i] = table[h[0] : end] if end >= 0 else b""
    for i, h in enumerate(headers):
        sh_type, sh_offset, sh_size, sh_info = h[1], h[4], h[5], h[7]
        if sh_type == 8 or sh_offset >= size:
            continue
        end = min(size, sh_offset + sh_size)
        if sh_type == 2:  # symbol table
            symsize = 24 if is64 else 16
            count = min((end - sh_offset) // symsize, _CAP)
            out.nsyms = max(out.nsyms, count)
            for k in range(count):
                for off, w in _SYM64 if is64 else _SYM32:
                    out.add("sym", sh_offset + k * symsize + off, w, size)
        elif sh_type in (4, 9):  # RELA / REL
            entsize = (3 if sh_type == 4 else 2) * ptr
            target = headers[sh_info] if 0 < sh_info < len(headers) else None
            for k in range(min((end - sh_offset) // entsize, _CAP)):
                base = sh_offset + k * entsize
                out.add("rel", base, ptr, size)  # r_offset
                if is64:
                    out.add("rel", base + 8, 4, size)  # type
                    out.add("rel", base + 12, 4, size)  # symbol
                else:
                    out.add("rel", base + 4, 1, size)
                    out.add("rel", base + 5, 3, size)
                if sh_type == 4:
                    out.add("rel", base + 2 * ptr, ptr, size)
                if target is not None and target[1] != 8:
                    place = target[4] + read_uint(data, base, ptr)
                    for d in (-2, -1):
                        out.add("place", place + d, 1, size)
                    out.add("place", place, 4, size)
        elif sh_type == 3:  # string table: its NULs and some name bytes
            for k in range(sh_offset, min(end, sh_offset + _CAP)):
                if data[k] == 0 or k % 7 == 0:
                    out.add("str", k, 1, size)
        if names.get(i) == b".livepatch.funcs":
            voff = 3 * ptr + 8
            version = data[sh_offset + voff] if sh_offset + voff < size else 2
            entry = {(1, 8): 64, (1, 4): 52, (2, 8): 104, (2, 4): 92}.get((version, ptr), 104 if is64 else 92)
            for k in range(min((end - sh_offset) // entry, _CAP)):
                base = sh_offset + k * entry
                for off, w in ((0, ptr), (ptr, ptr), (2 * ptr, ptr), (3 * ptr, 4), (3 * ptr + 4, 4), (voff, 1)):
                    out.add("funcs", base + off, w, size)
    return out


# Every kind locate() may return: the hypothesis run draws from these.
KINDS = ("ident", "ehdr", "shdr", "sym", "rel", "place", "str", "funcs")


def edit(buf: bytearray, fields: Fields, kind: str, where: float, value: int, mode: str) -> None:
    """Set (``mode`` "set") or add to (``mode`` "add") the field of ``kind`` at relative position
    ``where`` in [0, 1), modulo the field's width; nothing when ``fields`` has no such field or the
    field is past the end of ``buf`` (an earlier edit truncated it)."""
    places = fields.by_kind.get(kind)
    if not places:
        return
    off, width = places[int(where * len(places))]
    if off + width > len(buf):
        return
    old = read_uint(buf, off, width)
    new = old + value if mode == "add" else value
    buf[off : off + width] = (new % (1 << (8 * width))).to_bytes(width, "little")

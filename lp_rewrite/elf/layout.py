"""Binary layouts of ELF structures, per class (the one place for their sizes).

Only ELFDATA2LSB layouts exist here (the targets this package serves, x86-64,
AArch64 and 32-bit Arm, are all little-endian); the reader rejects the other
byte order before any of this is used.

Hot tables (symbols, relocations) are read as *columns*: a strided
``memoryview`` cast over the raw section bytes, turned into a list in C. That
costs one small int per field instead of one Python object per entry.
"""

from __future__ import annotations

import struct
import sys
from array import array
from typing import Final, NamedTuple

from lp_rewrite.elf.consts import ELFCLASS32, ELFCLASS64, SHT_RELA

# (struct format char, byte offset within the entry)
Field = tuple[str, int]

_NATIVE_LE: Final = sys.byteorder == "little"

# Bytes per item of each struct format char the layouts use.
ITEM_SIZE: Final = {"B": 1, "H": 2, "I": 4, "i": 4, "Q": 8, "q": 8}


def column(data: memoryview, field: Field, entsize: int) -> array[int]:
    """Every entry's value of one fixed-size field (C speed).

    An array, not a list: a million entries cost their item size each rather
    than a Python int object (~32 bytes) and a pointer. Its typecode is the
    field's, so the same column of two files compares equal by value.
    """
    fmt, off = field
    size = struct.calcsize(fmt)
    if _NATIVE_LE and entsize % size == 0 and off % size == 0 and len(data) % size == 0:
        view: memoryview = data.cast(fmt)  # type: ignore[call-overload]
        return array(fmt, view[off // size :: entsize // size].tobytes())  # a strided copy in C, then memcpy
    unpack = struct.Struct("<" + fmt).unpack_from
    return array(fmt, [unpack(data, i + off)[0] for i in range(0, len(data), entsize)])


class ClassLayout(NamedTuple):
    """Struct layouts of one ELF class."""

    elfclass: int
    ptr_size: int
    ehdr: struct.Struct
    shdr: struct.Struct
    sym: struct.Struct
    rel: struct.Struct
    rela: struct.Struct
    # Section header field positions, in header order.
    shdr_fields: tuple[Field, ...]
    # Symbol field positions, for column reads.
    sym_name: Field
    sym_value: Field
    sym_size: Field
    sym_info: Field
    sym_other: Field
    sym_shndx: Field
    # Relocation field positions (shared by REL and RELA: same prefix).
    rel_offset: Field
    rel_info: Field
    rela_addend: Field
    # Where r_type / r_sym can be read directly as a column (64-bit only for sym).
    rel_type: Field
    rel_sym: Field | None
    r_sym_shift: int
    r_type_mask: int

    def reloc_entsize(self, sh_type: int) -> int:
        """The entry size of a relocation section of this type (SHT_RELA, else SHT_REL)."""
        return self.rela.size if sh_type == SHT_RELA else self.rel.size

    def r_sym(self, info: int) -> int:
        return info >> self.r_sym_shift

    def r_type(self, info: int) -> int:
        return info & self.r_type_mask

    def r_info(self, sym: int, rtype: int) -> int:
        return (sym << self.r_sym_shift) | (rtype & self.r_type_mask)

    def pack_sym(self, name: int, info: int, other: int, shndx: int, value: int, size: int) -> bytes:
        if self.elfclass == ELFCLASS64:
            return self.sym.pack(name, info, other, shndx, value, size)
        return self.sym.pack(name, value, size, info, other, shndx)


LAYOUT64: Final = ClassLayout(
    elfclass=ELFCLASS64,
    ptr_size=8,
    ehdr=struct.Struct("<16sHHIQQQIHHHHHH"),
    shdr=struct.Struct("<IIQQQQIIQQ"),
    shdr_fields=(
        ("I", 0),
        ("I", 4),
        ("Q", 8),
        ("Q", 16),
        ("Q", 24),
        ("Q", 32),
        ("I", 40),
        ("I", 44),
        ("Q", 48),
        ("Q", 56),
    ),
    sym=struct.Struct("<IBBHQQ"),
    rel=struct.Struct("<QQ"),
    rela=struct.Struct("<QQq"),
    sym_name=("I", 0),
    sym_info=("B", 4),
    sym_other=("B", 5),
    sym_shndx=("H", 6),
    sym_value=("Q", 8),
    sym_size=("Q", 16),
    rel_offset=("Q", 0),
    rel_info=("Q", 8),
    rela_addend=("q", 16),
    rel_type=("I", 8),
    rel_sym=("I", 12),
    r_sym_shift=32,
    r_type_mask=0xFFFFFFFF,
)

LAYOUT32: Final = ClassLayout(
    elfclass=ELFCLASS32,
    ptr_size=4,
    ehdr=struct.Struct("<16sHHIIIIIHHHHHH"),
    shdr=struct.Struct("<IIIIIIIIII"),
    shdr_fields=tuple(("I", 4 * k) for k in range(10)),
    sym=struct.Struct("<IIIBBH"),
    rel=struct.Struct("<II"),
    rela=struct.Struct("<IIi"),
    sym_name=("I", 0),
    sym_value=("I", 4),
    sym_size=("I", 8),
    sym_info=("B", 12),
    sym_other=("B", 13),
    sym_shndx=("H", 14),
    rel_offset=("I", 0),
    rel_info=("I", 4),
    rela_addend=("i", 8),
    rel_type=("B", 4),
    rel_sym=None,
    r_sym_shift=8,
    r_type_mask=0xFF,
)


def layout_for(elfclass: int) -> ClassLayout:
    return LAYOUT64 if elfclass == ELFCLASS64 else LAYOUT32

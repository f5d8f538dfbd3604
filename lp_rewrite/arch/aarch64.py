"""AArch64: RELA only; Xen applies the ~30 types of its ``perform_rela``.

Source: ``arch_livepatch_perform_rela()`` in ``xen/arch/arm/arm64/livepatch.c``
(R_AARCH64_NONE is *not* among them: Xen reports it as unhandled). Every
type's field designates ``S + A`` exactly, so the bias is always 0; an
ADRP+ADD pair or a MOVW G0..G3 sequence shares one (symbol, addend), so the
entry test retargets all of its pieces together.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Callable, Iterator, Mapping, Set
from types import MappingProxyType
from typing import Final, NamedTuple

from lp_rewrite.arch import DEFAULT_HINT, GOT_HINT, AddressSite, Arch, Kind, LoadError, RelocType, sign_extend
from lp_rewrite.elf import consts as C

_M64 = (1 << 64) - 1


class Op(enum.Enum):
    ABS = "abs"
    PREL = "prel"
    PAGE = "page"


class Imm(enum.Enum):
    IMM_26 = (0x3FFFFFF, 0)
    IMM_19 = (0x7FFFF, 5)
    IMM_16 = (0xFFFF, 5)
    IMM_14 = (0x3FFF, 5)
    IMM_12 = (0xFFF, 10)
    ADR = (0, 0)


class Data(NamedTuple):
    """A data word: ``reloc_data()``."""

    op: Op
    bits: int
    checked: bool


class Movw(NamedTuple):
    """A MOVZ/MOVK/MOVN immediate: ``reloc_insn_movw()``."""

    op: Op
    lsb: int
    signed: bool  # MOVNZ: Xen switches between MOVZ and MOVN
    checked: bool


class Insn(NamedTuple):
    """An instruction immediate field: ``reloc_insn_imm()``."""

    op: Op
    lsb: int
    length: int
    field: Imm
    checked: bool


How = Data | Movw | Insn

# name -> (code, what it is, how Xen applies it). The pieces of an address that
# a later instruction completes (ADRP, MOVW G1..G3) are PAGE: the completing
# piece (ADD, G0, a load) says what the code does with the address.
_SPEC: Final[dict[str, tuple[int, Kind, How]]] = {
    "ABS64": (257, Kind.POINTER, Data(Op.ABS, 64, False)),
    "ABS32": (258, Kind.POINTER, Data(Op.ABS, 32, True)),
    "ABS16": (259, Kind.POINTER, Data(Op.ABS, 16, True)),
    "PREL64": (260, Kind.OFFSET, Data(Op.PREL, 64, False)),
    "PREL32": (261, Kind.OFFSET, Data(Op.PREL, 32, True)),
    "PREL16": (262, Kind.OFFSET, Data(Op.PREL, 16, True)),
    "MOVW_UABS_G0": (263, Kind.ADDRESS, Movw(Op.ABS, 0, False, True)),
    "MOVW_UABS_G0_NC": (264, Kind.ADDRESS, Movw(Op.ABS, 0, False, False)),
    "MOVW_UABS_G1": (265, Kind.PAGE, Movw(Op.ABS, 16, False, True)),
    "MOVW_UABS_G1_NC": (266, Kind.PAGE, Movw(Op.ABS, 16, False, False)),
    "MOVW_UABS_G2": (267, Kind.PAGE, Movw(Op.ABS, 32, False, True)),
    "MOVW_UABS_G2_NC": (268, Kind.PAGE, Movw(Op.ABS, 32, False, False)),
    "MOVW_UABS_G3": (269, Kind.PAGE, Movw(Op.ABS, 48, False, False)),
    "MOVW_SABS_G0": (270, Kind.ADDRESS, Movw(Op.ABS, 0, True, True)),
    "MOVW_SABS_G1": (271, Kind.PAGE, Movw(Op.ABS, 16, True, True)),
    "MOVW_SABS_G2": (272, Kind.PAGE, Movw(Op.ABS, 32, True, True)),
    "ADR_PREL_LO21": (274, Kind.ADDRESS, Insn(Op.PREL, 0, 21, Imm.ADR, True)),
    "ADR_PREL_PG_HI21": (275, Kind.PAGE, Insn(Op.PAGE, 12, 21, Imm.ADR, True)),
    "ADR_PREL_PG_HI21_NC": (276, Kind.PAGE, Insn(Op.PAGE, 12, 21, Imm.ADR, False)),
    "ADD_ABS_LO12_NC": (277, Kind.ADDRESS, Insn(Op.ABS, 0, 12, Imm.IMM_12, False)),
    "LDST8_ABS_LO12_NC": (278, Kind.MEMORY, Insn(Op.ABS, 0, 12, Imm.IMM_12, False)),
    # Xen passes len 19 for TSTBR14 (Linux uses 14); the field is still 14 bits.
    "TSTBR14": (279, Kind.CALL, Insn(Op.PREL, 2, 19, Imm.IMM_14, True)),
    "CONDBR19": (280, Kind.CALL, Insn(Op.PREL, 2, 19, Imm.IMM_19, True)),
    "JUMP26": (282, Kind.CALL, Insn(Op.PREL, 2, 26, Imm.IMM_26, True)),
    "CALL26": (283, Kind.CALL, Insn(Op.PREL, 2, 26, Imm.IMM_26, True)),
    "LDST16_ABS_LO12_NC": (284, Kind.MEMORY, Insn(Op.ABS, 1, 11, Imm.IMM_12, False)),
    "LDST32_ABS_LO12_NC": (285, Kind.MEMORY, Insn(Op.ABS, 2, 10, Imm.IMM_12, False)),
    "LDST64_ABS_LO12_NC": (286, Kind.MEMORY, Insn(Op.ABS, 3, 9, Imm.IMM_12, False)),
    "MOVW_PREL_G0": (287, Kind.ADDRESS, Movw(Op.PREL, 0, True, True)),
    "MOVW_PREL_G0_NC": (288, Kind.ADDRESS, Movw(Op.PREL, 0, False, False)),
    "MOVW_PREL_G1": (289, Kind.PAGE, Movw(Op.PREL, 16, True, True)),
    "MOVW_PREL_G1_NC": (290, Kind.PAGE, Movw(Op.PREL, 16, False, False)),
    "MOVW_PREL_G2": (291, Kind.PAGE, Movw(Op.PREL, 32, True, True)),
    "MOVW_PREL_G2_NC": (292, Kind.PAGE, Movw(Op.PREL, 32, False, False)),
    "MOVW_PREL_G3": (293, Kind.PAGE, Movw(Op.PREL, 48, True, False)),
    "LDST128_ABS_LO12_NC": (299, Kind.MEMORY, Insn(Op.ABS, 4, 8, Imm.IMM_12, False)),
}

# Bits of each instruction immediate field (ADR: immhi:immlo).
_FIELD_BITS: Final = {Imm.IMM_26: 26, Imm.IMM_19: 19, Imm.IMM_16: 16, Imm.IMM_14: 14, Imm.IMM_12: 12, Imm.ADR: 21}


def _reach(how: How) -> int | None:
    """How far a PC-relative field designates (None: an address, or a piece of one)."""
    if how.op is Op.ABS:
        return None
    if isinstance(how, Data):
        return None if how.bits == 64 else 1 << (how.bits - 1)
    if isinstance(how, Movw):
        # An unchecked piece is completed by a checked one (or by G3, 64 bits).
        return 1 << (how.lsb + 16) if how.checked and how.lsb < 48 else None
    return 1 << (_FIELD_BITS[how.field] - 1 + how.lsb)


_TYPES: Final = {
    code: RelocType(code, "R_AARCH64_" + name, kind, 8 if isinstance(how, Data) and how.bits == 64 else 4, _reach(how))
    for name, (code, kind, how) in _SPEC.items()
}
_HOW: Final[dict[int, How]] = {code: how for code, _kind, how in _SPEC.values()}

_NONE: Final = "an R_*_NONE entry, which Xen's AArch64 loader does not accept: rebuild without it"

_U32 = struct.Struct("<I")
# ADR: bit 31 = 0, bits 28-24 = 10000 -> top byte & 0x9F == 0x10.
_ADR: Final = re.compile(rb"(?s)(?=...[\x10\x30\x50\x70])")


def _do_reloc(op: Op, p: int, val: int) -> int:
    """Xen's do_reloc(), as a signed 64-bit value."""
    if op is Op.ABS:
        r = val
    elif op is Op.PREL:
        r = val - p
    else:
        r = (val & ~0xFFF) - (p & ~0xFFF)
    return sign_extend(r & _M64, 64)


def _encode(kind: Imm, insn: int, imm: int) -> int:
    if kind is Imm.ADR:
        immlo, immhi = imm & 3, (imm >> 2) & 0x7FFFF
        mask = (3 << 29) | (0x7FFFF << 5)
        return (insn & ~mask) | (immlo << 29) | (immhi << 5)
    fmask: int = kind.value[0]
    shift: int = kind.value[1]
    return (insn & ~(fmask << shift)) | ((imm & fmask) << shift)


class AArch64(Arch):
    name = "aarch64"
    machine = C.EM_AARCH64
    elfclass = C.ELFCLASS64
    rel_section_types = frozenset([C.SHT_RELA])
    address_pattern = _ADR  # what address_computations() searches for
    types = _TYPES
    livepatch_range = 128 << 20  # B imm26
    mapping_symbol_code = "x"
    hypervisor_base = 0x0000_0A00_0020_0000
    pointer_type = _SPEC["ABS64"][0]
    patch_insn_size = 4  # one B instruction
    # No alignment faults in the hypervisor: Xen 4.17 arm64 (the e2e's rebuilt
    # hypervisor under QEMU) uploads xen_hello_world with both depends notes
    # unaligned, where arm32 Xen takes a Data Abort (LP016).
    alignment_checking = None
    other_types: Mapping[int, tuple[str, str]] = MappingProxyType(
        {
            0: ("R_AARCH64_NONE", _NONE),
            256: ("R_AARCH64_NONE", _NONE),
            273: ("R_AARCH64_LD_PREL_LO19", DEFAULT_HINT),
            311: ("R_AARCH64_ADR_GOT_PAGE", GOT_HINT),
            312: ("R_AARCH64_LD64_GOT_LO12_NC", GOT_HINT),
            313: ("R_AARCH64_LD64_GOTPAGE_LO15", GOT_HINT),  # GCC -fpic, default-visibility data
        }
    )

    rel_type_refusal = "SHT_REL relocations fail with -ENOSYS on arm64 (Xen logs nothing)"
    out_of_reach_fix = "take the address with adrp+add (GCC's default code model), not adr"

    def address_computations(
        self, data: memoryview, targets: Set[int], in_data: Callable[[int], bool], decode_from: Callable[[int], int]
    ) -> Iterator[AddressSite]:
        """``adr`` (-mcmodel=tiny). ``adrp``+``add`` always keeps its relocations: the page is
        unknown until link time."""
        for m in _ADR.finditer(data):
            off = m.start()
            if off % 4 or off + 4 > len(data) or in_data(off):
                continue
            word = _U32.unpack_from(data, off)[0]
            if word & 0x9F000000 != 0x10000000:
                continue
            imm = sign_extend(((word >> 5) & 0x7FFFF) << 2 | (word >> 29) & 3, 21)
            if off + imm in targets:
                yield AddressSite(off, off, off + imm, f"adr x{word & 31}")

    def relocate(self, rtype: int, place: bytearray, offset: int, s: int, a: int, p: int) -> None:
        # Xen checks the 32-bit minimum before looking at the type, 64-bit types after.
        if offset + 4 > len(place):
            raise LoadError("Relative relocation offset is past {section} section")
        how = _HOW.get(rtype)
        if how is None:
            raise LoadError(f"Unhandled relocation {rtype}")
        if _TYPES[rtype].width == 8 and offset + 8 > len(place):
            raise LoadError("Relative relocation offset is past {section} section")
        val = (s + a) & _M64
        if isinstance(how, Data):
            sval = _do_reloc(how.op, p, val)
            nbytes = how.bits // 8
            place[offset : offset + nbytes] = (sval & ((1 << how.bits) - 1)).to_bytes(nbytes, "little")
            overflow = how.bits < 64 and (sval < -(1 << (how.bits - 1)) or sval > (1 << how.bits) - 1)
        elif isinstance(how, Movw):
            insn = _U32.unpack_from(place, offset)[0]
            sval = _do_reloc(how.op, p, val)
            imm = (sval >> how.lsb) & _M64
            if how.signed:
                insn &= ~(3 << 29)
                if sval >= 0:
                    insn |= 2 << 29  # MOVZ
                else:
                    imm = ~imm & _M64  # MOVN with the inverted immediate
            _U32.pack_into(place, offset, _encode(Imm.IMM_16, insn, imm) & 0xFFFFFFFF)
            overflow = imm > 0xFFFF
        else:
            insn = _U32.unpack_from(place, offset)[0]
            sval = _do_reloc(how.op, p, val) >> how.lsb
            imm_mask = ((1 << (how.lsb + how.length)) - 1) >> how.lsb
            imm = sval & imm_mask
            _U32.pack_into(place, offset, _encode(how.field, insn, imm) & 0xFFFFFFFF)
            upper = sign_extend(sval & ~(imm_mask >> 1) & _M64, 64) >> (how.length - 1)
            overflow = ((upper + 1) & _M64) >= 2
        if how.checked and overflow:
            raise LoadError("Overflow in relocation {index} in {rela} for {section}")


ARCH: Final = AArch64()

"""32-bit Arm (EABI5, ARM state): REL and RELA, seven relocation types.

Source: ``arch_livepatch_perform()`` in ``xen/arch/arm/arm32/livepatch.c``.
The GNU toolchain emits SHT_REL, so addends live in the instruction or data
word (Xen's ``get_addend()``): a ``bl foo`` holds A = -8 because the CPU reads
PC as the branch's address plus 8. When the rewriter moves a reference from a
section symbol at offset k to an alias, the addend changes, and for REL that
means re-encoding the place itself.

Xen's ``perform_rel()`` drops the addend of MOVW/MOVT (it loads half of S,
not of S + A), so a payload with one is refused (:meth:`Arm.misapplied`)
rather than rewritten. GCC 12 loads an address plus offset from a literal
pool (ABS32) instead, so one takes assembly such as ``#:lower16:sym+16``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator, Mapping, Set
from types import MappingProxyType
from typing import Final

from lp_rewrite.arch import DEFAULT_HINT, GOT_HINT, AddressSite, Arch, Kind, LoadError, RelocType, sign_extend
from lp_rewrite.elf import consts as C
from lp_rewrite.elf.file import ElfFile
from lp_rewrite.errors import InputError

R_ARM_NONE: Final = 0
R_ARM_ABS32: Final = 2
R_ARM_REL32: Final = 3
R_ARM_CALL: Final = 28
R_ARM_JUMP24: Final = 29
R_ARM_MOVW_ABS_NC: Final = 43
R_ARM_MOVT_ABS: Final = 44
_RANGE: Final = 32 << 20  # ARCH_LIVEPATCH_RANGE: +-32 MiB for B/BL (imm24 words)

_TYPES: Final = {
    t.code: t
    for t in (
        RelocType(R_ARM_NONE, "R_ARM_NONE", Kind.NONE, 0),
        RelocType(R_ARM_ABS32, "R_ARM_ABS32", Kind.POINTER, 4),
        RelocType(R_ARM_REL32, "R_ARM_REL32", Kind.OFFSET, 4, 1 << 31),
        # B/BL read PC as the instruction's address plus 8: bias 8.
        RelocType(R_ARM_CALL, "R_ARM_CALL", Kind.CALL, 4, _RANGE, 8),
        RelocType(R_ARM_JUMP24, "R_ARM_JUMP24", Kind.CALL, 4, _RANGE, 8),
        # movw+movt: MOVW's low half completes the address MOVT's high half starts.
        RelocType(R_ARM_MOVW_ABS_NC, "R_ARM_MOVW_ABS_NC", Kind.ADDRESS, 4),
        RelocType(R_ARM_MOVT_ABS, "R_ARM_MOVT_ABS", Kind.PAGE, 4),
    )
}
# The types Xen's arm32 loader misapplies, by name, for the gate's rule help (LP014, LP015).
BRANCH_NAMES: Final = f"{_TYPES[R_ARM_CALL].name} and {_TYPES[R_ARM_JUMP24].name}"
MOVE_NAMES: Final = f"{_TYPES[R_ARM_MOVW_ABS_NC].name} / {_TYPES[R_ARM_MOVT_ABS].name}"
POINTER_NAME: Final = _TYPES[R_ARM_ABS32].name
_BRANCHES: Final = frozenset([R_ARM_CALL, R_ARM_JUMP24])
_MOVES: Final = frozenset([R_ARM_MOVW_ABS_NC, R_ARM_MOVT_ABS])
_WORDS: Final = frozenset([R_ARM_ABS32, R_ARM_REL32])
# The immediate fields Xen clears (only when the addend is non-zero) before
# OR-ing its result in: imm4:imm12 of MOVW/MOVT, imm24 of B/BL.
_MOVE_IMM: Final = 0x000F0FFF
_BRANCH_IMM: Final = 0x00FFFFFF

_THUMB: Final = "Thumb code: build the payload with -marm"

_U32 = struct.Struct("<I")
# ADD/SUB (immediate) with Rn = pc (adr): byte 2 is 0x8F/0x9F (ADD) or 0x4F/0x5F (SUB), byte 3 is cond:0010.
_COND_0010: Final = bytes(c << 4 | 2 for c in range(15))
_ADR: Final = re.compile(rb"(?s)(?=..[\x8f\x9f\x4f\x5f][" + re.escape(_COND_0010) + rb"])")


class Arm(Arch):
    name = "arm"
    machine = C.EM_ARM
    elfclass = C.ELFCLASS32
    rel_section_types = frozenset([C.SHT_REL, C.SHT_RELA])
    address_pattern = _ADR  # what address_computations() searches for
    types = _TYPES
    livepatch_range = _RANGE
    misencodes_branches = True
    alignment_checking = "arm32 Xen runs with alignment checking on (HSCTLR.A)"
    mapping_symbol_code = "a"
    hypervisor_base = 0x0020_0000
    pointer_type = R_ARM_ABS32
    patch_insn_size = 4  # one B instruction
    other_types: Mapping[int, tuple[str, str]] = MappingProxyType(
        {
            1: ("R_ARM_PC24", DEFAULT_HINT),
            10: ("R_ARM_THM_CALL", _THUMB),
            26: ("R_ARM_GOT_BREL", GOT_HINT),
            30: ("R_ARM_THM_JUMP24", _THUMB),
            40: ("R_ARM_V4BX", DEFAULT_HINT),
            42: ("R_ARM_PREL31", "an unwind-table entry: build with -fno-unwind-tables"),
            45: ("R_ARM_MOVW_PREL_NC", DEFAULT_HINT),
            46: ("R_ARM_MOVT_PREL", DEFAULT_HINT),
            47: ("R_ARM_THM_MOVW_ABS_NC", _THUMB),
            48: ("R_ARM_THM_MOVT_ABS", _THUMB),
        }
    )

    def verify_elf(self, ident: bytes, e_flags: int) -> str | None:
        if ident[C.EI_CLASS] != C.ELFCLASS32:
            return "Unsupported ELF Machine type"
        if e_flags & C.EF_ARM_EABIMASK != C.EF_ARM_EABI_VER5:
            return f"Unsupported ELF EABI({e_flags:x})"
        return None

    denies_symbols = True
    function_value_flags = 1  # Thumb entries have bit 0 set

    def symbol_denied(self, name: bytes) -> bool:
        # Xen has no Thumb code: a $t mapping symbol means there is some.
        return name[:2] == b"$t" and (len(name) == 2 or name[2:3] == b".")

    def check_header(self, elf: ElfFile) -> None:
        if elf.elfclass != C.ELFCLASS32:
            raise InputError("32-bit Arm payloads must be ELFCLASS32")
        if elf.e_flags & C.EF_ARM_EABIMASK != C.EF_ARM_EABI_VER5:
            raise InputError(f"Unsupported ELF EABI({elf.e_flags:x}): Xen needs EABI version 5")

    def implicit_addend(self, rtype: int, data: memoryview | bytearray, offset: int) -> int:
        if rtype == R_ARM_NONE:
            return 0
        if offset + 4 > len(data):
            raise InputError(f"REL place at {offset:#x} is past the end of its section")
        word = _U32.unpack_from(data, offset)[0]
        if rtype in _WORDS:
            return sign_extend(word, 32)
        if rtype in _MOVES:
            return sign_extend((word & 0xFFF) | ((word & 0xF0000) >> 4), 16)
        if rtype in _BRANCHES:
            return sign_extend(word & 0xFFFFFF, 24) << 2
        raise InputError(f"no implicit addend for relocation type {rtype}")

    def write_implicit_addend(self, rtype: int, data: bytearray, offset: int, addend: int) -> None:
        word = _U32.unpack_from(data, offset)[0]
        if rtype in _WORDS:
            word = addend & 0xFFFFFFFF
        elif rtype in _MOVES:
            if not -(1 << 15) <= addend < (1 << 15):
                raise InputError(f"addend {addend} does not fit a MOVW/MOVT immediate")
            imm = addend & 0xFFFF
            word = (word & ~_MOVE_IMM) | (imm & 0xFFF) | ((imm >> 12) << 16)
        elif rtype in _BRANCHES:
            if addend % 4 or not -(1 << 25) <= addend < (1 << 25):
                raise InputError(f"addend {addend} does not fit a B/BL immediate")
            word = (word & 0xFF000000) | ((addend >> 2) & 0xFFFFFF)
        else:
            raise InputError(f"cannot re-encode an addend for relocation type {rtype}")
        _U32.pack_into(data, offset, word)

    misapplied_fix = (
        "build with -mword-relocations (addresses from literal pools: R_ARM_ABS32, whose addend Xen applies), "
        "or take the address of the symbol itself"
    )

    def misapplied_types(self, rela: bool) -> frozenset[int]:
        # A REL branch's immediate *is* its addend, so only RELA ones can disagree.
        return _MOVES | _BRANCHES if rela else _MOVES

    def misapplied(self, rtype: int, addend: int, data: memoryview, offset: int, rela: bool) -> str | None:
        # perform_rel() takes val = S; for MOVW/MOVT it clears the immediate
        # when A != 0 and ORs in S's half: A is dropped, REL or RELA alike.
        if rtype in _MOVES and addend:
            return "Xen's arm32 loader ignores MOVW/MOVT addends: it would load S instead of S+A"
        if rela and not addend and offset + 4 <= len(data):
            # With A = 0 Xen does not clear the field, so stale immediate bits
            # in the place are OR-ed into its result.
            field = _MOVE_IMM if rtype in _MOVES else _BRANCH_IMM
            if _U32.unpack_from(data, offset)[0] & field:
                return (
                    "the place's immediate is not zero but r_addend is 0: Xen's arm32 loader clears the field "
                    "only for a non-zero addend, and would OR its result into the stale bits"
                )
        return None

    def address_computations(
        self, data: memoryview, targets: Set[int], in_data: Callable[[int], bool], decode_from: Callable[[int], int]
    ) -> Iterator[AddressSite]:
        """``add``/``sub rD, pc, #imm`` (adr). Literal pools (``ldr rX, =fn``) are relocated words."""
        for m in _ADR.finditer(data):
            off = m.start()
            if off % 4 or off + 4 > len(data) or in_data(off):
                continue
            word = _U32.unpack_from(data, off)[0]
            rot = ((word >> 8) & 0xF) * 2
            imm = ((word & 0xFF) >> rot | (word & 0xFF) << (32 - rot)) & 0xFFFFFFFF if rot else word & 0xFF
            add = (word >> 21) & 0xF == 0b0100
            target = off + 8 + (imm if add else -imm)
            if target in targets:
                yield AddressSite(off, off, target, f"{'add' if add else 'sub'} r{(word >> 12) & 15}, pc, #{imm}")

    def relocate(self, rtype: int, place: bytearray, offset: int, s: int, a: int, p: int) -> None:
        # Xen's perform_rel(): val is S only; the addend comes separately.
        if rtype == R_ARM_NONE:
            return
        if rtype not in _TYPES:
            raise LoadError(f"Unhandled relocation #{rtype:x}")
        if offset + 4 > len(place):
            # Xen does not check this on arm32 and would write out of bounds.
            raise LoadError("relocation offset is past {section} section (Xen arm32 does not check)")
        val = s & 0xFFFFFFFF
        insn = _U32.unpack_from(place, offset)[0]
        if rtype == R_ARM_ABS32:
            insn = (val + a) & 0xFFFFFFFF
        elif rtype == R_ARM_REL32:
            insn = (val + a - p) & 0xFFFFFFFF
        elif rtype in _MOVES:
            if a:
                insn &= ~_MOVE_IMM  # Xen clears the addend and does not add it
            val = (val >> 16) & 0xFFFF if rtype == R_ARM_MOVT_ABS else val & 0xFFFF
            insn |= (val & 0xFFF) | ((val >> 12) << 16)
        else:  # CALL / JUMP24
            if a:
                insn &= ~_BRANCH_IMM
            val = (val + a - p) & 0xFFFFFFFF
            if not -_RANGE <= sign_extend(val, 32) < _RANGE:
                raise LoadError("Overflow in relocation {index} in {rela} for {section}")
            insn |= (val >> 2) & 0x00FFFFFE  # Xen's mask clears bit 0 of imm24
        _U32.pack_into(place, offset, insn & 0xFFFFFFFF)

    def branch_landing(self, rtype: int, place: bytes, s: int, a: int, p: int) -> tuple[int, int] | None:
        # perform_rel() clears bit 0 of the word offset (`val &= 0x00FFFFFE`):
        # a B/BL an odd number of words away lands one instruction short.
        if rtype not in _BRANCHES:
            return None
        imm = _U32.unpack(place)[0] & 0xFFFFFF
        pc = _TYPES[rtype].bias  # PC reads as the branch plus 8
        return (s + a + pc) & 0xFFFFFFFF, (p + pc + (sign_extend(imm, 24) << 2)) & 0xFFFFFFFF


ARCH: Final = Arm()

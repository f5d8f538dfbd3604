"""x86-64: RELA only; Xen applies R_X86_64_NONE, 64, PC32 and PLT32.

Source: ``arch_livepatch_perform_rela()`` in ``xen/arch/x86/livepatch.c``.
Payloads are built ``-fpic`` with hidden visibility, so code takes a
function's address with ``lea foo(%rip)`` (PC32, A = -4), calls it with
``call foo`` (PLT32, A = -4) and data stores it with R_X86_64_64 (A = 0).
"""

from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set
from types import MappingProxyType
from typing import Any, Final

from lp_rewrite.arch import GOT_HINT, AddressSite, Arch, Classification, Kind, LoadError, RelocType
from lp_rewrite.arch.x86_insn import CALL_JMP_OPCODES, LEA_FORM, MEMORY_FORM, Form, decode_rel32, fast_rel32
from lp_rewrite.elf import consts as C
from lp_rewrite.elf.file import ElfFile, Section
from lp_rewrite.errors import InputError
from lp_rewrite.livepatch_abi import LIVEPATCH_OPAQUE_SIZE

R_X86_64_NONE: Final = 0
R_X86_64_64: Final = 1
R_X86_64_PC32: Final = 2
R_X86_64_PLT32: Final = 4

_TYPES: Final = {
    t.code: t
    for t in (
        RelocType(R_X86_64_NONE, "R_X86_64_NONE", Kind.NONE, 0),
        RelocType(R_X86_64_64, "R_X86_64_64", Kind.POINTER, 8),
        # An offset in data; in code, the instruction that holds it says (X86_64.classify).
        RelocType(R_X86_64_PC32, "R_X86_64_PC32", Kind.OFFSET, 4, 1 << 31),
        RelocType(R_X86_64_PLT32, "R_X86_64_PLT32", Kind.OFFSET, 4, 1 << 31),
    )
}
_REL32: Final = frozenset([R_X86_64_PC32, R_X86_64_PLT32])
_FORM_KIND: Final = {Form.CALL: Kind.CALL, Form.JUMP: Kind.CALL, Form.LEA: Kind.ADDRESS, Form.MEMORY: Kind.MEMORY}
_NARROW: Final = "a narrow absolute address: build with -fpic"
_PC: Final = "a narrow or 64-bit PC-relative field Xen does not apply"
_ABS32: Final = "a 32-bit absolute address (-fno-pic / -mcmodel=kernel): build with -fpic"

_S32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")
# lea with a RIP-relative ModRM (mod=00, rm=101): 8D 05/0D/.../3D, disp32 follows.
# No lookahead needed: a match cannot overlap the next, since a ModRM byte of
# this form is never 0x8D.
_LEA_RIP: Final = re.compile(rb"\x8d[\x05\x0d\x15\x1d\x25\x2d\x35\x3d]")
# A rel32 that ends its instruction, classified once per type: (call or jump, lea, other access).
_FAST_FORMS: Final = {
    code: tuple(Classification(_TYPES[code], kind, 4) for kind in (Kind.CALL, Kind.ADDRESS, Kind.MEMORY))
    for code in _REL32
}


class X86_64(Arch):
    name = "x86_64"
    machine = C.EM_X86_64
    elfclass = C.ELFCLASS64
    rel_section_types = frozenset([C.SHT_RELA])
    address_pattern = _LEA_RIP  # what address_computations() searches for
    types = _TYPES
    livepatch_range = 1 << 31  # jmp rel32
    pointer_type = R_X86_64_64
    patch_insn_size = 5  # jmp rel32; +4 when the original starts with ENDBR64
    ld_r_keeps_undefined_locals = True
    other_types: Mapping[int, tuple[str, str]] = MappingProxyType(
        {
            3: ("R_X86_64_GOT32", GOT_HINT),
            9: ("R_X86_64_GOTPCREL", GOT_HINT),
            10: ("R_X86_64_32", _ABS32),
            11: ("R_X86_64_32S", _ABS32),
            12: ("R_X86_64_16", _NARROW),
            13: ("R_X86_64_PC16", _PC),
            14: ("R_X86_64_8", _NARROW),
            15: ("R_X86_64_PC8", _PC),
            24: ("R_X86_64_PC64", _PC),
            41: ("R_X86_64_GOTPCRELX", GOT_HINT),
            42: ("R_X86_64_REX_GOTPCRELX", GOT_HINT),
        }
    )

    rel_type_refusal = "SHT_REL relocation unsupported"
    landing_pad = bytes.fromhex("f30f1efa")  # endbr64
    sealed_landing_pad = bytes.fromhex("660f1f01")  # gen_endbr64_poison(): nopw (%rcx)

    def verify_elf(self, ident: bytes, e_flags: int) -> str | None:
        if ident[C.EI_CLASS] != C.ELFCLASS64 or ident[C.EI_DATA] != C.ELFDATA2LSB:
            return "Unsupported ELF Machine type"
        return None

    hypervisor_base = 0xFFFF_82D0_4020_0000

    def verify_func(self, new_addr: int, new_size: int, old_size: int) -> str | None:
        # The ENDBR64 allowance (old_size >= 9 after one) is not modelled.
        if not new_addr and (new_size > LIVEPATCH_OPAQUE_SIZE or old_size < new_size):
            return f"NOP patch of {new_size} bytes: arch_livepatch_verify_func() fails (no log line)"
        if new_addr and old_size < self.patch_insn_size:
            return f"old_size {old_size} < {self.patch_insn_size}: arch_livepatch_verify_func() fails (no log line)"
        return None

    def check_header(self, elf: ElfFile) -> None:
        if elf.elfclass != C.ELFCLASS64:
            raise InputError("x86-64 payloads must be ELFCLASS64")

    def classify(self, rtype: int, section: Section, data: memoryview, offset: int) -> Classification | None:
        """A rel32 field in code is relative to the end of its instruction, whose form says what it does
        (call, jmp/jcc, lea, any other memory operand): decoded (:mod:`lp_rewrite.arch.x86_insn`)."""
        plain = self._plain.get(rtype)
        if plain is None or rtype not in _REL32 or not section.executable:
            return plain
        if offset and data[offset - 1] in CALL_JMP_OPCODES:  # call/jmp rel32: the decoder's first test, inline
            return _FAST_FORMS[rtype][0]
        return self._in_code(rtype, plain, section, data, offset)

    def direct_calls(
        self,
        data: bytes | mmap.mmap,
        rows: Iterable[int],
        rtypes: Sequence[int],
        starts: Sequence[int],
        offsets: Sequence[int],
    ) -> list[bool]:
        """A call/jmp rel32 in code: the decoder's first test, as :meth:`classify` applies it, for every field."""
        rel32, opcodes = _REL32, CALL_JMP_OPCODES  # locals in the loop (read here: tests replace the opcodes)
        return [
            (start := starts[r]) >= 0
            and (offset := offsets[r]) > 0
            and rtypes[r] in rel32
            and data[start + offset - 1] in opcodes
            for r in rows
        ]

    def _in_code(
        self, rtype: int, plain: Classification, section: Section, data: memoryview, offset: int
    ) -> Classification:
        """A rel32 field in code, classified by the instruction that holds it."""
        form = fast_rel32(data, offset)  # the common forms, without formatting a location
        if form is not None:  # the field ends its instruction: one shared value per type and form
            calls, addresses, accesses = _FAST_FORMS[rtype]
            return addresses if form is LEA_FORM else accesses if form is MEMORY_FORM else calls
        try:
            site = decode_rel32(data, offset, f"{section.name}+{offset:#x}")
        except InputError as exc:
            # Undecodable: assume the worst (an address after a bare rel32), and say so.
            return Classification(plain.type, Kind.ADDRESS, 4, str(exc))
        return Classification(plain.type, _FORM_KIND[site.form], site.bias(offset))

    def address_computations(
        self, data: memoryview, targets: Set[int], in_data: Callable[[int], bool], decode_from: Callable[[int], int]
    ) -> Iterator[AddressSite]:
        """``lea disp(%rip)``: candidates by byte pattern, confirmed with capstone (a 0x8D byte
        can sit inside another instruction), which is imported only when there is one."""
        candidates = []
        for m in _LEA_RIP.finditer(data):
            field = m.start() + 2
            if field + 4 > len(data):
                continue
            target = field + 4 + _S32.unpack_from(data, field)[0]
            if target in targets:
                candidates.append((field, target))
        if not candidates:
            return
        import capstone

        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        md.detail = True
        md.skipdata = True
        for field, target in candidates:
            start = decode_from(field)
            insn: Any
            for insn in md.disasm(bytes(data[start:]), start):
                if insn.address > field:
                    break
                if insn.address + insn.size <= field:
                    continue
                if insn.mnemonic == "lea" and insn.disp_offset == field - insn.address:
                    yield AddressSite(insn.address, field, target, f"lea {insn.op_str}")
                break

    def relocate(self, rtype: int, place: bytearray, offset: int, s: int, a: int, p: int) -> None:
        val = (s + a) & 0xFFFFFFFFFFFFFFFF
        if rtype == R_X86_64_NONE:
            return
        if rtype == R_X86_64_64:
            if offset + 8 > len(place):
                raise LoadError("Relative relocation offset is past {section} section")
            _U64.pack_into(place, offset, val)
            return
        if rtype in (R_X86_64_PC32, R_X86_64_PLT32):
            if offset + 4 > len(place):
                raise LoadError("Relative relocation offset is past {section} section")
            rel = (val - p) & 0xFFFFFFFFFFFFFFFF
            signed = rel - (1 << 64) if rel >> 63 else rel
            if not -(1 << 31) <= signed < (1 << 31):
                raise LoadError("Overflow in relocation {index} in {rela} for {section}")
            _S32.pack_into(place, offset, signed)
            return
        raise LoadError(f"Unhandled relocation {rtype}")


ARCH: Final = X86_64()

"""x86-64: RELA only; Xen applies R_X86_64_NONE, 64, PC32 and PLT32.

Source: ``arch_livepatch_perform_rela()`` in ``xen/arch/x86/livepatch.c``.
Payloads are built ``-fpic`` with hidden visibility, so code takes a
function's address with ``lea foo(%rip)`` (PC32, A = -4), calls it with
``call foo`` (PLT32, A = -4) and data stores it with R_X86_64_64 (A = 0).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator, Mapping, Set
from types import MappingProxyType
from typing import Any, Final

from lp_rewrite.arch import AddressSite, Arch, LoadError, RelocType, Use
from lp_rewrite.arch.x86_insn import decode_rel32, fast_rel32
from lp_rewrite.elf import consts as C
from lp_rewrite.elf.file import ElfFile, Section
from lp_rewrite.errors import InputError
from lp_rewrite.payload import LIVEPATCH_OPAQUE_SIZE

R_X86_64_NONE: Final = 0
R_X86_64_64: Final = 1
R_X86_64_PC32: Final = 2
R_X86_64_PLT32: Final = 4

_TYPES: Final = {
    t.code: t
    for t in (
        RelocType(R_X86_64_NONE, "R_X86_64_NONE", Use.NONE, 0),
        RelocType(R_X86_64_64, "R_X86_64_64", Use.DATA, 8),
        RelocType(R_X86_64_PC32, "R_X86_64_PC32", Use.CODE_REF, 4, 1 << 31),
        RelocType(R_X86_64_PLT32, "R_X86_64_PLT32", Use.CODE_REF, 4, 1 << 31),
    )
}

_S32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")
# lea with a RIP-relative ModRM (mod=00, rm=101): 8D 05/0D/.../3D, disp32 follows.
_LEA_RIP: Final = re.compile(rb"(?=\x8d[\x05\x0d\x15\x1d\x25\x2d\x35\x3d])")


class X86_64(Arch):
    name = "x86_64"
    machine = C.EM_X86_64
    elfclass = C.ELFCLASS64
    rel_section_types = frozenset([C.SHT_RELA])
    types = _TYPES
    livepatch_range = 1 << 31  # jmp rel32
    pointer_type = R_X86_64_64
    patch_insn_size = 5  # jmp rel32; +4 when the original starts with ENDBR64
    ld_r_keeps_undefined_locals = True
    other_type_names: Mapping[int, str] = MappingProxyType(
        {
            3: "R_X86_64_GOT32",
            9: "R_X86_64_GOTPCREL",
            10: "R_X86_64_32",
            11: "R_X86_64_32S",
            12: "R_X86_64_16",
            13: "R_X86_64_PC16",
            14: "R_X86_64_8",
            15: "R_X86_64_PC8",
            24: "R_X86_64_PC64",
            41: "R_X86_64_GOTPCRELX",
            42: "R_X86_64_REX_GOTPCRELX",
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

    def target_bias(self, rtype: int, section: Section, data: memoryview, offset: int) -> int:
        if rtype in (R_X86_64_PC32, R_X86_64_PLT32) and section.executable:
            site = fast_rel32(data, offset)  # the common forms, without formatting a location
            if site is None:
                site = decode_rel32(data, offset, f"{section.name}+{offset:#x}")
            return site.bias(offset)
        return 0

    def address_computations(
        self, data: bytes, targets: Set[int], in_data: Callable[[int], bool], decode_from: Callable[[int], int]
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
            for insn in md.disasm(data[start:], start):
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

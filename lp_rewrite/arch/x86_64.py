"""x86-64: RELA only; Xen applies R_X86_64_NONE, 64, PC32 and PLT32.

Source: ``arch_livepatch_perform_rela()`` in ``xen/arch/x86/livepatch.c``.
Payloads are built ``-fpic`` with hidden visibility, so code takes a
function's address with ``lea foo(%rip)`` (PC32, A = -4), calls it with
``call foo`` (PLT32, A = -4) and data stores it with R_X86_64_64 (A = 0).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from lp_rewrite.arch import Arch, LoadError, RelocType, Use
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

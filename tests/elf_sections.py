"""Typed pyelftools lookups for the tests: a missing or mistyped section fails the test here.

Also an independent model of where Xen's move_payload() puts read-only sections.
"""

from __future__ import annotations

import io

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import Section, SymbolTableSection


def elf_section(elf: ELFFile, name: str) -> Section:
    sec = elf.get_section_by_name(name)
    assert sec is not None, f"no {name}"
    return sec


def elf_symtab(elf: ELFFile) -> SymbolTableSection:
    sec = elf_section(elf, ".symtab")
    assert isinstance(sec, SymbolTableSection), "a .symtab that is not a symbol table"
    return sec


def elf_relocs(elf: ELFFile, name: str) -> RelocationSection:
    sec = elf_section(elf, name)
    assert isinstance(sec, RelocationSection), name
    return sec


def ro_offsets(data: bytes) -> dict[str, int]:
    """Independent placement (pyelftools): each read-only SHF_ALLOC section's offset in Xen's RO region.

    move_payload() puts a section at ROUNDUP(running size, sh_addralign) of its
    region (RO: neither WRITE nor EXECINSTR); ROUNDUP(x, 0) is 0.
    """
    size, out = 0, {}
    for sec in ELFFile(io.BytesIO(data)).iter_sections():
        flags = sec["sh_flags"]
        if not flags & 0x2 or flags & 0x1 or flags & 0x4:  # SHF_ALLOC, not WRITE, not EXECINSTR
            continue
        align = sec["sh_addralign"]
        size = (size + align - 1) & ~(align - 1) if align else 0
        out[sec.name] = size
        size += sec["sh_size"]
    return out

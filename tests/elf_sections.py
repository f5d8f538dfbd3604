"""Typed pyelftools lookups for the tests: a missing or mistyped section fails the test here."""

from __future__ import annotations

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

"""An independent statement of the retargeting rule, for checking the tool.

It shares no code with lp_rewrite: pyelftools parses, capstone decodes every
x86 instruction (no fast path), and the Arm implicit addends are decoded here
from the ELF for the Arm Architecture spec. If the tool and this oracle agree
on every fixture, both would have to be wrong in the same way to be wrong.
"""

from __future__ import annotations

import fnmatch
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import capstone
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import Section, SymbolTableIndexSection, SymbolTableSection

# The rule of issue #2: references in these sections keep the new code.
EXEMPT = (
    ".livepatch.funcs",
    # Hook tables too: Xen reads them from the payload and calls the hooks
    # only while the payload is loaded, and a load hook runs before the patch
    # is applied, when the original is still the old code. A hook that is
    # also a replacement must run the payload's copy.
    ".livepatch.hooks.*",
    ".altinstructions",
    ".alt_call_sites",
    ".ex_table",
    ".bug_frames.*",
    ".eh_frame",
    ".ARM.exidx*",
    ".ARM.extab*",
)
SHF_ALLOC, SHF_EXECINSTR = 0x2, 0x4
X86_PC32, X86_PLT32 = 2, 4
ARM_ABS32, ARM_REL32, ARM_CALL, ARM_JUMP24, ARM_MOVW, ARM_MOVT = 2, 3, 28, 29, 43, 44
NONE_TYPES = {"EM_X86_64": {0}, "EM_AARCH64": {0, 256}, "EM_ARM": {0}}


def _sext(v: int, bits: int) -> int:
    return v - (1 << bits) if v & (1 << (bits - 1)) else v


def arm_addend(rtype: int, word: int) -> int:
    if rtype in (ARM_ABS32, ARM_REL32):
        return _sext(word, 32)
    if rtype in (ARM_CALL, ARM_JUMP24):
        return _sext(word & 0xFFFFFF, 24) * 4
    if rtype in (ARM_MOVW, ARM_MOVT):
        return _sext(((word >> 4) & 0xF000) | (word & 0xFFF), 16)
    return 0


class X86Ends:
    """Instruction end for any offset, from a capstone sweep of the section."""

    def __init__(self) -> None:
        self.md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self.cache: dict[int, list[tuple[int, int]]] = {}

    def end(self, index: int, data: bytes, offset: int) -> int:
        if index not in self.cache:
            self.cache[index] = [(i.address, i.address + i.size) for i in self.md.disasm(data, 0)]
        for start, stop in self.cache[index]:
            if start <= offset < stop:
                return stop
        raise AssertionError(f"capstone found no instruction at {offset:#x}")


@dataclass(frozen=True)
class Reloc:
    section: str  # relocated section
    section_index: int
    reloc_section_index: int
    index: int
    offset: int
    rtype: int
    symbol: int
    addend: int  # explicit or implicit
    bias: int
    resolved: tuple[Any, ...]  # ("def", section name, value+A) / ("undef", name, A) / ("abs", value+A)


class Payload:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.blob = path.read_bytes()
        self.elf = ELFFile(open(path, "rb"))  # noqa: SIM115 - kept open for the object's lifetime
        self.machine = self.elf["e_machine"]
        self._symtab = self.elf.get_section_by_name(".symtab")
        self.x86 = X86Ends()

    @property
    def symtab(self) -> SymbolTableSection:
        assert isinstance(self._symtab, SymbolTableSection), f"{self.path}: no .symtab"
        return self._symtab

    def _section(self, name: str) -> Section:
        sec = self.elf.get_section_by_name(name)
        assert sec is not None, f"{self.path}: no {name}"
        return sec

    def _xindex(self) -> SymbolTableIndexSection:
        sec = next(s for s in self.elf.iter_sections() if isinstance(s, SymbolTableIndexSection))
        return sec

    def section_bytes(self, index: int) -> bytes:
        return bytes(self.elf.get_section(index).data())

    def relocations(self) -> list[Reloc]:
        out = []
        for sec_index, sec in enumerate(self.elf.iter_sections()):
            if not isinstance(sec, RelocationSection) or sec["sh_info"] == 0:
                continue
            target = self.elf.get_section(sec["sh_info"])
            data = self.section_bytes(sec["sh_info"]) if target["sh_type"] != "SHT_NOBITS" else b""
            for i, r in enumerate(sec.iter_relocations()):
                rtype, symi, off = r["r_info_type"], r["r_info_sym"], r["r_offset"]
                if sec.is_RELA():
                    a = r["r_addend"]
                elif self.machine == "EM_ARM" and target["sh_flags"] & SHF_ALLOC:
                    a = arm_addend(rtype, struct.unpack_from("<I", data, off)[0])
                else:
                    a = 0
                bias = 0
                if target["sh_flags"] & SHF_ALLOC:
                    if (
                        self.machine == "EM_X86_64"
                        and rtype in (X86_PC32, X86_PLT32)
                        and target["sh_flags"] & SHF_EXECINSTR
                    ):
                        bias = self.x86.end(sec["sh_info"], data, off) - off
                    elif self.machine == "EM_ARM" and rtype in (ARM_CALL, ARM_JUMP24):
                        bias = 8
                sym = self.symtab.get_symbol(symi)
                shndx = sym["st_shndx"]
                if shndx in ("SHN_XINDEX", 0xFFFF):  # the real index is in SHT_SYMTAB_SHNDX, entry for entry
                    shndx = self._xindex().get_section_index(symi)
                if shndx == "SHN_UNDEF":
                    resolved: tuple[Any, ...] = ("undef", sym.name, a)
                elif shndx == "SHN_ABS":
                    resolved = ("abs", sym["st_value"] + a)
                else:
                    resolved = ("def", self.elf.get_section(shndx).name, sym["st_value"] + a)
                out.append(Reloc(target.name, sec["sh_info"], sec_index, i, off, rtype, symi, a, bias, resolved))
        return out

    def replacements(self) -> dict[tuple[str, int], str]:
        """(section name, entry offset) -> original name, from .livepatch.funcs (none without it: hooks only)."""
        if self.elf.get_section_by_name(".livepatch.funcs") is None:
            return {}
        funcs = self._section(".livepatch.funcs")
        ptr = 8 if self.elf.elfclass == 64 else 4
        data = bytes(funcs.data())
        version = data[3 * ptr + 8]
        size = {(2, 8): 104, (2, 4): 92, (1, 8): 64, (1, 4): 52}[(version, ptr)]
        fields = {}
        for r in self.relocations():
            if r.section == ".livepatch.funcs":
                fields[r.offset] = r
        out = {}
        for base in range(0, len(data), size):
            new = fields.get(base + ptr)
            if new is None:
                continue
            kind, secname, entry = new.resolved
            assert kind == "def"
            old = fields.get(base + 2 * ptr)
            if old is not None and old.resolved[0] == "undef":
                name = old.resolved[1]
            else:
                ref = fields[base]
                _k, nsec, noff = ref.resolved
                raw = bytes(self._section(nsec).data())
                name = raw[noff : raw.index(b"\0", noff)].decode()
            out[(secname, entry)] = name
        return out

    def expected_retargets(self) -> set[tuple[str, int, int]]:
        """(section, offset, type) of every relocation the rule says to move."""
        entries = self.replacements()
        out = set()
        for r in self.relocations():
            target = self.elf.get_section(r.section_index)
            if not target["sh_flags"] & SHF_ALLOC:
                continue
            if any(fnmatch.fnmatchcase(r.section, p) for p in EXEMPT):
                continue
            if r.rtype in NONE_TYPES[self.machine] or r.resolved[0] != "def":
                continue
            _k, secname, value = r.resolved
            if (secname, value + r.bias) in entries:
                out.add((r.section, r.offset, r.rtype))
        return out

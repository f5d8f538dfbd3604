"""Xen's runtime symbol table, as the hypervisor resolves payload symbols.

Xen embeds a table built by ``xen/tools/symbols.c`` from ``nm -pa`` of
``xen-syms``: global symbols under their plain name, local ones as
``<FILE symbol>#<name>`` (the FILE symbol being the source path relative to
``xen/`` under CONFIG_ENFORCE_UNIQUE_SYMBOLS). A payload's undefined symbol
resolves by exact ``strcmp`` against that table. This module rebuilds the
same name -> address map from a ``xen-syms`` file (read with pyelftools:
this is not a hot path), or makes a synthetic one that gives every asked-for
name a distinct address.

Left out, as symbols.c leaves them out: undefined symbols, section and FILE
symbols, Arm mapping symbols and other ``$`` names, absolute symbols (other
than ``__gp``), and names containing ``_compiled.``.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from lp_rewrite.elf import consts as C
from lp_rewrite.errors import InputError
from lp_rewrite.inputs import open_binary

# How far back function_containing() looks for a function that spans an address.
_LONGEST_FUNCTION = 1 << 20


def scoped_names(entries: Iterable[tuple[str, bool, bool]]) -> Iterator[str | None]:
    """The runtime-table name of each ``(name, is_file, is_local)``, in symbol-table order.

    A local symbol is ``FILE#name``, scoped by the nearest preceding FILE
    symbol (an empty FILE name ends the scope), as ``xen/tools/symbols.c``
    names the hypervisor's statics and prelink's ``lookup_local_symbol()``
    scopes a payload's; other symbols keep their name. A FILE symbol yields
    None. Entries that are neither FILE symbols nor wanted may be left out:
    only FILE symbols move the scope.
    """
    scope = ""
    for name, is_file, local in entries:
        if is_file:
            scope = name
            yield None
        else:
            yield f"{scope}#{name}" if local and scope else name


@dataclass(frozen=True)
class XenSymbol:
    name: str  # as Xen's runtime table spells it
    address: int
    size: int
    is_function: bool
    section: str  # output section in xen-syms ("" for synthetic symbols)


@dataclass
class XenSymbols:
    """Name -> symbol, with the names that occur more than once."""

    source: str
    symbols: dict[str, XenSymbol] = field(default_factory=dict)
    ambiguous: set[str] = field(default_factory=set)
    candidates: dict[str, list[XenSymbol]] = field(default_factory=dict)  # every symbol of an ambiguous name
    synthetic: bool = False
    elf_path: Path | None = None
    # The image's SHF_ALLOC sections, (name, start, end), by address: where an address lies.
    sections: list[tuple[str, int, int]] = field(default_factory=list)

    def lookup(self, name: str) -> XenSymbol | None:
        """What ``symbols_lookup_by_name()`` returns (None for "Unknown symbol")."""
        if not name:
            return None
        return self.symbols.get(name)

    def matches(self, name: str) -> list[XenSymbol]:
        """Every symbol ``name`` stands for, one per distinct address, lowest first ([] when unknown).

        One entry for a unique name (or for an alias at one address); several
        for an ambiguous name, where Xen's lookup returns one of them.
        """
        found = self.lookup(name)
        if found is None:
            return []
        out: dict[int, XenSymbol] = {}
        for c in self.candidates.get(name, [found]):
            out.setdefault(c.address, c)
        return [out[a] for a in sorted(out)]

    def resolving(self, names: Iterable[str]) -> tuple[XenSymbols, frozenset[str]]:
        """A table for ``names`` only, and the names it resolves as this image does.

        A name this table has once keeps its symbol; one it lacks, or has
        several times (Xen's lookup picks one), gets a stand-in address past
        the real ones, so that a load can go on without judging through it.
        """
        table = XenSymbols(source=self.source, elf_path=self.elf_path)
        real: set[str] = set()
        stand_ins = []
        for name in sorted(set(names)):
            sym = self.lookup(name)
            if sym is None or not sym.address or name in self.ambiguous:
                stand_ins.append(name)
            else:
                table._add(sym)
                real.add(name)
        top = table.free_page()
        for i, name in enumerate(stand_ins):
            table._add(XenSymbol(name, top + 16 * (i + 1), 16, True, ""))
        return table, frozenset(real)

    def free_page(self, gap: int = 0) -> int:
        """The first page boundary at least ``gap`` bytes past the highest symbol (those at 0 left out)."""
        from lp_rewrite.loader.placement import PAGE_SIZE  # here: the loader package imports this module

        top = max((s.address + max(s.size, 1) for s in self.symbols.values() if s.address), default=0)
        return (top + gap + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)

    def section_at(self, address: int) -> str | None:
        """The name of the loaded section of the image that holds ``address`` (None when none does)."""
        for name, start, end in self.sections:
            if start <= address < end:
                return name
        return None

    def function_containing(self, address: int) -> XenSymbol | None:
        """The function whose bytes hold ``address`` (for messages; None when none does)."""
        funcs = self._functions
        k = bisect.bisect_right(funcs[0], address) - 1
        while k >= 0:
            sym = funcs[1][k]
            if sym.address <= address < sym.address + max(sym.size, 1):
                return sym
            if address - sym.address > _LONGEST_FUNCTION:
                return None
            k -= 1
        return None

    @cached_property
    def _functions(self) -> tuple[list[int], list[XenSymbol]]:
        # An ambiguous name's first symbol is in both symbols and candidates: count it once.
        unique = (s for name, s in self.symbols.items() if name not in self.candidates)
        every = (s for group in self.candidates.values() for s in group)
        syms = sorted((s for s in (*unique, *every) if s.is_function), key=lambda s: (s.address, s.name))
        return [s.address for s in syms], syms

    def _add(self, sym: XenSymbol) -> None:
        if sym.name in self.symbols:
            self.ambiguous.add(sym.name)
            self.candidates.setdefault(sym.name, [self.symbols[sym.name]]).append(sym)
            return
        self.symbols[sym.name] = sym

    @classmethod
    def from_xen_syms(cls, path: str | os.PathLike[str]) -> XenSymbols:
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile
        from elftools.elf.sections import SymbolTableSection

        p = Path(path)
        table = cls(source=str(p), elf_path=p)
        try:
            with open_binary(p) as f:
                elf = ELFFile(f)
                symtab = elf.get_section_by_name(".symtab")
                if not isinstance(symtab, SymbolTableSection):
                    raise InputError(f"{p}: no .symtab (a stripped image? use the unstripped xen-syms)")
                names = {i: s.name for i, s in enumerate(elf.iter_sections())}
                table.sections = sorted(
                    (
                        (s.name, s["sh_addr"], s["sh_addr"] + s["sh_size"])
                        for s in elf.iter_sections()
                        if s["sh_flags"] & C.SHF_ALLOC and s["sh_size"]
                    ),
                    key=lambda t: t[1],
                )
                syms = list(symtab.iter_symbols())
                scoped = scoped_names(
                    (s.name, s["st_info"]["type"] == "STT_FILE", s["st_info"]["bind"] == "STB_LOCAL") for s in syms
                )
                for sym, name in zip(syms, scoped, strict=True):
                    kind = sym["st_info"]["type"]
                    shndx = sym["st_shndx"]
                    raw = sym.name
                    if name is None or not raw or kind == "STT_SECTION" or shndx == "SHN_UNDEF" or raw.startswith("$"):
                        continue
                    if "_compiled." in name or (shndx == "SHN_ABS" and raw != "__gp"):
                        continue
                    section = names.get(shndx, "") if isinstance(shndx, int) else ""
                    table._add(XenSymbol(name, sym["st_value"], sym["st_size"], kind == "STT_FUNC", section))
        except OSError as exc:
            raise InputError(f"{p}: {exc.strerror or exc}") from None
        except ELFError as exc:
            raise InputError(f"{p}: not a readable ELF image ({exc})") from None
        if not table.symbols:
            raise InputError(f"{p}: no symbols found")
        return table

    @classmethod
    def synthetic_for(cls, names: Iterable[str], base: int = 0xFFFF_82D0_4000_0000, stride: int = 0x1000) -> XenSymbols:
        """A stand-in table: each name at its own address, ``stride`` apart."""
        table = cls(source="<synthetic>", synthetic=True)
        for i, name in enumerate(sorted(set(names))):
            table._add(XenSymbol(name, base + i * stride, stride, True, ""))
        return table

    def read(self, address: int, size: int) -> bytes | None:
        """Bytes of the image at a virtual address (None when unknown)."""
        if self.elf_path is None:
            return None
        from elftools.elf.elffile import ELFFile

        with open_binary(self.elf_path) as f:
            elf = ELFFile(f)
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= address < seg["p_vaddr"] + seg["p_filesz"]:
                    start = address - seg["p_vaddr"]
                    return bytes(seg.data()[start : start + size])
        return None

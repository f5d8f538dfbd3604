"""Symbol resolution: ``livepatch_elf_resolve_symbols()`` in livepatch_elf.c.

For every symbol but the first, by its raw ``st_shndx``:

* SHN_COMMON: refused ("Unexpected common symbol").
* SHN_UNDEF: looked up by exact name in the hypervisor's symbol table; a
  name that is not there, or is there with address 0, is refused ("Unknown
  symbol"). Binding, type and visibility play no part. (Xen then searches the
  new symbols of already loaded payloads; no other payload is loaded here.)
* SHN_ABS: kept as it is.
* any other reserved index (SHN_XINDEX included: Xen does not follow it) or
  one past the section table: refused ("Out of bounds symbol section").
* a section that is not loaded: the symbol is *ignored* (a relocation
  against it is refused later); otherwise ``st_value += section address``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lp_rewrite.elf import consts as C
from lp_rewrite.elf.file import ElfFile
from lp_rewrite.elf.layout import column
from lp_rewrite.loader.placement import Layout
from lp_rewrite.loader.refusal import Refused
from lp_rewrite.xensyms import XenSymbols


@dataclass(frozen=True)
class Resolved:
    """Every symbol's value after resolution (index 0 included, unchanged)."""

    values: list[int]
    ignored: frozenset[int]


def raw_shndx(elf: ElfFile) -> Sequence[int]:
    """``st_shndx`` as stored (the reader resolves SHN_XINDEX; Xen does not)."""
    lay = elf.layout
    return column(elf.section_data(elf.symtab_index), lay.sym_shndx, lay.sym.size)


def resolve_symbols(elf: ElfFile, layout: Layout, table: XenSymbols, name: str) -> Resolved:
    syms = elf.symbols
    mask = (1 << (8 * elf.layout.ptr_size)) - 1
    values = list(syms.value)
    ignored: set[int] = set()
    shnum = len(elf.sections)
    for i, idx in enumerate(raw_shndx(elf)):
        if i == 0:
            continue
        if idx == C.SHN_COMMON:
            raise Refused(name, f"Unexpected common symbol: {syms.name(i)}")
        if idx == C.SHN_UNDEF:
            found = table.lookup(syms.name(i))
            if found is None or not found.address:
                raise Refused(name, f"Unknown symbol: {syms.name(i)}")
            values[i] = found.address & mask
        elif idx == C.SHN_ABS:
            continue
        elif idx >= C.SHN_LORESERVE or idx >= shnum:
            raise Refused(name, f"Out of bounds symbol section {idx:#x}")
        elif idx not in layout.sections:
            ignored.add(i)
        else:
            values[i] = (values[i] + layout.sections[idx].address) & mask
    return Resolved(values, frozenset(ignored))

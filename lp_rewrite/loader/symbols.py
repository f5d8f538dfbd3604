"""The hypervisor symbol table a load resolves against, and where the payload goes.

With ``--xen-syms`` the table is the real one (:meth:`XenSymbols.from_xen_syms`:
globals by name, statics as ``path/file.c#name``). Without it, a synthetic
table gives every name the payloads could ask for a distinct address: their
undefined symbols and the ``name`` strings of their ``.livepatch.funcs``
entries (Xen looks those up when ``old_addr`` is 0). Loading two payloads
against one table built from both gives the same name the same address.

Addresses are per target, in the places Xen uses (x86-64: the hypervisor's
``0xffff82d040000000`` area; Arm: low addresses), and the payload goes after
the table's last symbol, within branch range of every hypervisor function.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from lp_rewrite.elf import consts as C
from lp_rewrite.identify import field_relocations
from lp_rewrite.livepatch_abi import FUNCS_SECTION, parse_funcs
from lp_rewrite.read import Payload
from lp_rewrite.xensyms import XenSymbols

# Synthetic addresses are 16-aligned (what any function or datum may need:
# Arm branches, AArch64 LDST128_ABS_LO12_NC, which Xen truncates silently)
# but otherwise irregular: a stride that is no power of two and an offset
# inside the page, so that their low 12 bits (AArch64 *_LO12), 16-bit halves
# (Arm MOVW/MOVT) and pages (ADRP) differ from the payload's own addresses.
# Each variant uses another offset, for a second placement when one still
# coincides.
SYNTHETIC_STRIDE: Final = 0x11040
SYNTHETIC_OFFSETS: Final = (0x9A0, 0x5C0, 0xE30, 0x2B0)
# Gap between the hypervisor's last symbol and the payload.
_GAP: Final = 1 << 20


def wanted_names(payload: Payload) -> set[str]:
    """Every name Xen would look up for this payload."""
    syms = payload.elf.symbols
    names = {
        syms.name(i)
        for i in range(1, syms.count)
        if syms.shndx[i] == C.SHN_UNDEF and syms.type(i) not in (C.STT_SECTION, C.STT_FILE)
    }
    names.update(_funcs_names(payload))
    names.discard("")
    return names


def _funcs_names(payload: Payload) -> Iterable[str]:
    """The ``name`` strings of .livepatch.funcs, read through their relocations.

    Leniently: every entry's name whose relocation and string can be read,
    whatever else is wrong with the table (Xen looks names up entry by entry).
    """
    elf = payload.elf
    funcs = elf.section_by_name(FUNCS_SECTION)
    if funcs is None or not funcs.sh_size or not funcs.has_file_data:
        return []
    layout = parse_funcs(elf.section_data(funcs.index), elf.layout.ptr_size).layout
    if layout is None:
        return []
    syms = elf.symbols
    out = []
    for rel in field_relocations(payload, funcs, strict=False):
        if rel.offset % layout.entry_size != layout.name or not syms.is_defined_in_section(rel.symbol):
            continue
        text = bytes(elf.section_data(syms.shndx[rel.symbol]))
        start = syms.value[rel.symbol] + rel.addend
        end = text.find(b"\0", start) if 0 <= start < len(text) else -1
        if end > start:
            out.append(text[start:end].decode("utf-8", "surrogateescape"))
    return out


def synthetic_table(payloads: Iterable[Payload], variant: int = 0) -> XenSymbols:
    """One synthetic table for all these payloads (they share one target)."""
    names: set[str] = set()
    where = 0
    for p in payloads:
        names |= wanted_names(p)
        where = p.arch.hypervisor_base  # Xen's link address on that target
    base = where + SYNTHETIC_OFFSETS[variant % len(SYNTHETIC_OFFSETS)]
    return XenSymbols.synthetic_for(names, base=base, stride=SYNTHETIC_STRIDE)


def default_base(table: XenSymbols) -> int:
    """A page-aligned load address just past the table's highest symbol."""
    return table.free_page(_GAP)

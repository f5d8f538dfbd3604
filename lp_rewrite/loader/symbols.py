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

import struct
from collections.abc import Iterable
from typing import Final

from lp_rewrite.elf import consts as C
from lp_rewrite.payload import FUNCS_SECTION, SUPPORTED_VERSIONS, func_layout, version_offset
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
    """The ``name`` strings of .livepatch.funcs, read through their relocations."""
    elf = payload.elf
    funcs = elf.section_by_name(FUNCS_SECTION)
    if funcs is None or not funcs.sh_size or not funcs.has_file_data:
        return []
    ptr = elf.layout.ptr_size
    data = elf.section_data(funcs.index)
    if len(data) <= version_offset(ptr) or data[version_offset(ptr)] not in SUPPORTED_VERSIONS:
        return []
    entry = func_layout(data[version_offset(ptr)], ptr).entry_size
    syms = elf.symbols
    out = []
    for idx in elf.relocation_sections:
        table = elf.relocations(idx)
        if table.target != funcs.index:
            continue
        for i in range(table.count):
            if table.offsets[i] % entry or not syms.is_defined_in_section(table.syms[i]):
                continue
            off = table.offsets[i]
            if table.addends is not None:
                addend = table.addends[i]
            else:
                addend = struct.unpack_from("<i", data, off)[0] if off + 4 <= len(data) else 0
            sec = syms.shndx[table.syms[i]]
            text = bytes(elf.section_data(sec))
            start = syms.value[table.syms[i]] + addend
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

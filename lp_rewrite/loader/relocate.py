"""The relocation driver: ``livepatch_elf_perform_relocs()`` and the per-arch loop.

Relocation sections are taken in section order. One whose ``sh_info`` is not
a section, or names a section that is not loaded, is skipped; one whose
``sh_link`` is not the symbol table, or whose header is inconsistent, is
refused; an empty one is skipped. Each entry is then checked the way every
arch's ``arch_livepatch_perform_rel[a]()`` checks it (STN_UNDEF, ignored
symbol) and applied by :meth:`lp_rewrite.arch.Arch.relocate`, which holds
Xen's per-type arithmetic and range checks. REL addends are read from the
place in the loaded image at that moment, as Xen's ``get_addend()`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

from lp_rewrite.arch import Arch, LoadError
from lp_rewrite.elf import consts as C
from lp_rewrite.elf.file import ElfFile
from lp_rewrite.loader.placement import Layout, PlacedSection
from lp_rewrite.loader.refusal import Refused
from lp_rewrite.loader.resolve import Resolved

# Bytes a REL place must hold for Xen's get_addend() to read its addend.
_WORD = 4


@dataclass(frozen=True, slots=True)
class AppliedRelocation:
    """One relocation as Xen applied it: inputs and the bytes before and after."""

    reloc_section: int
    index: int
    section: int  # the relocated section
    offset: int  # r_offset
    rtype: int
    symbol: int
    s: int  # the symbol's resolved value
    a: int  # explicit addend, or the one read from the place (REL)
    p: int  # the place's address
    before: bytes  # the place's bytes just before this relocation
    after: bytes  # and just after

    @property
    def width(self) -> int:
        return len(self.after)


def perform_relocs(
    elf: ElfFile, arch: Arch, layout: Layout, resolved: Resolved, name: str
) -> tuple[dict[int, bytearray], list[AppliedRelocation]]:
    """Apply every relocation; return the relocated section bytes and a record of each."""
    shnum = len(elf.sections)
    buffers: dict[int, bytearray] = {}
    applied: list[AppliedRelocation] = []
    syms = elf.symbols
    for rsec in elf.sections[1:]:
        if rsec.sh_type not in (C.SHT_REL, C.SHT_RELA):
            continue
        if rsec.sh_info >= shnum or rsec.sh_info not in layout.sections:
            continue  # not a valid relocation section, or its target is not loaded
        if rsec.sh_link != elf.symtab_index:
            raise Refused(
                name,
                f"Relative link of {rsec.name} is incorrect ({rsec.sh_link}, expected={elf.symtab_index})",
            )
        if not rsec.sh_size:
            continue
        is_rela = rsec.sh_type == C.SHT_RELA
        need = elf.layout.rela.size if is_rela else elf.layout.rel.size
        if rsec.sh_entsize < need or rsec.sh_size % rsec.sh_entsize:
            raise Refused(name, "Section relative header is corrupted")
        if rsec.sh_type not in arch.rel_section_types:
            # header.check_image() words this per arch; the reader refuses it as well.
            raise Refused(name, "SHT_REL relocation unsupported")
        target = elf.sections[rsec.sh_info]
        placed = layout.sections[target.index]
        buf = buffers.get(target.index)
        if buf is None:
            buf = buffers[target.index] = bytearray(layout.regions[placed.region].data[_span(layout, placed)])
        table = elf.relocations(rsec.index)
        for i in range(table.count):
            sym, rtype, off = table.syms[i], table.types[i], table.offsets[i]
            if sym == 0:
                raise Refused(name, "Encountered STN_UNDEF")
            if sym in resolved.ignored:
                raise Refused(name, f"Relocation against ignored symbol {syms.name(sym)} cannot be resolved")
            if table.addends is not None:
                a = table.addends[i]
            elif rtype in arch.types and off + _WORD <= len(buf):
                a = arch.implicit_addend(rtype, buf, off)
            else:
                a = 0  # get_addend() reads nothing for a type it does not know
            width = arch.place_width(rtype)
            before = bytes(buf[off : off + width])
            p = placed.address + off
            try:
                arch.relocate(rtype, buf, off, resolved.values[sym], a, p)
            except LoadError as exc:
                raise Refused(name, str(exc).format(section=target.name, index=i, rela=rsec.name)) from None
            applied.append(
                AppliedRelocation(
                    rsec.index, i, target.index, off, rtype, sym, resolved.values[sym], a, p, before,
                    bytes(buf[off : off + width]),
                )
            )  # fmt: skip
    return buffers, applied


def _span(layout: Layout, placed: PlacedSection) -> slice:
    start = placed.address - layout.regions[placed.region].address
    return slice(start, start + placed.size)

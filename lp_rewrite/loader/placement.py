"""Placement: ``move_payload()`` in ``xen/common/livepatch.c``.

Every SHF_ALLOC section goes into one of three regions of one allocation:
RX (EXECINSTR, not WRITE), RW (WRITE, not EXECINSTR) and RO (neither);
EXECINSTR|WRITE is refused. Within a region a section starts at the running
size rounded up to its ``sh_addralign`` (Xen's ``ROUNDUP``: an alignment of 0
rounds to 0, so such a section lands at the region's start, as on Xen). RX
and RW are page-aligned in size so that RW and RO start on their own pages.
NOBITS sections are zero-filled. The caller chooses where the allocation
starts; Xen's vmalloc picks a page-aligned address in the livepatch area.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Final

from lp_rewrite.elf import consts as C
from lp_rewrite.elf.file import ElfFile
from lp_rewrite.loader.refusal import Refused

PAGE_SIZE: Final = 4096
TEXT: Final = "text"
RW: Final = "rw"
RO: Final = "ro"
REGION_KINDS: Final = (TEXT, RW, RO)
# Xen's vmalloc_xen() fails on an absurd total (a huge sh_addralign, many
# 2 MiB NOBITS sections) and move_payload() returns -ENOMEM. The emulation
# holds the whole image in memory, so it gives up at a size no real payload
# (at most 2 MiB of file data) comes near.
MAX_ALLOCATION: Final = 64 << 20


def page_align(n: int) -> int:
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def _roundup(n: int, align: int) -> int:
    # Xen's ROUNDUP(x, a) = ((x) + (a) - 1) & ~((a) - 1), with a = 0 giving 0.
    return (n + align - 1) & ~(align - 1) if align else 0


@dataclass
class Region:
    """One of the three areas of the payload's allocation."""

    kind: str
    address: int
    data: bytearray

    @property
    def end(self) -> int:
        return self.address + len(self.data)


@dataclass(frozen=True)
class PlacedSection:
    index: int
    name: str
    region: str
    address: int
    size: int
    nobits: bool


@dataclass
class Layout:
    """Where every loaded section went, and the bytes Xen copied there."""

    base: int
    regions: dict[str, Region]
    sections: dict[int, PlacedSection]

    def region_of(self, address: int, size: int = 1) -> Region | None:
        for r in self.regions.values():
            if r.address <= address and address + size <= r.end:
                return r
        return None

    @property
    def end(self) -> int:
        return max(r.end for r in self.regions.values())


def region_kind(flags: int) -> str | None:
    """Which region a section with these flags goes to (None: refused)."""
    x, w = bool(flags & C.SHF_EXECINSTR), bool(flags & C.SHF_WRITE)
    if x and not w:
        return TEXT
    if w and not x:
        return RW
    if not x and not w:
        return RO
    return None


def section_offsets(elf: ElfFile, name: str) -> tuple[dict[int, tuple[str, int]], dict[str, int]]:
    """Where move_payload() puts each ALLOC section (index -> (region, offset)), and each region's size."""
    sizes = dict.fromkeys(REGION_KINDS, 0)
    offsets: dict[int, tuple[str, int]] = {}
    for sec in elf.sections[1:]:
        if not sec.alloc:
            continue  # livepatch_elf_ignore_section()
        kind = region_kind(sec.sh_flags)
        if kind is None:
            raise Refused(name, f"Not supporting {sec.name} section!")
        off = _roundup(sizes[kind], sec.sh_addralign)
        offsets[sec.index] = (kind, off)
        sizes[kind] = off + sec.sh_size
    return offsets, sizes


def overlap(elf: ElfFile, name: str) -> tuple[int, int, int] | None:
    """(a section, one placed earlier that it lands on, the section of alignment 0 that moved the
    placement back) where move_payload() overlaps two, else None.

    Only an alignment of 0 moves the running size backwards (ROUNDUP(x, 0)
    is 0): the section lands at its region's start, and even an empty one
    makes every later section of the region land over earlier ones.
    """
    offsets, _sizes = section_offsets(elf, name)
    # Per region, the non-empty sections placed so far: disjoint (the first
    # overlap ends the search), sorted by start, so a new one can only meet
    # its two neighbours. Placement is in increasing order but for the jumps
    # back, so the inserts are appends: linear work however many sections.
    starts: dict[str, list[int]] = {}
    stops: dict[str, list[int]] = {}
    owners: dict[str, list[int]] = {}
    unaligned: dict[str, int] = {}  # region -> the last section of alignment 0 placed there
    secs = elf.sections
    for index, (kind, off) in offsets.items():
        if secs.addralign[index] == 0:
            unaligned[kind] = index
        end = off + secs.size[index]
        if end == off:
            continue
        s, e, o = starts.setdefault(kind, []), stops.setdefault(kind, []), owners.setdefault(kind, [])
        k = bisect_right(s, off)
        for j in (k - 1, k):
            if 0 <= j < len(s) and off < e[j] and s[j] < end:
                return index, o[j], unaligned.get(kind, index)
        s.insert(k, off)
        e.insert(k, end)
        o.insert(k, index)
    return None


def place(elf: ElfFile, base: int, name: str) -> Layout:
    """Lay out the ALLOC sections from ``base`` (page-aligned) the way Xen does."""
    if base % PAGE_SIZE:
        raise ValueError(f"load address {base:#x} is not page-aligned")
    offsets, sizes = section_offsets(elf, name)
    if page_align(sizes[TEXT]) + page_align(sizes[RW]) + sizes[RO] > MAX_ALLOCATION:
        raise Refused(name, "Could not allocate memory for payload")
    starts = {TEXT: base, RW: base + page_align(sizes[TEXT])}
    starts[RO] = starts[RW] + page_align(sizes[RW])
    regions = {k: Region(k, starts[k], bytearray(sizes[k])) for k in REGION_KINDS}
    placed: dict[int, PlacedSection] = {}
    for index, (kind, off) in offsets.items():
        sec = elf.sections[index]
        nobits = sec.sh_type == C.SHT_NOBITS
        buf = regions[kind].data
        buf[off : off + sec.sh_size] = bytes(sec.sh_size) if nobits else elf.section_data(index)
        placed[index] = PlacedSection(index, sec.name, kind, starts[kind] + off, sec.sh_size, nobits)
    return Layout(base, regions, placed)

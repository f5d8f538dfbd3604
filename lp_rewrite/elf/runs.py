"""Relocation tables read as *runs*: tables that lie end to end in the file.

A linker writes an object's relocation tables back to back (``ld -r`` puts
every ``.rela.*`` after the code and data), and this package's writer keeps
them so. Read as one, a field of every entry of a run is a single strided
view over the file: validating, scanning or comparing a stress object's 50k
tables then costs a few C loops, not a Python call per table.

The object's runs are found once; a caller asks for some tables and gets,
per run holding any of them, the run's columns with the rows of those tables
(``starts[k]:stops[k]`` for ``sections[k]``). A table that cannot be viewed
in place (a misaligned offset, a big-endian host) is a run of its own, over
the columns :class:`~lp_rewrite.elf.file.RelocTable` reads and validates.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Container, Iterable, Sequence
from itertools import accumulate, compress, count, filterfalse, repeat
from operator import floordiv, rshift
from typing import TYPE_CHECKING

from lp_rewrite.elf import consts as C
from lp_rewrite.elf.layout import _NATIVE_LE, ITEM_SIZE

if TYPE_CHECKING:
    from lp_rewrite.elf.file import ElfFile


class RelocationRun:
    """Some relocation tables of one run, with the run's columns."""

    __slots__ = ("addends", "offsets", "place", "sections", "starts", "stops", "syms", "types", "whole")

    def __init__(
        self,
        sections: Sequence[int],
        starts: Sequence[int],
        stops: Sequence[int],
        whole: bool,
        columns: tuple[Sequence[int], Sequence[int], Sequence[int], Sequence[int] | None],
        place: tuple[int, int],
    ) -> None:
        self.sections = sections  # in file order
        self.starts = starts
        self.stops = stops
        self.whole = whole  # every row of the columns belongs to one of ``sections``
        self.offsets, self.types, self.syms, self.addends = columns  # addends: None for SHT_REL
        self.place = place  # (file offset of row 0, entry size)

    def file_span(self, lo: int, hi: int) -> tuple[int, int]:
        """The file bytes of rows ``[lo, hi)``."""
        begin, ent = self.place
        return begin + lo * ent, begin + hi * ent

    def slices(self) -> Iterable[slice]:
        """Each table's rows, as a slice of the columns."""
        return map(slice, self.starts, self.stops)


class _Run:
    """One run of the object: its tables in file order, their first rows, and its columns."""

    __slots__ = ("columns", "first", "place", "sections")

    def __init__(self, elf: ElfFile, sections: Sequence[int], begin: int, end: int, ent: int) -> None:
        lay = elf.layout

        def field(f: tuple[str, int]) -> memoryview:
            fmt, off = f
            item = ITEM_SIZE[fmt]
            return elf.typed_view(fmt)[(begin + off) // item : end // item : ent // item]

        sizes = elf.sections.size
        # Arrays: a stress object's 50k tables cost 4 (and 8) bytes each, not an int object each.
        self.sections = array("I", sections)
        self.first = array("Q", accumulate(map(floordiv, map(sizes.__getitem__, sections), repeat(ent)), initial=0))
        if lay.rel_sym is not None:
            syms: Sequence[int] = field(lay.rel_sym)
        else:
            syms = array("I", map(rshift, field(lay.rel_info), repeat(lay.r_sym_shift)))
        rela = elf.sections.type[sections[0]] == C.SHT_RELA  # one entry size: one kind
        addends = field(lay.rela_addend) if rela else None
        self.columns = (field(lay.rel_offset), field(lay.rel_type), syms, addends)
        self.place = (begin, ent)


class RunIndex:
    """Every viewable relocation table of an object, by run (found once per object)."""

    def __init__(self, elf: ElfFile) -> None:
        secs = elf.sections
        starts, sizes, entsizes = secs.offset, secs.size, secs.entsize
        word = elf.layout.ptr_size  # every entry field sits at a multiple of its size from a word boundary
        tables = secs.tables
        self.runs: list[_Run] = []
        self.viewable = bytearray(len(secs))  # 1 for a table in a run (a byte per section, not a dict entry)
        if not _NATIVE_LE:
            return
        group: list[int] = []
        begin = end = ent = -1
        for i in sorted(tables, key=starts.__getitem__):
            start, size, e = starts[i], sizes[i], entsizes[i]
            if group and start == end and e == ent:
                group.append(i)
                end += size
                continue
            self._add(elf, group, begin, end, ent)
            group = []
            if not start % word:
                group, begin, end, ent = [i], start, start + size, e
        self._add(elf, group, begin, end, ent)

    def _add(self, elf: ElfFile, group: list[int], begin: int, end: int, ent: int) -> None:
        if not group:
            return
        self.runs.append(_Run(elf, group, begin, end, ent))
        for i in group:
            self.viewable[i] = 1

    def select(self, elf: ElfFile, indices: Iterable[int]) -> list[RelocationRun]:
        """The runs holding these tables, each with the rows of those tables (C loops per run)."""
        wanted = set(indices)
        out = []
        for run in self.runs:
            picks = list(compress(count(), map(wanted.__contains__, run.sections)))
            if not picks:
                continue
            first = run.first
            if len(picks) == len(run.sections):
                out.append(RelocationRun(run.sections, first[:-1], first[1:], True, run.columns, run.place))
                continue
            sections = list(map(run.sections.__getitem__, picks))
            starts, stops = list(map(first.__getitem__, picks)), list(map(first[1:].__getitem__, picks))
            out.append(RelocationRun(sections, starts, stops, False, run.columns, run.place))
        # The tables not viewable in place: read (and checked) alone.
        for i in sorted(filterfalse(self.viewable.__getitem__, wanted)):
            table = elf.relocations(i)
            columns = (table.offsets, table.types, table.syms, table.addends)
            place = (elf.sections.offset[i], table.entsize)
            out.append(RelocationRun([i], [0], [table.count], True, columns, place))
        return out


# Relocation entries scanned per window: a mapped file lets each window's pages go.
_SCAN_ROWS = 1 << 16


def entries_naming(
    elf: ElfFile,
    tables: Iterable[int],
    symbols: Container[int],
    keep: Callable[[RelocationRun, list[int]], list[int]] | None = None,
) -> list[tuple[int, RelocationRun, int, list[int]]]:
    """``(table, its run, the table's first row in the run, its entries naming one of symbols)``
    for each of ``tables`` with such an entry, in table index order.

    A run's symbol column is matched with C loops, a window at a time; only
    the matching rows are then placed in their tables (bisections, not a
    step per table). ``keep(run, rows)``, when given, narrows a run's
    matching rows (in order) before they are placed: a filter over the whole
    run costs no step per table, and a table left with no row is never seen.
    """
    found: list[tuple[int, RelocationRun, int, list[int]]] = []
    for run in elf.relocation_runs(tables):
        rows: list[int] = []
        for lo in range(0, len(run.syms), _SCAN_ROWS):
            rows += compress(count(lo), map(symbols.__contains__, run.syms[lo : lo + _SCAN_ROWS]))
            elf.release(*run.file_span(lo, lo + _SCAN_ROWS))
        if keep is not None and rows:
            rows = keep(run, rows)
        starts, stops = run.starts, run.stops
        j = 0
        while j < len(rows):
            k = bisect_right(starts, rows[j]) - 1  # the table whose rows begin last before this one
            end = bisect_left(rows, stops[k], j) if k >= 0 else j
            if end > j:  # rows of one of the tables asked about
                base = starts[k]
                found.append((run.sections[k], run, base, [r - base for r in rows[j:end]]))
                j = end
            else:  # a row of a table not asked about: skip to the next table's rows
                j = bisect_left(rows, starts[k + 1], j) if k + 1 < len(starts) else len(rows)
    found.sort(key=lambda hit: hit[0])
    return found

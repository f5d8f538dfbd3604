"""What every rule needs to know about one payload, computed once.

The central service is :meth:`Context.references`: relocations in the
sections that count (loaded, not on the keep list, not hook tables) resolved
to the address they designate (``S + A + bias``) with the classification
the rewrite uses too (:meth:`lp_rewrite.arch.Arch.classify`, a
:class:`~lp_rewrite.arch.Kind`): what the code or data does with it: call
it, materialise it, store it, or read through it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import chain, compress, repeat
from operator import itemgetter, not_, sub
from typing import Any, TypeVar

from lp_rewrite.arch import Classification, Kind
from lp_rewrite.check.findings import Place
from lp_rewrite.decide import ExemptSections
from lp_rewrite.elf import consts as C
from lp_rewrite.elf.file import Section
from lp_rewrite.elf.runs import RelocationRun, entries_naming
from lp_rewrite.errors import InputError
from lp_rewrite.identify import FuncsTable, Replacement
from lp_rewrite.livepatch_abi import FUNCS_SECTION, HOOK_SECTIONS
from lp_rewrite.policy import Policy
from lp_rewrite.read import Payload

T = TypeVar("T")
_first = itemgetter(0)


@dataclass(frozen=True, slots=True)
class Reference:
    """One relocation, resolved and classified."""

    reloc_section: int  # the relocation section holding it
    index: int  # its entry number there
    section: Section  # the section being relocated
    offset: int
    reloc: Classification  # what the field is (kind), its type, width and bias
    symbol: int
    target: tuple[int, int] | None  # (section, offset) designated; None for undefined/absolute symbols
    absolute: int | None = None  # the address designated through an SHN_ABS symbol (S + A + bias)

    @property
    def kind(self) -> Kind:
        return self.reloc.kind

    @property
    def note(self) -> str:
        """Why the place could not be classified or resolved (e.g. an undecodable instruction), or ''."""
        return self.reloc.note


class Context:
    """One payload with its replacements, the keep list and lookup tables.

    The payload was read by :func:`~lp_rewrite.read.read_payload`, which
    validated every relocation table's entries (symbol indices, places inside
    their section): entries are read here one by one, only where a rule needs
    them, straight from the table's bytes.
    """

    def __init__(self, payload: Payload, policy: Policy, funcs: FuncsTable | None) -> None:
        self.payload = payload
        self.elf = payload.elf
        self.arch = payload.arch
        self.syms = payload.elf.symbols
        self.policy = policy
        self.funcs = funcs
        self.exempt = ExemptSections(policy)
        self._memo: dict[str, Any] = {}
        self._counts: dict[int, bool] = {}

    def cache(self, key: str, compute: Callable[[Context], T]) -> T:
        """A value a rule module derives from the payload, computed once per payload."""
        if key not in self._memo:
            self._memo[key] = compute(self)
        return self._memo[key]  # type: ignore[no-any-return]

    # -- places ---------------------------------------------------------------

    def file_offset(self, section: int, offset: int) -> int | None:
        secs = self.elf.sections
        return secs.offset[section] + offset if secs.has_file_data(section) else None

    def place(self, section: int, offset: int, width: int) -> Place:
        """Where a finding points: ``width`` bytes at ``offset`` in section ``section``, and in the file."""
        return Place(self.elf.sections.name(section), offset, self.file_offset(section, offset), width)

    def counts(self, section: int) -> bool:
        """Whether references in section ``section`` reach the running hypervisor as they are."""
        verdict = self._counts.get(section)
        if verdict is None:
            secs = self.elf.sections
            verdict = bool(secs.flags[section] & C.SHF_ALLOC)
            if verdict:  # only a loaded section is named (the Section is kept: classify() takes it)
                name = secs[section].name
                verdict = not self.exempt(name) and name not in HOOK_SECTIONS
            self._counts[section] = verdict
        return verdict

    # -- symbols --------------------------------------------------------------

    @cached_property
    def _function_symbols(self) -> list[tuple[int, int, int]]:
        """(section, entry, symbol) of every STT_FUNC symbol defined in a section, in symbol order."""
        syms = self.syms
        value, shndx = syms.value, syms.shndx
        mask = ~self.arch.function_value_flags
        func = C.STT_FUNC  # a local in the loop
        # The type is st_info's low nibble, read off the column: other symbols cost no call.
        funcs = syms.defined_in_a_section([i for i, info in enumerate(syms.info) if i and info & 0xF == func])
        return [(shndx[i], value[i] & mask, i) for i in funcs]

    @cached_property
    def functions(self) -> dict[int, tuple[list[int], list[tuple[int, int, int]]]]:
        """Per section: sorted starts and (start, end, symbol) of its STT_FUNC symbols."""
        size = self.syms.size
        by_section: dict[int, list[tuple[int, int, int]]] = {}
        for sec, start, sym in self._function_symbols:
            by_section.setdefault(sec, []).append((start, start + size[sym], sym))
        out = {}
        for sec, items in by_section.items():
            items.sort()
            out[sec] = (list(map(_first, items)), items)
        return out

    def function_at(self, section: int, offset: int) -> int | None:
        """The function symbol whose entry is exactly here (:meth:`_rank`: globals first)."""
        found = self.functions.get(section)
        if found is None:
            return None
        starts, items = found
        here = [
            sym for _start, _end, sym in items[bisect.bisect_left(starts, offset) : bisect.bisect_right(starts, offset)]
        ]
        return min(here, key=self._rank) if here else None

    def _rank(self, sym: int) -> tuple[bool, int, int]:
        """Of several functions at one entry, the least names it: a global before a local, the shorter, the first."""
        return self.syms.bind(sym) == C.STB_LOCAL, self.syms.size[sym], sym

    def containing_function(self, section: int, offset: int) -> int | None:
        found = self.functions.get(section)
        if found is None:
            return None
        starts, items = found
        k = bisect.bisect_right(starts, offset) - 1
        while k >= 0:
            start, end, sym = items[k]
            if start <= offset < max(end, start + 1):
                return sym
            k -= 1
        return None

    def name(self, sym: int) -> str:
        return self.syms.name(sym) or f"#{sym}"

    def where(self, section: int, offset: int) -> str:
        """``function+0x..`` when a function covers the place, else the section."""
        fn = self.containing_function(section, offset)
        if fn is None:
            return self.elf.sections.name(section)
        delta = offset - (self.syms.value[fn] & ~self.arch.function_value_flags)
        return f"{self.name(fn)}+{delta:#x}" if delta else self.name(fn)

    @cached_property
    def replacement_entries(self) -> dict[tuple[int, int], Replacement]:
        if self.funcs is None:
            return {}
        return {(r.section, r.offset): r for r in self.funcs.replacements}

    @cached_property
    def payload_only(self) -> dict[tuple[int, int], int]:
        """Entries of functions in loaded code that replace nothing -> their symbol (as :meth:`function_at`).

        Empty when .livepatch.funcs could not be read: without knowing the
        replacements, no function can be called payload-only.
        """
        if self.funcs is None and self.elf.section_by_name(FUNCS_SECTION) is not None:
            return {}
        flags = self.elf.sections.flags
        code = C.SHF_ALLOC | C.SHF_EXECINSTR
        replaced = self.replacement_entries
        out: dict[tuple[int, int], int] = {}
        for sec, start, sym in self._function_symbols:
            key = (sec, start)
            if flags[sec] & code != code or key in replaced:
                continue
            prior = out.get(key)
            if prior is None or self._rank(sym) < self._rank(prior):
                out[key] = sym
        return out

    @cached_property
    def hook_functions(self) -> dict[tuple[int, int], str]:
        """Entry points the hook tables name -> the hook section's name."""
        flags = self.elf.sections.flags
        hooks = {i for i in self.elf.sections.find_all(HOOK_SECTIONS) if flags[i] & C.SHF_ALLOC}
        out: dict[tuple[int, int], str] = {}
        for ref in self._resolved(hooks.__contains__, None):
            if ref.target is not None:
                out.setdefault(ref.target, ref.section.name)
        return out

    # -- relocations ----------------------------------------------------------

    def references(
        self,
        symbols: set[int] | None = None,
        *,
        calls: bool = True,
        sections: Callable[[int], bool] | None = None,
    ) -> Iterator[Reference]:
        """Resolved relocations in the sections that count, optionally only against ``symbols``.

        ``calls=False`` leaves out direct calls and jumps before resolving them
        (most references in a payload are calls, and some rules ignore them).
        ``sections`` says which relocated sections to look in instead (:meth:`counts` by default).
        """
        return self._resolved(self.counts if sections is None else sections, symbols, calls)

    def _resolved(
        self, wanted: Callable[[int], bool], symbols: set[int] | None, calls: bool = True
    ) -> Iterator[Reference]:
        """References in the relocation tables whose target section is ``wanted``, against ``symbols``.

        The entries against ``symbols`` are found in the symbol columns first
        (:func:`~lp_rewrite.elf.runs.entries_naming`), a table's target section is judged only when
        it has one, and only those entries are read and classified: classifying
        (decoding x86 code) is the expensive part.
        """
        elf, classify = self.elf, self.arch.classify
        secs = elf.sections
        info = secs.info
        tables: Iterable[tuple[int, RelocationRun, int, Sequence[int]]]
        if symbols is None:
            tables = (
                (ridx, run, start, range(stop - start))
                for run in elf.relocation_runs(elf.relocation_sections)
                for ridx, start, stop in zip(run.sections, run.starts, run.stops, strict=True)
            )
        else:
            tables = entries_naming(
                elf, elf.relocation_sections, symbols, None if calls else self._without_direct_calls
            )
        for ridx, run, base, picked in tables:
            target = info[ridx]
            if not picked or not wanted(target):
                continue
            sec, data = secs[target], elf.section_data(target)
            types, offsets, addends, syms = run.types, run.offsets, run.addends, run.syms
            for i in picked:
                row = base + i
                reloc = classify(types[row], sec, data, offsets[row])
                if reloc is None:
                    continue  # refused at load: LP003 reports it
                if not calls and reloc.kind is Kind.CALL:
                    continue
                addend = addends[row] if addends is not None else None
                yield self._resolve(ridx, i, sec, data, reloc, syms[row], offsets[row], addend)

    def _without_direct_calls(self, run: RelocationRun, rows: list[int]) -> list[int]:
        """``rows`` of ``run`` without those that surely are direct calls or jumps (:meth:`Arch.direct_calls`).

        Judged for a whole run at once, before its rows are placed in their
        tables: most references in a payload are calls, and a table left
        with none is then never visited.
        """
        calls = self.arch.direct_calls(self.elf.data, rows, run.types, self._code_starts_by_row(run), run.offsets)
        return list(compress(rows, map(not_, calls)))

    def _code_starts_by_row(self, run: RelocationRun) -> list[int]:
        """For each row of ``run``'s columns: where the section its table relocates starts in the file
        when that section is code there, else -1 (also for a row of a table ``run`` does not hold)."""
        starts = self._code_starts
        info = self.elf.sections.info
        by_table = map(starts.__getitem__, map(info.__getitem__, run.sections))
        # A list: an array is filled an item at a time through a type check (~4x slower), and both
        # hold 8 bytes a row (the rows of one table share one int).
        if run.whole:  # the tables' rows are the columns' rows, end to end: a repeat per table (C loops)
            return list(chain.from_iterable(map(repeat, by_table, map(sub, run.stops, run.starts))))
        out = [-1] * len(run.types)
        for start, lo, hi in zip(by_table, run.starts, run.stops, strict=True):
            out[lo:hi] = repeat(start, hi - lo)
        return out

    @cached_property
    def _code_starts(self) -> list[int]:
        """Per section: the file offset of its contents when it is code with contents in the file, else -1."""
        secs = self.elf.sections
        return [
            off if flags & C.SHF_EXECINSTR and has else -1
            for off, flags, has in zip(secs.offset, secs.flags, secs.data_mask, strict=True)
        ]

    def tables_against(self, symbols: set[int]) -> list[tuple[int, list[int]]]:
        """(relocation section, its entry numbers against ``symbols``) of each table that has one, in index order
        (:func:`lp_rewrite.elf.runs.entries_naming`: C loops over each run of adjacent tables)."""
        return [
            (ridx, picked)
            for ridx, _run, _base, picked in entries_naming(self.elf, self.elf.relocation_sections, symbols)
        ]

    def entries(self, ridx: int, picked: Iterable[int]) -> Iterator[tuple[int, int, int, int, int | None]]:
        """(index, type, symbol, offset, explicit addend or None for REL) of entries ``picked`` of a relocation table.

        Each entry is unpacked from the table's bytes: no column of the whole table is built.
        """
        elf = self.elf
        secs, lay = elf.sections, elf.layout
        rela = secs.type[ridx] == C.SHT_RELA
        unpack = (lay.rela if rela else lay.rel).unpack_from
        base, step, data = secs.offset[ridx], secs.entsize[ridx], elf.data
        mask, shift = lay.r_type_mask, lay.r_sym_shift
        for i in picked:
            fields = unpack(data, base + i * step)
            info = fields[1]
            yield i, info & mask, info >> shift, fields[0], fields[2] if rela else None

    def reference(self, reloc_section: int, index: int) -> Reference | None:
        """Relocation ``index`` of that section, resolved as :meth:`references` resolves it, in any section.

        None for a type Xen's loader refuses (LP003 reports it).
        """
        elf = self.elf
        target = elf.sections.info[reloc_section]
        sec = elf.sections[target]
        data = elf.section_data(target)
        _i, rtype, sym, offset, addend = next(self.entries(reloc_section, [index]))
        reloc = self.arch.classify(rtype, sec, data, offset)
        if reloc is None:
            return None
        return self._resolve(reloc_section, index, sec, data, reloc, sym, offset, addend)

    def _resolve(
        self,
        ridx: int,
        i: int,
        sec: Section,
        data: memoryview,
        reloc: Classification,
        sym: int,
        offset: int,
        addend: int | None,
    ) -> Reference:
        """``addend``: the entry's (RELA), or None to read the place's (REL)."""
        arch, syms = self.arch, self.syms
        if addend is None:
            try:
                addend = arch.implicit_addend(reloc.type.code, data, offset)
            except InputError as exc:
                unread = Classification(reloc.type, Kind.NONE, 0, str(exc))
                return Reference(ridx, i, sec, offset, unread, sym, None)
        target = absolute = None
        if syms.is_defined_in_section(sym):
            target = (syms.shndx[sym], syms.value[sym] + addend + reloc.bias)
        elif syms.is_absolute(sym):
            # Prelinked payloads and --absolute aliases: a hypervisor address, as Xen keeps it.
            absolute = (syms.value[sym] + addend + reloc.bias) % (1 << (8 * self.elf.layout.ptr_size))
        return Reference(ridx, i, sec, offset, reloc, sym, target, absolute)

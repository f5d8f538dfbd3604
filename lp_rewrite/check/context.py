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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

from lp_rewrite.arch import Classification, Kind
from lp_rewrite.decide import ExemptSections
from lp_rewrite.elf import consts as C
from lp_rewrite.elf.file import RelocTable, Section
from lp_rewrite.errors import InputError
from lp_rewrite.identify import FuncsTable, Replacement
from lp_rewrite.livepatch_abi import FUNCS_SECTION, HOOK_SECTIONS
from lp_rewrite.policy import Policy
from lp_rewrite.read import Payload

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Reference:
    """One relocation, resolved and classified."""

    table: RelocTable
    index: int
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
    """One payload with its replacements, the keep list and lookup tables."""

    def __init__(self, payload: Payload, policy: Policy, funcs: FuncsTable | None) -> None:
        self.payload = payload
        self.elf = payload.elf
        self.arch = payload.arch
        self.syms = payload.elf.symbols
        self.policy = policy
        self.funcs = funcs
        self.exempt = ExemptSections(policy)
        self._memo: dict[str, Any] = {}

    def cache(self, key: str, compute: Callable[[Context], T]) -> T:
        """A value a rule module derives from the payload, computed once per payload."""
        if key not in self._memo:
            self._memo[key] = compute(self)
        return self._memo[key]  # type: ignore[no-any-return]

    # -- places ---------------------------------------------------------------

    def file_offset(self, section: int, offset: int) -> int | None:
        sec = self.elf.sections[section]
        return sec.sh_offset + offset if sec.has_file_data else None

    def counts(self, section: Section) -> bool:
        """Whether references in this section reach the running hypervisor as they are."""
        return section.alloc and not self.exempt(section.name) and section.name not in HOOK_SECTIONS

    # -- symbols --------------------------------------------------------------

    @cached_property
    def functions(self) -> dict[int, tuple[list[int], list[tuple[int, int, int]]]]:
        """Per section: sorted starts and (start, end, symbol) of its STT_FUNC symbols."""
        syms = self.syms
        by_section: dict[int, list[tuple[int, int, int]]] = {}
        flags = self.arch.function_value_flags
        for i in range(1, syms.count):
            if syms.type(i) == C.STT_FUNC and syms.is_defined_in_section(i):
                start = syms.value[i] & ~flags
                by_section.setdefault(syms.shndx[i], []).append((start, start + syms.size[i], i))
        out = {}
        for sec, items in by_section.items():
            items.sort()
            out[sec] = ([s for s, _e, _i in items], items)
        return out

    def function_at(self, section: int, offset: int) -> int | None:
        """A function symbol whose entry is exactly here (globals first)."""
        found = self.functions.get(section)
        if found is None:
            return None
        starts, items = found
        k = bisect.bisect_left(starts, offset)
        best: int | None = None
        while k < len(items) and items[k][0] == offset:
            sym = items[k][2]
            if best is None or (self.syms.bind(best) == C.STB_LOCAL and self.syms.bind(sym) != C.STB_LOCAL):
                best = sym
            k += 1
        return best

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
            return self.elf.sections[section].name
        delta = offset - (self.syms.value[fn] & ~self.arch.function_value_flags)
        return f"{self.name(fn)}+{delta:#x}" if delta else self.name(fn)

    @cached_property
    def replacement_entries(self) -> dict[tuple[int, int], Replacement]:
        if self.funcs is None:
            return {}
        return {(r.section, r.offset): r for r in self.funcs.replacements}

    @cached_property
    def payload_only(self) -> dict[tuple[int, int], int]:
        """Entries of functions in loaded code that replace nothing -> their symbol.

        Empty when .livepatch.funcs could not be read: without knowing the
        replacements, no function can be called payload-only.
        """
        if self.funcs is None and self.elf.section_by_name(FUNCS_SECTION) is not None:
            return {}
        out: dict[tuple[int, int], int] = {}
        for sec, (_starts, items) in self.functions.items():
            section = self.elf.sections[sec]
            if not (section.alloc and section.executable):
                continue
            for start, _end, _sym in items:
                key = (sec, start)
                if key not in out and key not in self.replacement_entries:
                    best = self.function_at(sec, start)
                    if best is not None:
                        out[key] = best
        return out

    @cached_property
    def hook_functions(self) -> dict[tuple[int, int], str]:
        """Entry points the hook tables name -> the hook section's name."""
        out: dict[tuple[int, int], str] = {}
        for ref in self._resolved(lambda sec: sec.alloc and sec.name in HOOK_SECTIONS, None):
            if ref.target is not None:
                out.setdefault(ref.target, ref.section.name)
        return out

    # -- relocations ----------------------------------------------------------

    def references(self, symbols: set[int] | None = None, *, calls: bool = True) -> Iterator[Reference]:
        """Resolved relocations in the sections that count, optionally only against ``symbols``.

        ``calls=False`` leaves out direct calls and jumps before resolving them
        (most references in a payload are calls, and some rules ignore them).
        """
        return self._resolved(self.counts, symbols, calls)

    def _resolved(
        self, wanted: Callable[[Section], bool], symbols: set[int] | None, calls: bool = True
    ) -> Iterator[Reference]:
        elf, arch = self.elf, self.arch
        secs = elf.sections
        for ridx in elf.relocation_sections:
            sec = secs[secs.info[ridx]]
            if not wanted(sec) or (symbols is not None and symbols.isdisjoint(elf.relocation_syms(ridx))):
                continue
            table = elf.relocations(ridx)
            data = elf.section_data(sec.index)
            for i, sym in enumerate(table.syms):
                if symbols is not None and sym not in symbols:
                    continue
                reloc = arch.classify(table.types[i], sec, data, table.offsets[i])
                if reloc is None:
                    continue  # refused at load: LP003 reports it
                if not calls and reloc.kind is Kind.CALL:
                    continue
                yield self._resolve(table, i, sec, data, reloc, sym)

    def reference(self, reloc_section: int, index: int) -> Reference | None:
        """Relocation ``index`` of that section, resolved as :meth:`references` resolves it, in any section.

        None for a type Xen's loader refuses (LP003 reports it).
        """
        elf = self.elf
        table = elf.relocations(reloc_section)
        sec = elf.sections[table.target]
        data = elf.section_data(sec.index)
        reloc = self.arch.classify(table.types[index], sec, data, table.offsets[index])
        if reloc is None:
            return None
        return self._resolve(table, index, sec, data, reloc, table.syms[index])

    def _resolve(
        self, table: RelocTable, i: int, sec: Section, data: memoryview, reloc: Classification, sym: int
    ) -> Reference:
        arch, syms = self.arch, self.syms
        offset, addends = table.offsets[i], table.addends
        try:
            addend = addends[i] if addends is not None else arch.implicit_addend(reloc.type.code, data, offset)
        except InputError as exc:
            unread = Classification(reloc.type, Kind.NONE, 0, str(exc))
            return Reference(table, i, sec, offset, unread, sym, None)
        target = absolute = None
        if syms.is_defined_in_section(sym):
            target = (syms.shndx[sym], syms.value[sym] + addend + reloc.bias)
        elif syms.is_absolute(sym):
            # Prelinked payloads and --absolute aliases: a hypervisor address, as Xen keeps it.
            absolute = (syms.value[sym] + addend + reloc.bias) % (1 << (8 * self.elf.layout.ptr_size))
        return Reference(table, i, sec, offset, reloc, sym, target, absolute)

"""What every rule needs to know about one payload, computed once.

The central service is :meth:`Context.references`: relocations in the
sections that count (loaded, not on the keep list, not hook tables) resolved
to the address they designate (``S + A + bias``, as :mod:`lp_rewrite.decide`
computes it) and classified by what the code or data does with it: call it,
materialise it, store it, or read through it. x86 rel32 fields in code are
decoded (:func:`lp_rewrite.arch.x86_insn.decode_rel32`) because the type
alone does not say whether ``foo(%rip)`` is a call, a ``lea`` or a load.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

from lp_rewrite.arch import RelocType, Use
from lp_rewrite.arch.x86_insn import Form, decode_rel32, fast_rel32
from lp_rewrite.decide import ExemptSections
from lp_rewrite.elf import consts as C
from lp_rewrite.elf.file import RelocTable, Section
from lp_rewrite.errors import InputError
from lp_rewrite.identify import FuncsTable, Replacement
from lp_rewrite.payload import FUNCS_SECTION, HOOK_SECTIONS
from lp_rewrite.policy import Policy
from lp_rewrite.read import Payload

T = TypeVar("T")


class Access(enum.Enum):
    """What a relocated field does with the address it designates."""

    CALL = "call"  # direct call or jump: control goes there, nothing is kept
    ADDRESS = "address"  # materialised in a register (lea, adrp+add, adr, movw+movt)
    STORED = "stored"  # an absolute pointer in data (or a literal pool)
    RELATIVE = "relative"  # a PC-relative data word: an offset, meaningless elsewhere
    LOAD = "load"  # memory read/written at the address
    PARTIAL = "partial"  # one piece of an address pair; the other piece is reported
    NONE = "none"


# Halves of a multi-instruction address whose *other* half completes it: the
# ADD/G0/MOVW piece is classified as ADDRESS, so one lea-equivalent gives one
# finding. An ADRP paired with a load is a LOAD of the target, not its address.
_PARTIAL: frozenset[str] = frozenset(
    [
        "R_AARCH64_ADR_PREL_PG_HI21",
        "R_AARCH64_ADR_PREL_PG_HI21_NC",
        "R_AARCH64_MOVW_UABS_G1",
        "R_AARCH64_MOVW_UABS_G1_NC",
        "R_AARCH64_MOVW_UABS_G2",
        "R_AARCH64_MOVW_UABS_G2_NC",
        "R_AARCH64_MOVW_UABS_G3",
        "R_AARCH64_MOVW_SABS_G1",
        "R_AARCH64_MOVW_SABS_G2",
        "R_AARCH64_MOVW_PREL_G1",
        "R_AARCH64_MOVW_PREL_G1_NC",
        "R_AARCH64_MOVW_PREL_G2",
        "R_AARCH64_MOVW_PREL_G2_NC",
        "R_AARCH64_MOVW_PREL_G3",
        "R_ARM_MOVT_ABS",
    ]
)
# Data types whose stored value is relative to the place, not an address.
_RELATIVE: frozenset[str] = frozenset(
    ["R_X86_64_PC32", "R_X86_64_PLT32", "R_AARCH64_PREL64", "R_AARCH64_PREL32", "R_AARCH64_PREL16", "R_ARM_REL32"]
)
_FORM_ACCESS = {Form.CALL: Access.CALL, Form.JUMP: Access.CALL, Form.LEA: Access.ADDRESS, Form.MEMORY: Access.LOAD}


@dataclass(frozen=True, slots=True)
class Reference:
    """One relocation, resolved and classified."""

    table: RelocTable
    index: int
    section: Section  # the section being relocated
    offset: int
    rtype: RelocType
    symbol: int
    target: tuple[int, int] | None  # (section, offset) designated; None for undefined/absolute symbols
    access: Access
    note: str = ""  # e.g. why the instruction could not be classified
    absolute: int | None = None  # the address designated through an SHN_ABS symbol (S + A + bias)


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
            code = sec.executable
            for i, sym in enumerate(table.syms):
                if symbols is not None and sym not in symbols:
                    continue
                rt = arch.types.get(table.types[i])
                if rt is None:
                    continue  # refused at load: LP003 reports it
                if not calls:
                    if rt.use is Use.BRANCH:
                        continue
                    if rt.use is Use.CODE_REF and code:
                        site = fast_rel32(data, table.offsets[i])
                        if site is not None and site.form in (Form.CALL, Form.JUMP):
                            continue
                yield self.resolve(table, i, sec, data, rt, sym)

    def reference(self, reloc_section: int, index: int) -> Reference | None:
        """Relocation ``index`` of that section, resolved as :meth:`references` resolves it, in any section.

        None for a type Xen's loader refuses (LP003 reports it).
        """
        elf = self.elf
        table = elf.relocations(reloc_section)
        rt = self.arch.types.get(table.types[index])
        if rt is None:
            return None
        sec = elf.sections[table.target]
        return self.resolve(table, index, sec, elf.section_data(sec.index), rt, table.syms[index])

    def resolve(self, table: RelocTable, i: int, sec: Section, data: memoryview, rt: RelocType, sym: int) -> Reference:
        arch, syms = self.arch, self.syms
        offset = table.offsets[i]
        note = ""
        try:
            addend = table.addends[i] if table.addends is not None else arch.implicit_addend(rt.code, data, offset)
        except InputError as exc:
            return Reference(table, i, sec, offset, rt, sym, None, Access.NONE, str(exc))
        bias = 0
        if rt.use is Use.CODE_REF and sec.executable:
            try:
                site = fast_rel32(data, offset) or decode_rel32(data, offset, f"{sec.name}+{offset:#x}")
                bias = site.bias(offset)
                access = _FORM_ACCESS[site.form]
            except InputError as exc:
                # Undecodable: assume the worst (an address), and say so.
                bias, access, note = 4, Access.ADDRESS, str(exc)
        else:
            access = self._access(rt, sec)
            try:
                bias = arch.target_bias(rt.code, sec, data, offset)
            except InputError as exc:
                note = str(exc)
        target = absolute = None
        if syms.is_defined_in_section(sym):
            target = (syms.shndx[sym], syms.value[sym] + addend + bias)
        elif syms.is_absolute(sym):
            # Prelinked payloads and --absolute aliases: a hypervisor address, as Xen keeps it.
            absolute = (syms.value[sym] + addend + bias) % (1 << (8 * self.elf.layout.ptr_size))
        return Reference(table, i, sec, offset, rt, sym, target, access, note, absolute)

    @staticmethod
    def _access(rt: RelocType, sec: Section) -> Access:
        if rt.name in _PARTIAL:
            return Access.PARTIAL
        if rt.use is Use.BRANCH:
            return Access.CALL
        if rt.use is Use.ADDRESS:
            return Access.ADDRESS
        if rt.use is Use.MEMORY:
            return Access.LOAD
        if rt.use in (Use.DATA, Use.CODE_REF):
            return Access.RELATIVE if rt.name in _RELATIVE else Access.STORED
        return Access.NONE

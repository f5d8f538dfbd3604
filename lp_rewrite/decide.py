"""Pipeline stage 3, *decide*: one decision, with a reason code, per relocation.

A relocation is retargeted to the original function when its **effective
target** is exactly a replacement's entry point and it lives in a section
that must not keep pointing at the new code. The effective target is
``S + A + bias`` (the bias of :meth:`lp_rewrite.arch.Arch.classify`), taken in the
symbol's section, so function symbols, GCC's ``.localalias`` and friends and
section symbols plus addend are all handled by the same comparison. A
reference *into* a body (``.fixup``/``.cold`` jump-backs, jump tables, labels)
never equals an entry point and is kept.

``explain``, ``rewrite -v``, JSON and SARIF all render this one list.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import accumulate, compress, count, starmap
from operator import eq, itemgetter
from typing import ClassVar, overload

from lp_rewrite.arch import Kind
from lp_rewrite.elf import consts as C
from lp_rewrite.elf.file import RelocTable
from lp_rewrite.elf.runs import RelocationRun, entries_naming
from lp_rewrite.errors import InputError
from lp_rewrite.identify import FuncsTable, Replacement
from lp_rewrite.policy import Policy
from lp_rewrite.read import Payload
from lp_rewrite.record import Record


class Reason(enum.StrEnum):  # str-based: hashed in C, tens of thousands of times
    RETARGET = "retarget"
    KEEP_EXEMPT = "keep-exempt-section"
    KEEP_OUT_OF_REACH = "keep-out-of-reach"
    KEEP_NON_ALLOC = "keep-non-alloc"
    KEEP_BODY = "keep-body-reference"
    KEEP_NOT_REPLACED = "keep-not-replaced"
    KEEP_NO_EFFECT = "keep-no-effect"
    KEEP_UNSUPPORTED = "keep-unsupported-type"

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


# The members as module globals for the per-relocation loop: reading a member
# off its class costs ~180 ns in Python 3.11 (a descriptor), a global ~16 ns.
_RETARGET, _KEEP_EXEMPT, _KEEP_OUT_OF_REACH, _KEEP_NON_ALLOC = (
    Reason.RETARGET,
    Reason.KEEP_EXEMPT,
    Reason.KEEP_OUT_OF_REACH,
    Reason.KEEP_NON_ALLOC,
)
_KEEP_BODY, _KEEP_NOT_REPLACED, _KEEP_NO_EFFECT, _KEEP_UNSUPPORTED = (
    Reason.KEEP_BODY,
    Reason.KEEP_NOT_REPLACED,
    Reason.KEEP_NO_EFFECT,
    Reason.KEEP_UNSUPPORTED,
)
_NO_EFFECT_KIND = Kind.NONE

_DESCRIPTIONS = {
    Reason.RETARGET: "references a replaced function's entry: now bound to the original",
    Reason.KEEP_EXEMPT: "entry reference in a section that must describe the new code",
    Reason.KEEP_OUT_OF_REACH: "entry reference whose field cannot reach the hypervisor (AArch64 ADR, b.cond, tbz)",
    Reason.KEEP_NON_ALLOC: "section is not loaded (Xen does not apply its relocations)",
    Reason.KEEP_BODY: "points inside a replacement's body, not at its entry",
    Reason.KEEP_NOT_REPLACED: "does not reference a replaced function",
    Reason.KEEP_NO_EFFECT: "relocation type has no effect",
    Reason.KEEP_UNSUPPORTED: "relocation type Xen does not apply (refused by rewrite)",
}


class Decision(Record):
    """What to do with one relocation, and why (``reason``)."""

    __slots__ = (
        "addend",
        "bias",
        "index",
        "offset",
        "reason",
        "reloc_section",
        "replacement",
        "rtype",
        "section",
        "symbol",
        "target_offset",
        "target_section",
    )

    def __init__(
        self,
        reloc_section: int,  # the SHT_REL/SHT_RELA section
        index: int,  # entry number in it
        section: int,  # the section being relocated (sh_info)
        offset: int,  # r_offset
        rtype: int,
        symbol: int,
        addend: int,  # explicit (RELA) or read from the place (REL)
        bias: int,
        target_section: int | None,  # where S + A + bias lies; None for undefined/absolute symbols
        target_offset: int | None,
        replacement: int | None,  # index into FuncsTable.replacements
        reason: Reason,
    ) -> None:
        self.reloc_section = reloc_section
        self.index = index
        self.section = section
        self.offset = offset
        self.rtype = rtype
        self.symbol = symbol
        self.addend = addend
        self.bias = bias
        self.target_section = target_section
        self.target_offset = target_offset
        self.replacement = replacement
        self.reason = reason

    @property
    def retarget(self) -> bool:
        return self.reason is _RETARGET


# A Decision field's column: its typecode, and the value that stands for None.
# Each field fits its typecode in any object a toolchain emits; a value that
# does not (a target offset summed past 64 bits, a REL addend read as a word, a
# hostile header's numbers) turns every column into a list when the columns
# are made or later (DecisionList._make_columns, _widen), never a wrong value;
# the tuples a short list keeps hold any int.
_COLUMNS: tuple[tuple[str, str], ...] = (
    ("reloc_section", "I"),
    ("index", "I"),
    ("section", "I"),
    ("offset", "Q"),
    ("rtype", "I"),
    ("symbol", "I"),
    ("addend", "q"),
    ("bias", "i"),  # where an instruction's field sits from its end: a few bytes
    ("target_section", "i"),  # -1: None (an undefined or absolute symbol)
    ("target_offset", "q"),  # 0 where target_section is None
    ("replacement", "i"),  # -1: None
    ("reason", "B"),  # the Reason's position in _REASONS
)
_FIELD = {name: k for k, (name, _typecode) in enumerate(_COLUMNS)}
_REASONS: tuple[Reason, ...] = tuple(Reason)
_REASON_CODE = {reason: k for k, reason in enumerate(_REASONS)}
_REASON_FIELD = _FIELD["reason"]
# Decisions a list keeps as tuples before it makes its columns. A tuple is one
# append a decision and nothing to make first; columns are twelve arrays to
# make and twelve appends a decision, for 49 bytes a decision instead of a
# tuple's 150 and its ints. The decisions `check` makes for a payload (tens)
# never make columns; a stress object's 20k do, once they are this many.
_TUPLES_MAX = 256

# One decision as its columns hold it: Decision's fields in order, None as its
# column's stand-in, the reason as its code.
_Row = tuple[int, int, int, int, int, int, int, int, int, int, int, int]


def _decision(
    reloc_section: int,
    index: int,
    section: int,
    offset: int,
    rtype: int,
    symbol: int,
    addend: int,
    bias: int,
    target_section: int,
    target_offset: int,
    replacement: int,
    reason: int,
) -> Decision:
    """The Decision of one row (the None stand-ins back to None, the reason's code to the Reason)."""
    found = target_section >= 0
    return Decision(
        reloc_section,
        index,
        section,
        offset,
        rtype,
        symbol,
        addend,
        bias,
        target_section if found else None,
        target_offset if found else None,
        replacement if replacement >= 0 else None,
        _REASONS[reason],
    )


class DecisionList(Sequence[Decision]):
    """Decisions kept as columns, one array per field; a :class:`Decision` is made when one is read.

    A stress object has 20k decisions (200k with ``everything``), held from
    ``decide`` through the self-check: as objects, with their large ints, they
    cost about 190 bytes each and pin the allocator's pages; as columns, 49.
    Decisions are appended as rows, tuples of the columns' values (:meth:`put`);
    a list keeps them as tuples until it holds ``_TUPLES_MAX``, then makes its
    columns and appends each row's values to them. A Decision read is a new
    object with the stored values (equal, not the same). :meth:`column` gives
    one field of every decision, for loops over many of them. A list may be a
    *selection* of another's rows (:meth:`select`): it shares its storage and
    cannot grow.
    """

    __slots__ = ("_cols", "_picked", "_tuples")
    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __init__(self, decisions: Iterable[Decision] = ()) -> None:
        # The rows: as tuples until there are _TUPLES_MAX, then as columns (and no tuples).
        self._tuples: list[_Row] = []
        self._cols: list[array[int] | list[int]] | None = None
        # A selection's rows: their positions in the storage it shares.
        self._picked: array[int] | None = None
        for d in decisions:
            self.append(d)

    def put(self, row: _Row) -> None:
        """Append one decision, given as a row of the columns' values (:data:`_COLUMNS`)."""
        if self._picked is not None:
            raise TypeError("a selection of decisions does not grow")
        cols = self._cols
        if cols is None:
            tuples = self._tuples
            tuples.append(row)
            if len(tuples) >= _TUPLES_MAX:
                self._make_columns()
            return
        n = len(cols[_REASON_FIELD])  # appended last: a row cut short is found by it
        try:  # unrolled: a loop over the columns costs a stress object's 200k rows 30% of decide
            cols[0].append(row[0])
            cols[1].append(row[1])
            cols[2].append(row[2])
            cols[3].append(row[3])
            cols[4].append(row[4])
            cols[5].append(row[5])
            cols[6].append(row[6])
            cols[7].append(row[7])
            cols[8].append(row[8])
            cols[9].append(row[9])
            cols[10].append(row[10])
            cols[11].append(row[11])
        except OverflowError:
            self._widen(n)
            self.put(row)

    def add(
        self,
        reloc_section: int,
        index: int,
        section: int,
        offset: int,
        rtype: int,
        symbol: int,
        addend: int,
        bias: int,
        target_section: int | None,
        target_offset: int | None,
        replacement: int | None,
        reason: Reason,
    ) -> None:
        """Append one decision, given as Decision's fields (a target is a section and an offset, or none)."""
        if target_section is None or target_offset is None:
            target_section, target_offset = -1, 0
        row = (reloc_section, index, section, offset, rtype, symbol, addend, bias, target_section, target_offset)
        self.put((*row, -1 if replacement is None else replacement, _REASON_CODE[reason]))

    def append(self, d: Decision) -> None:
        self.add(
            d.reloc_section,
            d.index,
            d.section,
            d.offset,
            d.rtype,
            d.symbol,
            d.addend,
            d.bias,
            d.target_section,
            d.target_offset,
            d.replacement,
            d.reason,
        )

    def _make_columns(self) -> None:
        """The tuples' values as columns, which hold every row from here on."""
        tuples = self._tuples
        self._tuples = []  # a new list: a selection may hold the old one
        self._cols = [array(typecode) for _name, typecode in _COLUMNS]
        try:
            for k, col in enumerate(self._cols):
                col.extend(map(itemgetter(k), tuples))  # a C loop per column
        except OverflowError:
            self._cols = [list(map(itemgetter(k), tuples)) for k in range(len(_COLUMNS))]

    def _widen(self, n: int) -> None:
        """Every column as a list of its first ``n`` values (a value beyond a column's typecode came)."""
        assert self._cols is not None
        self._cols = [list(col[:n]) for col in self._cols]

    def select(self, reason: Reason) -> DecisionList:
        """The decisions with this reason, in order (a selection sharing this list's storage)."""
        code = _REASON_CODE[reason]
        picked = compress(count(), map(code.__eq__, self.column("reason")))  # C loops
        out = DecisionList()
        out._tuples, out._cols = self._tuples, self._cols
        out._picked = array("I", picked if self._picked is None else map(self._picked.__getitem__, picked))
        return out

    def column(self, name: str) -> Sequence[int]:
        """One field of every decision, in order (target_section and replacement: -1 stands for None;
        reason: the Reason's position in ``tuple(Reason)``)."""
        k = _FIELD[name]
        picked = self._picked
        if self._cols is None:
            tuples = self._tuples
            return list(map(itemgetter(k), tuples if picked is None else map(tuples.__getitem__, picked)))
        col = self._cols[k]
        if picked is None:
            return col
        if isinstance(col, list):
            return list(map(col.__getitem__, picked))
        return array(col.typecode, map(col.__getitem__, picked))

    def __len__(self) -> int:
        if self._picked is not None:
            return len(self._picked)
        return len(self._tuples) if self._cols is None else len(self._cols[_REASON_FIELD])

    @overload
    def __getitem__(self, index: int) -> Decision: ...
    @overload
    def __getitem__(self, index: slice) -> list[Decision]: ...
    def __getitem__(self, index: int | slice) -> Decision | list[Decision]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if not -n <= index < n:
            raise IndexError("decision index out of range")
        row = index % n if self._picked is None else self._picked[index]
        if self._cols is None:
            return _decision(*self._tuples[row])
        return _decision(*(col[row] for col in self._cols))

    def __iter__(self) -> Iterator[Decision]:
        picked, cols = self._picked, self._cols
        if cols is None:
            tuples = self._tuples
            return starmap(_decision, tuples if picked is None else map(tuples.__getitem__, picked))
        if picked is None:
            return starmap(_decision, zip(*cols, strict=True))
        return starmap(_decision, zip(*(map(col.__getitem__, picked) for col in cols), strict=True))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (DecisionList, list)):
            return len(self) == len(other) and all(map(eq, self, other))
        return NotImplemented

    def __repr__(self) -> str:
        return repr(list(self))


class Decisions(Record):
    """The decision list, plus counts for relocations not materialised."""

    __slots__ = ("counts", "items", "total")

    def __init__(
        self, items: Iterable[Decision] | None = None, counts: Counter[Reason] | None = None, total: int = 0
    ) -> None:
        self.items = items if isinstance(items, DecisionList) else DecisionList(items or ())
        self.counts: Counter[Reason] = Counter() if counts is None else counts
        self.total = total

    @property
    def retargets(self) -> DecisionList:
        return self.items.select(_RETARGET)

    def __iter__(self) -> Iterator[Decision]:
        return iter(self.items)


def nothing_to_retarget(funcs: FuncsTable, decisions: Decisions) -> str | None:
    """Why no relocation is to be retargeted (None when one is): what a summary says of an unchanged payload."""
    if decisions.counts[Reason.RETARGET]:
        return None
    nothing = funcs.replaces_nothing()
    if nothing is not None:
        return nothing
    kept = [(r.value, decisions.counts[r]) for r in (Reason.KEEP_EXEMPT, Reason.KEEP_OUT_OF_REACH)]
    how = ", ".join(f"{n} {reason}" for reason, n in kept if n)
    return f"every reference to a replaced function's entry must stay: {how or 'there are none'}"


class ExemptSections:
    """The keep list, matched by name (shell-style patterns).

    Literal names and ``prefix*`` patterns (all of the default list) are
    matched with string operations; any other pattern joins one regular
    expression, compiled only then (a compile costs a millisecond of every
    start-up). Verdicts are shared by every payload checked with the same
    list (a batch of a thousand payloads repeats the same section names).
    """

    _shared: ClassVar[dict[tuple[str, ...], tuple[_NameMatcher, dict[str, bool]]]] = {}

    def __init__(self, policy: Policy) -> None:
        self.patterns = policy.keep_patterns()
        entry = self._shared.get(self.patterns)
        if entry is None:
            entry = (_NameMatcher(self.patterns), {})
            self._shared[self.patterns] = entry
        self._match, self._cache = entry

    def __call__(self, name: str) -> bool:
        hit = self._cache.get(name)
        if hit is None:
            hit = self._match(name)
            if len(self._cache) < 100_000:  # bounded: section names come from input files
                self._cache[name] = hit
        return hit

    def uncached(self, name: str) -> bool:
        """The verdict, not kept: for a caller that asks once per section (decide).

        A stress object's names are its own (60k): kept, their strings were
        spread over the allocator's pages between decide's short-lived objects
        and held those pages through the rest of a rewrite (2.5 MiB of its
        peak on stress30k).
        """
        return self._match(name)


class _NameMatcher:
    """Whether a name matches one of some shell-style patterns (as fnmatch.fnmatchcase)."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        def glob(p: str) -> bool:
            return any(c in p for c in "*?[")

        self._names = frozenset(p for p in patterns if not glob(p))
        self._prefixes = tuple(p[:-1] for p in patterns if glob(p) and p.endswith("*") and not glob(p[:-1]))
        rest = [p for p in patterns if glob(p) and not (p.endswith("*") and not glob(p[:-1]))]
        self._regex = re.compile("|".join(fnmatch.translate(p) for p in rest)) if rest else None

    def __call__(self, name: str) -> bool:
        if name in self._names or name.startswith(self._prefixes):
            return True
        return self._regex is not None and self._regex.match(name) is not None


class _Entries:
    """The replacements in one section, looked up by offset in O(log n).

    A payload with thousands of replacements in one section must not make
    every relocation scan them all.
    """

    def __init__(self) -> None:
        self.exact: dict[int, int] = {}  # entry offset -> first replacement there
        self._spans: list[tuple[int, int, int]] = []  # (start, replacement, end)
        self._starts: list[int] | None = None
        self._reach: list[int] = []

    def add(self, n: int, rep: Replacement) -> None:
        self.exact.setdefault(rep.offset, n)
        self._spans.append((rep.offset, n, rep.offset + max(rep.size, 1)))
        self._starts = None

    def body(self, offset: int) -> int | None:
        """The replacement whose body holds ``offset``; of several (overlapping
        bodies, which a compiler never emits), the one that starts first."""
        if self._starts is None:
            self._spans.sort()
            self._starts = [start for start, _n, _end in self._spans]
            self._reach = list(accumulate((end for _s, _n, end in self._spans), max))
        # The first span whose running reach passes `offset` ends past it, and
        # holds it if it also starts at or before it.
        first = bisect_right(self._reach, offset)
        if first < bisect_right(self._starts, offset):
            return self._spans[first][1]
        return None


def decide(
    payload: Payload,
    funcs: FuncsTable,
    policy: Policy,
    *,
    everything: bool = False,
    sections: Iterable[int] | None = None,
) -> Decisions:
    """Decide every relocation that can reach a replacement's section.

    With ``everything``, also materialise a decision for every other
    relocation (for ``explain``); otherwise those are only counted.
    ``sections`` limits the work to these relocation sections.
    """
    elf = payload.elf
    syms = elf.symbols
    by_section: dict[int, _Entries] = {}
    for n, rep in enumerate(funcs.replacements):
        by_section.setdefault(rep.section, _Entries()).add(n, rep)
    shndx = syms.shndx
    interesting = set(compress(count(), map(by_section.__contains__, shndx)))  # C loops over 150k symbols
    exempt = ExemptSections(policy).uncached  # asked once per table with an entry reference
    out = Decisions()
    secs = elf.sections
    tables = elf.relocation_sections
    if sections is not None:
        only = set(sections)
        tables = [i for i in tables if i in only]
    entsize, size = secs.entsize, secs.size
    out.total = sum(size[i] // entsize[i] for i in tables if entsize[i])
    if everything:
        for ridx in tables:
            table = elf.relocations(ridx)
            _decide_entries(payload, ridx, table, 0, range(table.count), by_section, interesting, exempt, out.items)
    else:
        # Only entries naming a symbol in a replacement's section can reach one:
        # found a run of tables at a time (C loops), decided in table order.
        for ridx, run, base, todo in entries_naming(elf, tables, interesting):
            _decide_entries(payload, ridx, run, base, todo, by_section, interesting, exempt, out.items)
        out.counts[Reason.KEEP_NOT_REPLACED] += out.total - len(out.items)
    out.counts.update(map(_REASONS.__getitem__, out.items.column("reason")))
    return out


def _decide_entries(
    payload: Payload,
    ridx: int,
    columns: RelocTable | RelocationRun,
    base: int,
    todo: Iterable[int],
    by_section: dict[int, _Entries],
    interesting: set[int],
    exempt: Callable[[str], bool],
    out: DecisionList,
) -> None:
    """Append the decision for each entry ``todo`` of relocation table ``ridx``,
    whose entry ``i`` is row ``base + i`` of ``columns``."""
    elf, arch = payload.elf, payload.arch
    syms = elf.symbols
    shndx, values, extended = syms.shndx, syms.value, syms.extended
    types, classify = arch.types, arch.classify
    sec = elf.sections[elf.sections.info[ridx]]
    alloc = sec.alloc
    data = elf.section_data(sec.index)
    offsets, rtypes, rsyms, addends = columns.offsets, columns.types, columns.syms, columns.addends
    sec_exempt: bool | None = None  # the name is decoded only if an entry is met
    put = out.put
    for i in todo:
        row = base + i
        sym = rsyms[row]
        rtype = rtypes[row]
        offset = offsets[row]
        rt = types.get(rtype)
        known = rt is not None
        if addends is not None:
            addend = addends[row]
        elif known and alloc:
            addend = arch.implicit_addend(rtype, data, offset)
        else:
            addend = 0
        bias = 0
        if known and alloc:
            reloc = classify(rtype, sec, data, offset)
            assert reloc is not None  # a type Xen applies
            if reloc.note:
                if sym in interesting:
                    raise InputError(reloc.note)  # a reference that may need retargeting: refused
            else:  # else only displayed: no bias
                bias = reloc.bias
        s = shndx[sym]
        if C.SHN_UNDEF < s < C.SHN_LORESERVE or sym in extended:
            tsec, toff = s, values[sym] + addend + bias
        else:  # an undefined or absolute symbol: no target (the columns' stand-ins for None)
            tsec, toff = -1, 0
        rep_index = -1
        reason = _KEEP_NOT_REPLACED
        if rt is not None and rt.kind is _NO_EFFECT_KIND:
            reason = _KEEP_NO_EFFECT
        elif not alloc:
            reason = _KEEP_NON_ALLOC
        elif not known:
            reason = _KEEP_UNSUPPORTED
        elif tsec in by_section:  # -1 is no section's
            entries = by_section[tsec]
            entry = entries.exact.get(toff)
            if entry is not None:
                rep_index = entry
                if sec_exempt is None:
                    sec_exempt = exempt(sec.name)
                if sec_exempt:
                    reason = _KEEP_EXEMPT
                elif arch.reaches_hypervisor(rtype):
                    reason = _RETARGET
                else:  # retargeted, Xen would refuse the payload ("Overflow in relocation")
                    reason = _KEEP_OUT_OF_REACH
            else:
                body = entries.body(toff)
                if body is not None:
                    rep_index, reason = body, _KEEP_BODY
        put((ridx, i, sec.index, offset, rtype, sym, addend, bias, tsec, toff, rep_index, _REASON_CODE[reason]))

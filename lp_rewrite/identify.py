"""Pipeline stage 2, *identify*: which functions does the payload replace?

For every ``struct livepatch_func`` entry in ``.livepatch.funcs`` (the first
section of that name, as Xen uses):

* the relocation at ``new_addr`` locates the replacement's entry point
  (a function symbol, or a section symbol plus addend);
* the ``name`` string (read through its relocation) is the original's name
  exactly as Xen resolves it: ``foo``, or ``path/file.c#foo`` for a static;
* a relocation at ``old_addr`` against an undefined symbol is that same
  original, already imported; it is reused as the alias.

Entries without a ``new_addr`` (NOP patches) replace nothing and are skipped.
A payload without ``.livepatch.funcs`` that runs hooks (Xen's
``xen_action_hooks_nofunc``) replaces nothing either: with ``absent_ok`` it
gets an empty table (:attr:`FuncsTable.present` false).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

from lp_rewrite.arch import Kind
from lp_rewrite.elf import consts as C
from lp_rewrite.elf.file import Section
from lp_rewrite.errors import InputError, Location
from lp_rewrite.livepatch_abi import (
    FUNCS_SECTION,
    HOOK_SECTIONS,
    MAX_NAME_LEN,
    XEN_PAYLOAD_VERSION,
    FuncEntry,
    FuncLayout,
    func_layout,
    parse_funcs,
)
from lp_rewrite.read import Payload


class Replacement(NamedTuple):
    """One replaced function: where its new code is and what it replaces."""

    entry: int  # index in .livepatch.funcs
    original: str  # the `name` string (or the old_addr symbol's name)
    section: int  # section holding the new code
    offset: int  # entry point, as an offset in that section
    size: int  # new_size, or the symbol's size
    new_symbol: int  # symbol the new_addr relocation uses
    old_symbol: int | None  # undefined symbol bound to old_addr, if any
    old_literal: int  # old_addr's literal value (prelinked payloads), else 0

    @property
    def alias_name(self) -> str:
        """The name the alias must carry (old_addr's symbol wins: Xen patches old_addr)."""
        return self.original


class FieldReloc(NamedTuple):
    """A relocation that writes a field of ``.livepatch.funcs``: what Xen stores there is S + A."""

    offset: int  # in the section
    symbol: int
    rtype: int
    addend: int


# A slotted class, not a dataclass: creating one costs about a millisecond of every start-up.
class FuncsTable:
    """The ``.livepatch.funcs`` table as :func:`identify` read it."""

    __slots__ = ("layout", "nop_entries", "present", "replacements", "section")

    def __init__(
        self,
        section: Section,
        layout: FuncLayout,
        replacements: list[Replacement],
        nop_entries: list[int],
        # False: the payload has no .livepatch.funcs (hooks only); ``section`` is then the null section.
        present: bool = True,
    ) -> None:
        self.section = section
        self.layout = layout
        self.replacements = replacements
        self.nop_entries = nop_entries
        self.present = present

    @property
    def count(self) -> int:
        return self.section.sh_size // self.layout.entry_size

    def replaces_nothing(self) -> str | None:
        """Why this table replaces no function (None when it replaces one)."""
        if not self.present:
            return f"no {FUNCS_SECTION} section: a hooks-only payload replaces no function"
        if not self.replacements:
            n = len(self.nop_entries)
            return f"its {n} {FUNCS_SECTION} entr{'y is a NOP entry' if n == 1 else 'ies are NOP entries'}, no new_addr"
        return None


def field_relocations(payload: Payload, funcs: Section, *, strict: bool = True) -> list[FieldReloc]:
    """The relocations that write into .livepatch.funcs, in file order (REL addends read by the arch).

    A relocation that writes nothing (``R_*_NONE``) is left out: Xen reads
    the field's own bytes. ``strict`` raises InputError for two relocations
    on one field, or an addend the arch cannot read; otherwise those are
    kept, and skipped, respectively (the loader model's reading: what Xen
    would look up, not whether the tool can rewrite it).
    """
    elf, arch = payload.elf, payload.arch
    data = elf.section_data(funcs.index)
    out: list[FieldReloc] = []
    seen: set[int] = set()
    for idx in elf.tables_relocating(funcs.index):
        table = elf.relocations(idx)
        for i in range(table.count):
            off, rtype, sym = table.offsets[i], table.types[i], table.syms[i]
            if rtype in arch.types and arch.types[rtype].kind is Kind.NONE:
                continue  # writes nothing: Xen reads the field's own bytes
            if table.addends is not None:
                addend = table.addends[i]
            elif strict:
                addend = arch.implicit_addend(rtype, data, off)
            else:
                try:
                    addend = arch.implicit_addend(rtype, data, off)
                except InputError:
                    continue
            if strict and off in seen:
                raise InputError(
                    f"{FUNCS_SECTION}+{off:#x}: two relocations apply to the same field",
                    location=Location(FUNCS_SECTION, off),
                )
            seen.add(off)
            out.append(FieldReloc(off, sym, rtype, addend))
    return out


class _Entry:
    """One entry being read: its fields' relocations and places (errors say which field)."""

    def __init__(self, payload: Payload, layout: FuncLayout, entry: FuncEntry, relocs: dict[int, FieldReloc]):
        self.payload, self.layout, self.entry, self.relocs = payload, layout, entry, relocs

    def location(self, field: str | None = None, symbol: int | None = None) -> Location:
        """The field (the whole entry when None) as an error's location."""
        if field is None:
            offset, width = self.entry.offset, self.layout.entry_size
        else:
            offset, width = self.layout.field(self.entry.index, field)
        name = self.payload.elf.symbols.name(symbol) if symbol else None
        return Location(FUNCS_SECTION, offset, width, name or None)  # a section symbol has no name

    def pointer(self, field: str) -> FieldReloc | None:
        """The relocation that stores a pointer field, if any (it must store an absolute address)."""
        rel = self.relocs.get(self.layout.field(self.entry.index, field)[0])
        arch = self.payload.arch
        if rel is not None and rel.rtype != arch.pointer_type:
            raise InputError(
                f"{field} is relocated with {arch.type_name(rel.rtype)}, not "
                f"{arch.type_name(arch.pointer_type)}: Xen would not store an address there",
                location=self.location(field, rel.symbol),
            )
        return rel


def _string_bounds(payload: Payload, section: int, offset: int) -> tuple[int, int] | None:
    """The file bytes a name string at ``section+offset`` may span (its NUL and the name bound included),
    or None when the offset is not inside a section with contents."""
    secs = payload.elf.sections
    size = secs.size[section]
    if not secs.has_file_data(section) or not 0 <= offset < size:
        return None
    start = secs.offset[section] + offset
    return start, min(secs.offset[section] + size, start + MAX_NAME_LEN + 1)


def _place(payload: Payload, section: int, offset: int) -> str:
    return f"{payload.elf.sections.name(section)}+{offset:#x}"


def _read_string(
    payload: Payload, places: _RelocatedPlaces, section: int, offset: int, at: Callable[[], Location]
) -> str:
    """The name string at ``section+offset``; errors are located at the pointer field ``at()``
    (built only for an error: a payload has an entry per replaced function)."""
    bounds = _string_bounds(payload, section, offset)
    if bounds is None:
        raise InputError(f"name pointer {_place(payload, section, offset)} is outside its section", location=at())
    # Search the file bytes in place, within the section and the name bound:
    # copying the rest of the section for every entry would be quadratic.
    start, stop = bounds
    end = payload.elf.data.find(b"\0", start, stop)
    if end < 0:
        if stop - start > MAX_NAME_LEN:
            raise InputError(
                f"name string at {_place(payload, section, offset)} is longer than {MAX_NAME_LEN} bytes", location=at()
            )
        raise InputError(f"name string at {_place(payload, section, offset)} has no NUL terminator", location=at())
    if end == start:
        raise InputError(f"name string at {_place(payload, section, offset)} is empty", location=at())
    places.refuse_overlap(section, offset, offset + (end - start), at)
    try:
        return payload.elf.data[start:end].decode("ascii")
    except UnicodeDecodeError:
        raise InputError(f"name string at {_place(payload, section, offset)} is not ASCII", location=at()) from None


def _nop_name_unrelocated(
    payload: Payload, places: _RelocatedPlaces, section: int, offset: int, at: Callable[[], Location]
) -> None:
    """A NOP entry's name is only read by Xen: refuse it only if a relocation writes into it."""
    bounds = _string_bounds(payload, section, offset)
    if bounds is None:
        return
    start, stop = bounds
    end = payload.elf.data.find(b"\0", start, stop)
    if end >= 0:
        places.refuse_overlap(section, offset, offset + (end - start), at)


class _RelocatedPlaces:
    """The places relocations write, per section (built on first use, found by bisection).

    Xen reads a ``name`` string after relocating: a relocation into it, or
    into its NUL, changes the name Xen looks up, so the file's bytes are not it.
    """

    _WIDEST = 8  # bytes of the widest place a relocation writes

    def __init__(self, payload: Payload) -> None:
        self.payload = payload
        self._spans: dict[int, tuple[list[int], list[int]]] = {}

    def _section(self, section: int) -> tuple[list[int], list[int]]:
        spans = self._spans.get(section)
        if spans is None:
            elf, types = self.payload.elf, self.payload.arch.types
            pairs = sorted(
                (off, off + (types[t].width if t in types else 4))
                for idx in elf.tables_relocating(section)
                for off, t in zip(elf.relocations(idx).offsets, elf.relocations(idx).types, strict=True)
            )
            spans = self._spans[section] = ([a for a, _ in pairs], [b for _, b in pairs])
        return spans

    def refuse_overlap(self, section: int, start: int, nul: int, at: Callable[[], Location]) -> None:
        starts, ends = self._section(section)
        for k in range(bisect_left(starts, start - self._WIDEST), bisect_right(starts, nul)):
            if ends[k] > start:
                name = self.payload.elf.sections.name(section)
                raise InputError(
                    f"the name string at {name}+{start:#x} is written by a relocation at "
                    f"{name}+{starts[k]:#x}: Xen reads the name after relocating",
                    location=at(),
                )


def identify(payload: Payload, *, absent_ok: bool = False) -> FuncsTable:
    """Read .livepatch.funcs; raise InputError when it cannot be understood.

    With ``absent_ok``, a payload with no such section but a hook section is
    an empty table; one with neither is refused, as Xen refuses it. The error
    says where it is (:attr:`InputError.location`): the section, or the
    entry's field.
    """
    elf = payload.elf
    funcs = elf.section_by_name(FUNCS_SECTION)
    if funcs is None:
        if not absent_ok:
            raise InputError(f"no {FUNCS_SECTION} section: the payload replaces no function")
        if not any(elf.section_by_name(h) is not None for h in HOOK_SECTIONS):
            raise InputError(
                f"neither {FUNCS_SECTION} nor a .livepatch.hooks.* section: Xen refuses the payload "
                "('Nothing to patch')"
            )
        layout = func_layout(XEN_PAYLOAD_VERSION, elf.layout.ptr_size)
        return FuncsTable(elf.sections[0], layout, [], [], present=False)
    whole = Location(FUNCS_SECTION)
    if not funcs.has_file_data or funcs.sh_size == 0:  # NOBITS, or an inactive SHT_NULL header
        raise InputError(f"{FUNCS_SECTION} is empty", location=whole)
    if not funcs.alloc:
        # prepare_payload() reads the entries through the section's load address.
        raise InputError(
            f"{FUNCS_SECTION} is not SHF_ALLOC: Xen would not load the table it patches from", location=whole
        )
    shape = parse_funcs(elf.section_data(funcs.index), elf.layout.ptr_size)
    if shape.problems:
        problem = shape.problems[0]
        raise InputError(problem.describe(), location=Location(FUNCS_SECTION, problem.offset, 1))
    assert shape.layout is not None
    relocs = {r.offset: r for r in field_relocations(payload, funcs)}
    replacements: list[Replacement] = []
    nops: list[int] = []
    places = _RelocatedPlaces(payload)
    by_entry_point: dict[tuple[int, int], Replacement] = {}
    for entry in shape.entries:
        e = _Entry(payload, shape.layout, entry, relocs)
        try:
            rep = _replacement(e, places)
            if rep is None:
                nops.append(entry.index)
                continue
            prior = by_entry_point.get((rep.section, rep.offset))
            if prior is not None and prior.original != rep.original:
                raise InputError(
                    f"{elf.sections[rep.section].name}+{rep.offset:#x} already replaces {prior.original!r} "
                    f"(entry {prior.entry}); one function cannot stand for two originals",
                    location=e.location("new_addr", rep.new_symbol),
                )
        except InputError as exc:
            raise exc.prefixed(f"{FUNCS_SECTION} entry {entry.index}") from None
        by_entry_point[(rep.section, rep.offset)] = rep
        replacements.append(rep)
    return FuncsTable(funcs, shape.layout, replacements, nops)


def _replacement(e: _Entry, places: _RelocatedPlaces) -> Replacement | None:
    """What entry ``e`` replaces, or None for a NOP entry (no new_addr)."""
    payload, layout, entry = e.payload, e.layout, e.entry
    elf, syms = payload.elf, payload.elf.symbols
    new = e.pointer("new_addr")
    if new is None:
        if entry.new_addr:
            raise InputError(
                f"new_addr holds the literal {entry.new_addr:#x} with no relocation", location=e.location("new_addr")
            )
        # Xen still reads a NOP entry's name (resolve_old_address()): it must not change under the rewrite.
        name_rel = e.pointer("name")
        if name_rel is not None and syms.is_defined_in_section(name_rel.symbol):
            at = partial(e.location, "name", name_rel.symbol)
            _nop_name_unrelocated(
                payload, places, syms.shndx[name_rel.symbol], syms.value[name_rel.symbol] + name_rel.addend, at
            )
        return None
    if not syms.is_defined_in_section(new.symbol):
        raise InputError(
            f"new_addr refers to {syms.name(new.symbol)!r}, which is not defined in the payload",
            location=e.location("new_addr", new.symbol),
        )
    section = syms.shndx[new.symbol]
    offset = syms.value[new.symbol] + new.addend
    secs = elf.sections
    if not secs.flags[section] & C.SHF_EXECINSTR or not 0 <= offset < secs.size[section]:
        raise InputError(
            f"new_addr points to {_place(payload, section, offset)}, which is not payload code",
            location=e.location("new_addr", new.symbol),
        )
    old = e.pointer("old_addr")
    old_symbol: int | None = None
    old_literal = 0
    if old is not None:
        if syms.is_undefined(old.symbol) and old.symbol:
            old_symbol = old.symbol
        elif syms.is_absolute(old.symbol):
            # What the relocation stores in the pointer field: S + A, modulo the pointer width.
            old_literal = (syms.value[old.symbol] + old.addend) % (1 << (8 * layout.ptr_size))
        else:
            raise InputError(
                f"old_addr refers to {syms.name(old.symbol)!r}, defined in the payload itself",
                location=e.location("old_addr", old.symbol),
            )
    else:
        old_literal = entry.old_addr
    name_rel = e.pointer("name")
    if old_symbol is not None:
        # Xen patches old_addr, which this symbol resolves to by name. It
        # still reads the name string (prepare_payload, its messages): a
        # pointer outside its section would read whatever is loaded next.
        if name_rel is not None and syms.is_defined_in_section(name_rel.symbol):
            at = partial(e.location, "name", name_rel.symbol)
            _read_string(
                payload, places, syms.shndx[name_rel.symbol], syms.value[name_rel.symbol] + name_rel.addend, at
            )
        original = syms.name(old_symbol)
    elif name_rel is not None:
        at = partial(e.location, "name", name_rel.symbol)
        if not syms.is_defined_in_section(name_rel.symbol):
            raise InputError("the name pointer refers to an undefined symbol", location=at())
        original = _read_string(
            payload, places, syms.shndx[name_rel.symbol], syms.value[name_rel.symbol] + name_rel.addend, at
        )
    else:
        raise InputError(
            "neither a name string nor an old_addr symbol names the original function", location=e.location()
        )
    size = entry.new_size or syms.size[new.symbol]
    return Replacement(entry.index, original, section, offset, size, new.symbol, old_symbol, old_literal)

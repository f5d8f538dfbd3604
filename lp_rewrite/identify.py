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

import struct
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import NamedTuple

from lp_rewrite.arch import Kind
from lp_rewrite.elf.file import Section
from lp_rewrite.errors import InputError
from lp_rewrite.payload import (
    FUNCS_SECTION,
    HOOK_SECTIONS,
    MAX_NAME_LEN,
    SUPPORTED_VERSIONS,
    XEN_PAYLOAD_VERSION,
    FuncLayout,
    func_layout,
    version_offset,
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
    symbol: int
    rtype: int
    addend: int


@dataclass
class FuncsTable:
    section: Section
    layout: FuncLayout
    replacements: list[Replacement]
    nop_entries: list[int]
    # False: the payload has no .livepatch.funcs (hooks only); ``section`` is then the null section.
    present: bool = True

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


def _field_relocations(payload: Payload, funcs: Section) -> dict[int, FieldReloc]:
    """Relocations that write into .livepatch.funcs, by offset."""
    elf, arch = payload.elf, payload.arch
    data = elf.section_data(funcs.index)
    out: dict[int, FieldReloc] = {}
    for idx in elf.relocation_sections:
        if elf.sections.info[idx] != funcs.index:
            continue
        table = elf.relocations(idx)
        for i in range(table.count):
            off, rtype, sym = table.offsets[i], table.types[i], table.syms[i]
            if rtype in arch.types and arch.types[rtype].kind is Kind.NONE:
                continue  # writes nothing: Xen reads the field's own bytes
            addend = table.addends[i] if table.addends is not None else arch.implicit_addend(rtype, data, off)
            if off in out:
                raise InputError(f"{FUNCS_SECTION}+{off:#x}: two relocations apply to the same field")
            out[off] = FieldReloc(sym, rtype, addend)
    return out


def _pointer(payload: Payload, relocs: dict[int, FieldReloc], offset: int, where: str, field: str) -> FieldReloc | None:
    """The relocation that stores a pointer field, if any (it must store an absolute address)."""
    rel = relocs.get(offset)
    arch = payload.arch
    if rel is not None and rel.rtype != arch.pointer_type:
        raise InputError(
            f"{where}: {field} is relocated with {arch.type_name(rel.rtype)}, not "
            f"{arch.type_name(arch.pointer_type)}: Xen would not store an address there"
        )
    return rel


def _detect_layout(payload: Payload, funcs: Section) -> FuncLayout:
    ptr = payload.elf.layout.ptr_size
    data = payload.elf.section_data(funcs.index)
    voff = version_offset(ptr)
    if funcs.sh_size <= voff:
        raise InputError(f"{FUNCS_SECTION} is {funcs.sh_size} bytes, too small for one entry")
    version = data[voff]
    if version not in SUPPORTED_VERSIONS:
        raise InputError(
            f"{FUNCS_SECTION} entry 0: payload version {version} is not supported "
            f"(this tool knows versions {', '.join(map(str, SUPPORTED_VERSIONS))})"
        )
    layout = func_layout(version, ptr)
    if funcs.sh_size % layout.entry_size:
        raise InputError(
            f"{FUNCS_SECTION} size {funcs.sh_size} is not a multiple of the version-{version} "
            f"entry size {layout.entry_size}"
        )
    for i in range(funcs.sh_size // layout.entry_size):
        v = data[i * layout.entry_size + voff]
        if v != version:
            raise InputError(f"{FUNCS_SECTION} entry {i}: payload version {v} differs from entry 0's {version}")
    return layout


def _read_string(payload: Payload, places: _RelocatedPlaces, section: int, offset: int, where: str) -> str:
    sec = payload.elf.sections[section]
    if not sec.has_file_data or not 0 <= offset < sec.sh_size:
        raise InputError(f"{where}: name pointer {sec.name}+{offset:#x} is outside its section")
    # Search the file bytes in place, within the section and the name bound:
    # copying the rest of the section for every entry would be quadratic.
    start = sec.sh_offset + offset
    stop = min(sec.sh_offset + sec.sh_size, start + MAX_NAME_LEN + 1)
    end = payload.elf.data.find(b"\0", start, stop)
    if end < 0:
        if stop - start > MAX_NAME_LEN:
            raise InputError(f"{where}: name string at {sec.name}+{offset:#x} is longer than {MAX_NAME_LEN} bytes")
        raise InputError(f"{where}: name string at {sec.name}+{offset:#x} has no NUL terminator")
    if end == start:
        raise InputError(f"{where}: name string at {sec.name}+{offset:#x} is empty")
    places.refuse_overlap(section, offset, offset + (end - start), where)
    try:
        return payload.elf.data[start:end].decode("ascii")
    except UnicodeDecodeError:
        raise InputError(f"{where}: name string at {sec.name}+{offset:#x} is not ASCII") from None


def _nop_name_unrelocated(payload: Payload, places: _RelocatedPlaces, section: int, offset: int, where: str) -> None:
    """A NOP entry's name is only read by Xen: refuse it only if a relocation writes into it."""
    sec = payload.elf.sections[section]
    if not sec.has_file_data or not 0 <= offset < sec.sh_size:
        return
    start = sec.sh_offset + offset
    end = payload.elf.data.find(b"\0", start, min(sec.sh_offset + sec.sh_size, start + MAX_NAME_LEN + 1))
    if end >= 0:
        places.refuse_overlap(section, offset, offset + (end - start), where)


class _RelocatedPlaces:
    """The places relocations write, per section (built on first use, found by bisection).

    Xen reads a ``name`` string after relocating: a relocation into it, or
    into its NUL, changes the name Xen looks up, so the file's bytes are not it.
    """

    _WIDEST = 8  # bytes of the widest place a relocation writes

    def __init__(self, payload: Payload) -> None:
        self.payload = payload
        self._by_target: dict[int, list[int]] | None = None
        self._spans: dict[int, tuple[list[int], list[int]]] = {}

    def _section(self, section: int) -> tuple[list[int], list[int]]:
        spans = self._spans.get(section)
        if spans is None:
            elf, types = self.payload.elf, self.payload.arch.types
            if self._by_target is None:
                self._by_target = {}
                for idx in elf.relocation_sections:
                    self._by_target.setdefault(elf.sections.info[idx], []).append(idx)
            pairs = sorted(
                (off, off + (types[t].width if t in types else 4))
                for idx in self._by_target.get(section, ())
                for off, t in zip(elf.relocations(idx).offsets, elf.relocations(idx).types, strict=True)
            )
            spans = self._spans[section] = ([a for a, _ in pairs], [b for _, b in pairs])
        return spans

    def refuse_overlap(self, section: int, start: int, nul: int, where: str) -> None:
        starts, ends = self._section(section)
        for k in range(bisect_left(starts, start - self._WIDEST), bisect_right(starts, nul)):
            if ends[k] > start:
                name = self.payload.elf.sections[section].name
                raise InputError(
                    f"{where}: the name string at {name}+{start:#x} is written by a relocation at "
                    f"{name}+{starts[k]:#x}: Xen reads the name after relocating"
                )


def identify(payload: Payload, *, absent_ok: bool = False) -> FuncsTable:
    """Read .livepatch.funcs; raise InputError when it cannot be understood.

    With ``absent_ok``, a payload with no such section but a hook section is
    an empty table; one with neither is refused, as Xen refuses it.
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
    if not funcs.has_file_data or funcs.sh_size == 0:  # NOBITS, or an inactive SHT_NULL header
        raise InputError(f"{FUNCS_SECTION} is empty")
    if not funcs.alloc:
        # prepare_payload() reads the entries through the section's load address.
        raise InputError(f"{FUNCS_SECTION} is not SHF_ALLOC: Xen would not load the table it patches from")
    layout = _detect_layout(payload, funcs)
    relocs = _field_relocations(payload, funcs)
    data = elf.section_data(funcs.index)
    syms = elf.symbols
    ptr_fmt = "<Q" if layout.ptr_size == 8 else "<I"
    replacements: list[Replacement] = []
    nops: list[int] = []
    places = _RelocatedPlaces(payload)
    by_entry_point: dict[tuple[int, int], Replacement] = {}
    for i in range(funcs.sh_size // layout.entry_size):
        base = i * layout.entry_size
        where = f"{FUNCS_SECTION} entry {i}"
        new = _pointer(payload, relocs, base + layout.new_addr, where, "new_addr")
        if new is None:
            literal = struct.unpack_from(ptr_fmt, data, base + layout.new_addr)[0]
            if literal:
                raise InputError(f"{where}: new_addr holds the literal {literal:#x} with no relocation")
            # Xen still reads a NOP entry's name (resolve_old_address()): it must not change under the rewrite.
            name_rel = _pointer(payload, relocs, base + layout.name, where, "name")
            if name_rel is not None and syms.is_defined_in_section(name_rel.symbol):
                _nop_name_unrelocated(
                    payload, places, syms.shndx[name_rel.symbol], syms.value[name_rel.symbol] + name_rel.addend, where
                )
            nops.append(i)
            continue
        if not syms.is_defined_in_section(new.symbol):
            raise InputError(
                f"{where}: new_addr refers to {syms.name(new.symbol)!r}, which is not defined in the payload"
            )
        section = syms.shndx[new.symbol]
        offset = syms.value[new.symbol] + new.addend
        sec = elf.sections[section]
        if not sec.executable or not 0 <= offset < sec.sh_size:
            raise InputError(f"{where}: new_addr points to {sec.name}+{offset:#x}, which is not payload code")
        old = _pointer(payload, relocs, base + layout.old_addr, where, "old_addr")
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
                    f"{where}: old_addr refers to {syms.name(old.symbol)!r}, defined in the payload itself"
                )
        else:
            old_literal = struct.unpack_from(ptr_fmt, data, base + layout.old_addr)[0]
        name_rel = _pointer(payload, relocs, base + layout.name, where, "name")
        if old_symbol is not None:
            # Xen patches old_addr, which this symbol resolves to by name. It
            # still reads the name string (prepare_payload, its messages): a
            # pointer outside its section would read whatever is loaded next.
            if name_rel is not None and syms.is_defined_in_section(name_rel.symbol):
                _read_string(
                    payload, places, syms.shndx[name_rel.symbol], syms.value[name_rel.symbol] + name_rel.addend, where
                )
            original = syms.name(old_symbol)
        elif name_rel is not None:
            if not syms.is_defined_in_section(name_rel.symbol):
                raise InputError(f"{where}: the name pointer refers to an undefined symbol")
            original = _read_string(
                payload, places, syms.shndx[name_rel.symbol], syms.value[name_rel.symbol] + name_rel.addend, where
            )
        else:
            raise InputError(f"{where}: neither a name string nor an old_addr symbol names the original function")
        new_size = struct.unpack_from("<I", data, base + layout.new_size)[0]
        size = new_size or syms.size[new.symbol]
        rep = Replacement(i, original, section, offset, size, new.symbol, old_symbol, old_literal)
        prior = by_entry_point.get((section, offset))
        if prior is not None and prior.original != original:
            raise InputError(
                f"{where}: {sec.name}+{offset:#x} already replaces {prior.original!r} (entry {prior.entry}); "
                f"one function cannot stand for two originals"
            )
        by_entry_point[(section, offset)] = rep
        replacements.append(rep)
    return FuncsTable(funcs, layout, replacements, nops)

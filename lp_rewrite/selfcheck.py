"""Pipeline stage 6, the self-check: re-read the written bytes and prove the edit.

Run on every rewrite before the output is renamed into place. It parses the
new image from scratch and checks, against the input:

* the same sections (names, types, flags, links) with identical contents,
  except the symbol/string tables and the relocation data the plan touched;
* every input symbol is still there, identical but for the planned renames;
  every alias is an undefined symbol carrying the original's exact name (or,
  in a prelinked payload, an SHN_ABS one holding the original's address);
* every relocation has the same place and type; only the retargeted ones name
  a different symbol (their alias) with the planned addend;
* identifying and deciding the *output* finds the same replacements and
  nothing left to retarget (so a second run is a no-op).
"""

from __future__ import annotations

import mmap
import struct
from array import array
from collections.abc import Iterable, Iterator, Sequence
from itertools import compress

from lp_rewrite.apply import Plan
from lp_rewrite.decide import decide
from lp_rewrite.elf import consts as C
from lp_rewrite.elf.editor import IndexMap
from lp_rewrite.elf.file import ElfFile
from lp_rewrite.errors import VerificationError
from lp_rewrite.identify import FuncsTable, identify
from lp_rewrite.policy import Policy
from lp_rewrite.read import Payload, read_payload


def _fail(msg: str) -> VerificationError:
    return VerificationError(f"self-check of the rewritten payload failed: {msg}")


def check_rewrite(
    inp: Payload,
    funcs: FuncsTable,
    plan: Plan,
    data: bytes | mmap.mmap,
    policy: Policy,
    candidates: Iterable[int] | None = None,
) -> Payload:
    """Parse ``data`` and check it is exactly ``inp`` with ``plan`` applied.

    ``candidates``: the relocation sections the input's decisions looked at.
    Every other section is proven byte-identical and its symbols unchanged, so
    only these are decided again.
    """
    # The editor's map of input to output symbol indices, as apply() recorded it.
    symbol_map = plan.symbol_map if plan.symbol_map is not None else IndexMap(inp.elf.symbols.count)
    # The input's Section objects the earlier stages made (one per table a
    # stress object's deciding looked at): the checks below read columns.
    inp.elf.sections.forget()
    try:
        out = read_payload(data, name=f"{inp.name} (rewritten)", xen_limits=policy.xen_limits, check_relocations=False)
    except Exception as exc:  # the output must parse; anything else is our bug
        raise _fail(f"the output does not parse: {exc}") from exc
    # A mapped output's pages are let go after each step that reads much of it.
    out.elf.release()
    # First the headers and unchanged contents: it makes the output's header
    # columns the input's where they are equal, before the relocation entries'
    # checks read the output's symbol table and relocation runs (a stress
    # object's peak was both copies of the header columns and those at once).
    _check_sections(inp, out, plan, symbol_map)
    try:
        # Entries are validated only where they differ from the input's: every
        # other relocation table was just proven byte-identical to a checked one.
        out.elf.check_relocations(_edited_relocation_tables(out, plan, symbol_map))
    except Exception as exc:  # the output must parse; anything else is our bug
        raise _fail(f"the output does not parse: {exc}") from exc
    out.elf.release()
    if plan.addralign:
        _check_notes_aligned(out, plan)
    _check_symbols(inp, out, plan, symbol_map)
    _check_relocations(inp, out, plan, symbol_map)
    out.elf.release()
    out_funcs = identify(out, absent_ok=True)  # a hooks-only payload whose notes were aligned
    out.elf.release()
    if [(r.original, r.entry) for r in out_funcs.replacements] != [(r.original, r.entry) for r in funcs.replacements]:
        raise _fail("the output's .livepatch.funcs no longer identifies the same replacements")
    left = decide(out, out_funcs, policy, sections=candidates).retargets
    if left:
        d = left[0]
        raise _fail(f"{out.elf.sections[d.section].name}+{d.offset:#x} still references a replacement's entry")
    return out


def _edited_relocation_tables(payload: Payload, plan: Plan, symbol_map: IndexMap) -> list[int]:
    """The relocation tables the editor rewrote (the same indices in both files).

    All those naming the symbol table when symbols moved, else the retargets' own.
    """
    if symbol_map.moves:
        return payload.elf.relocation_tables
    return sorted(set(plan.retargets.column("reloc_section")))


def _check_notes_aligned(out: Payload, plan: Plan) -> None:
    """Every note the plan aligned is read by Xen from a 4-aligned address, loaded and in the file."""
    from lp_rewrite.notes import misaligned_notes

    for note in misaligned_notes(out.elf, out.name):
        if note.section.index in plan.addralign:
            raise _fail(f"section [{note.section.index}] {note.section.name!r} is still misaligned: {note.describe()}")


def _check_sections(inp: Payload, out: Payload, plan: Plan, symbol_map: IndexMap) -> None:
    a, b = inp.elf, out.elf
    sa, sb = a.sections, b.sections
    n = len(sa)
    if n != len(sb):
        raise _fail(f"section count changed ({n} -> {len(sb)})")
    if sa.names.data != sb.names.data:
        # One table may hold both section and symbol names: then it only grows at its end.
        shared = a.symbols.strtab_index == a.shstrndx
        if not (shared and sb.names.data.startswith(sa.names.data)):
            raise _fail("the section name table changed")
    for column in ("name_off", "type", "flags", "link", "entsize"):
        if getattr(sa, column) != getattr(sb, column):
            k = next(i for i, (x, y) in enumerate(zip(getattr(sa, column), getattr(sb, column), strict=True)) if x != y)
            raise _fail(f"section [{k}] {sa.name(k)!r}: header field {column} changed")
    # sh_addralign: the input's, but for the planned edits (--align-notes).
    want_align = array(sa.addralign.typecode, sa.addralign)
    for k, value in plan.addralign.items():
        want_align[k] = value
    if sb.addralign != want_align:
        k = next(i for i, (x, y) in enumerate(zip(want_align, sb.addralign, strict=True)) if x != y)
        raise _fail(f"section [{k}] {sa.name(k)!r}: sh_addralign is {sb.addralign[k]}, the plan says {want_align[k]}")
    syms = a.symbols
    grown = {a.symtab_index, syms.strtab_index}
    if syms.shndx_section is not None:
        grown.add(syms.shndx_section)
    if sa.info != sb.info:
        for k, (x, y) in enumerate(zip(sa.info, sb.info, strict=True)):
            # A group's signature symbol is renumbered with every other symbol reference.
            signature = sa.type[k] == C.SHT_GROUP and sa.link[k] == a.symtab_index and y == symbol_map(x)
            if x != y and k not in grown and not signature:
                raise _fail(f"section [{k}] {sa.name(k)!r}: sh_info changed")
    if sa.size != sb.size:
        for k, (x, y) in enumerate(zip(sa.size, sb.size, strict=True)):
            if x != y and k not in grown:
                raise _fail(f"section [{k}] {sa.name(k)!r}: size changed")
    # The output's header columns found equal to the input's are the input's
    # from here on (the same values): a stress object's second copy of them is
    # megabytes the rest of the check would hold for nothing.
    for column in ("name_off", "type", "flags", "link", "entsize", "addralign", "info", "addr"):
        if getattr(sa, column) == getattr(sb, column):
            setattr(sb, column, getattr(sa, column))
    # Contents: the relocation data the plan touched is checked entry by entry
    # (_check_relocations); REL places re-encoded with a new addend are masked.
    differ = set(grown) | set(_edited_relocation_tables(inp, plan, symbol_map))
    rel_places: dict[int, list[int]] = {}
    ret = plan.retargets
    for table, section, offset in zip(
        ret.column("reloc_section"), ret.column("section"), ret.column("offset"), strict=True
    ):
        if sa.type[table] == C.SHT_REL:
            rel_places.setdefault(section, []).append(offset)
    same = bytearray(sa.data_mask)  # a byte per section, not a list of 100k ints
    for k in differ | rel_places.keys():
        same[k] = 0
    _compare_unchanged(a, b, same)
    for k, places in rel_places.items():
        old, new = bytearray(a.section_data(k)), bytearray(b.section_data(k))
        for off in places:
            old[off : off + 4] = new[off : off + 4] = bytes(4)
        if old != new:
            raise _fail(f"section [{k}] {sa.name(k)!r}: contents changed")


_WINDOW = 1 << 20


def _same_bytes(x: ElfFile, i: int, y: ElfFile, j: int, n: int) -> bool:
    """x[i:i+n] == y[j:j+n], a window at a time: bytes compares are memcmp,
    memoryview compares are not, and whole-run slices would copy the file."""
    for k in range(0, n, _WINDOW):
        m = min(_WINDOW, n - k)
        same = x.data[i + k : i + k + m] == y.data[j + k : j + k + m]
        y.release(j + k, j + k + m)
        if not same:
            return False
    return True


def _compare_unchanged(a: ElfFile, b: ElfFile, wanted: bytes | bytearray) -> None:
    """The sections marked in ``wanted`` (a byte per section) must be byte-identical,
    compared a run at a time.

    The writer moves every section by the growth of the tables before it, so
    sections adjacent in the file share one shift: one comparison covers a
    whole run of them. A run that differs (padding between sections is not
    content) is compared section by section to find the culprit.
    """
    sa, sb = a.sections, b.sections
    # File order of every section with contents, to know which ones are adjacent
    # (the input's file order is sorted once, for the writer, and kept as an array).
    order = array("I", compress(sa.file_order, map(sa.data_mask.__getitem__, sa.file_order)))
    # The pending run is order[first:last + 1] (positions, not a list of its sections).
    first = last = -1

    def flush() -> None:
        if first < 0:
            return
        lo_k, hi_k = order[first], order[last]
        lo, hi = sa.offset[lo_k], sa.offset[hi_k] + sa.size[hi_k]
        shift = sb.offset[lo_k] - lo
        if not _same_bytes(a, lo, b, lo + shift, hi - lo):
            for k in order[first : last + 1]:
                if a.section_data(k) != b.section_data(k):
                    raise _fail(f"section [{k}] {sa.name(k)!r}: contents changed")
            b.release(lo + shift, hi + shift)

    for pos, k in enumerate(order):  # a run only grows by the next section in file order
        if not wanted[k]:
            flush()
            first = -1
            continue
        if first >= 0:
            prev = order[last]
            gap_a = sa.offset[k] - (sa.offset[prev] + sa.size[prev])
            gap_b = sb.offset[k] - (sb.offset[prev] + sb.size[prev])
            if gap_a != gap_b or gap_a < 0:
                flush()
                first = -1
        if first < 0:
            first = pos
        last = pos
    flush()


def _check_symbols(inp: Payload, out: Payload, plan: Plan, symbol_map: IndexMap) -> None:
    s, t = inp.elf.symbols, out.elf.symbols
    expected = s.count + symbol_map.inserted + len(plan.appended)
    if t.count != expected:
        raise _fail(f"symbol count {t.count}, expected {expected}")
    moves = symbol_map.moves
    order = symbol_map.table if moves else range(s.count)  # output index of each input symbol
    for column in ("info", "other", "shndx", "value", "size"):
        old, new = getattr(s, column), getattr(t, column)
        if (array(new.typecode, map(new.__getitem__, order)) if moves else new[: s.count]) != old:
            raise _fail(f"a symbol's {column} changed")
    for i in range(s.count):
        want = plan.renames.get(i)
        if want is None:
            if t.name_off[order[i]] - s.name_off[i] and t.name(order[i]) != s.name(i):
                raise _fail(f"symbol [{i}] {s.name(i)!r} was renamed without a plan")
        elif t.name(order[i]) != want:
            raise _fail(f"symbol [{i}] should be named {want!r}")
    for alias in plan.aliases.values():
        j = alias.index
        if t.shndx[j] != alias.shndx or t.name(j) != alias.name:
            kind = "an absolute" if alias.shndx == C.SHN_ABS else "an undefined"
            raise _fail(f"alias {alias.name!r} is not {kind} symbol of that name")
        if alias.shndx == C.SHN_ABS and t.value[j] != alias.value:
            raise _fail(f"absolute alias {alias.name!r} holds {t.value[j]:#x}, not the original's {alias.value:#x}")


def _check_relocations(inp: Payload, out: Payload, plan: Plan, symbol_map: IndexMap) -> None:
    a, b = inp.elf, out.elf
    by_section = plan.by_table()
    alias_index = plan.alias_index()
    moved = _Moved(plan, alias_index)
    # Untouched sections were compared byte for byte (_check_sections).
    edited = _edited_relocation_tables(inp, plan, symbol_map)
    if symbol_map.moves:  # every entry names a renumbered symbol: checked entry by entry
        for idx in edited:
            _check_table(inp, out, symbol_map, idx, moved.of(by_section.get(idx, _NONE)))
    else:
        # The output's tables are the input's with each planned entry re-encoded:
        # a window of adjacent tables is one comparison of bytes. A window that
        # differs is checked table by table, and a table entry by entry (which names it).
        planned = _PlannedBytes(inp, by_section, moved)
        for window in _windows(a, edited):
            if not planned.matches(b, window):
                for idx in window:
                    if planned.table(idx) != b.section_data(idx):
                        _check_table(inp, out, symbol_map, idx, moved.of(by_section.get(idx, _NONE)))
    ret = plan.retargets
    for idx in edited:
        if a.sections.type[idx] == C.SHT_REL:
            for k in by_section.get(idx, _NONE):
                d, addend = ret[k], plan.new_addends[k]
                got = out.arch.implicit_addend(d.rtype, b.section_data(d.section), d.offset)
                if got != addend:
                    raise _fail(f"{a.sections[d.section].name}+{d.offset:#x}: implicit addend {got}")


def _windows(elf: ElfFile, tables: list[int]) -> Iterator[list[int]]:
    """These tables in file order, in windows of tables adjacent in the file spanning at most _WINDOW bytes."""
    secs = elf.sections
    starts, sizes = secs.offset, secs.size
    window: list[int] = []
    for run in elf.relocation_runs(tables):
        for idx in run.sections:
            if window and starts[idx] + sizes[idx] - starts[window[0]] > _WINDOW:
                yield window
                window = []
            window.append(idx)
        if window:
            yield window
            window = []


_NONE = array("I")  # no retargets in a table


class _Moved:
    """The planned entries of a relocation table, read from the plan's columns (no Decision objects)."""

    def __init__(self, plan: Plan, alias_index: dict[int, int]) -> None:
        ret = plan.retargets
        self.index = ret.column("index")
        self.rtype = ret.column("rtype")
        self.replacement = ret.column("replacement")
        self.addends = plan.new_addends
        self.alias_index = alias_index

    def of(self, rows: Sequence[int]) -> list[tuple[int, int, int, int]]:
        """(entry, type, alias symbol index, new addend) of each of these retargets (positions in the plan)."""
        index, rtype, replacement, addends = self.index, self.rtype, self.replacement, self.addends
        alias = self.alias_index
        return [(index[k], rtype[k], alias[replacement[k]], addends[k]) for k in rows]


class _PlannedBytes:
    """The input's relocation tables with the planned entries naming their alias (RELA: and their addend)."""

    def __init__(self, inp: Payload, by_section: dict[int, array[int]], moved: _Moved) -> None:
        self.elf = inp.elf
        self.by_section = by_section
        self.moved = moved

    def _patch(self, buf: bytearray, at: int, idx: int) -> None:
        """Re-encode the planned entries of table ``idx``, which starts at ``buf[at]``."""
        lay = self.elf.layout
        kind = self.elf.sections.type[idx]
        entsize = lay.reloc_entsize(kind)
        info_fmt, info_at = lay.rel_info
        add_fmt, add_at = lay.rela_addend
        for entry, rtype, alias, addend in self.moved.of(self.by_section.get(idx, _NONE)):
            pos = at + entry * entsize
            struct.pack_into("<" + info_fmt, buf, pos + info_at, lay.r_info(alias, rtype))
            if kind == C.SHT_RELA:
                struct.pack_into("<" + add_fmt, buf, pos + add_at, addend)

    def table(self, idx: int) -> bytearray:
        buf = bytearray(self.elf.section_data(idx))
        self._patch(buf, 0, idx)
        return buf

    def matches(self, out: ElfFile, window: list[int]) -> bool:
        """Whether ``out`` holds these tables as planned, all at one shift from the input's
        (and what lies between them as it is)."""
        sa, sb = self.elf.sections, out.sections
        lo = sa.offset[window[0]]
        hi = sa.offset[window[-1]] + sa.size[window[-1]]
        shift = sb.offset[window[0]] - lo
        if any(sb.offset[i] - sa.offset[i] != shift or sb.size[i] != sa.size[i] for i in window):
            return False
        buf = bytearray(self.elf.view[lo:hi])
        for idx in window:
            self._patch(buf, sa.offset[idx] - lo, idx)
        same = buf == out.view[lo + shift : hi + shift]
        out.release(lo + shift, hi + shift)
        return same


def _check_table(
    inp: Payload,
    out: Payload,
    symbol_map: IndexMap,
    idx: int,
    moved: list[tuple[int, int, int, int]],
) -> None:
    """Relocation table ``idx`` of the output, entry by entry against the input's and the plan."""
    x, y = inp.elf.relocations(idx), out.elf.relocations(idx)
    if x.offsets != y.offsets or x.types != y.types:
        raise _fail(f"relocation section {x.section.name!r}: places or types changed")
    if not moved and not symbol_map.moves:
        if y.syms != x.syms or y.addends != x.addends:
            raise _fail(f"relocation section {x.section.name!r} changed without a plan")
        return
    expect_syms = symbol_map.remap(x.syms, y.syms.typecode)
    expect_add = array(x.addends.typecode, x.addends) if x.addends is not None else None
    for entry, _rtype, alias, addend in moved:  # (_Moved.of)
        expect_syms[entry] = alias
        if expect_add is not None:
            expect_add[entry] = addend
    if y.syms != expect_syms:
        bad = next(i for i, (p, q) in enumerate(zip(y.syms, expect_syms, strict=True)) if p != q)
        raise _fail(f"{x.section.name!r} entry {bad}: symbol {y.syms[bad]}, expected {expect_syms[bad]}")
    if expect_add is not None and y.addends != expect_add:
        raise _fail(f"{x.section.name!r}: an addend changed unexpectedly")
    if not symbol_map.moves:  # the bytes differed, yet every field is as planned
        raise _fail(f"relocation section {x.section.name!r}: an entry changed beyond its fields")

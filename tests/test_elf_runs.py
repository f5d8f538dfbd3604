"""Relocation tables read as runs (lp_rewrite/elf/runs.py) hold exactly what
the tables hold, read one by one with pyelftools; a table the reader cannot
view in place is a run of its own; and a damaged entry anywhere in a run is
still refused with the message that names it."""

from __future__ import annotations

import io
import re
import struct
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from lp_rewrite.elf.file import ElfFile
from lp_rewrite.elf.runs import RelocationRun, entries_naming
from lp_rewrite.errors import InputError
from tests.conftest import COMMITTED

PAYLOADS = sorted(COMMITTED.glob("*/*.livepatch"))


def _tables(data: bytes) -> dict[int, list[tuple[int, int, int, int | None]]]:
    """Per relocation section index: (r_offset, type, symbol, addend or None) of each entry, by pyelftools."""
    elf = ELFFile(io.BytesIO(data))
    out = {}
    for i, sec in enumerate(elf.iter_sections()):
        if isinstance(sec, RelocationSection) and i:
            out[i] = [
                (r["r_offset"], r["r_info_type"], r["r_info_sym"], r["r_addend"] if sec.is_RELA() else None)
                for r in sec.iter_relocations()
            ]
    return out


def _rows(elf: ElfFile, indices: list[int]) -> dict[int, list[tuple[int, int, int, int | None]]]:
    got = {}
    for run in elf.relocation_runs(indices):
        for idx, rows in zip(run.sections, run.slices(), strict=True):
            adds = list(run.addends[rows]) if run.addends is not None else [None] * (rows.stop - rows.start)
            got[idx] = list(zip(run.offsets[rows], run.types[rows], run.syms[rows], adds, strict=True))
    return got


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_runs_hold_every_entry(path: Path) -> None:
    data = path.read_bytes()
    want = _tables(data)
    elf = ElfFile(data)
    assert _rows(elf, sorted(want)) == want
    # Every other table: a part of a run holds those tables' rows, and only them.
    some = sorted(want)[::2]
    assert _rows(elf, some) == {i: want[i] for i in some}


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_entries_naming_finds_the_entries_against_symbols_and_keeps_what_keep_keeps(path: Path) -> None:
    """entries_naming() gives each table's entries naming a symbol, by pyelftools' reading; with ``keep``,
    only the rows ``keep`` returns for their run (here: every other row it is given)."""
    data = path.read_bytes()
    want = _tables(data)
    elf = ElfFile(data)
    symbols = {sym for rows in want.values() for _off, _t, sym, _a in rows[::2]}
    naming = {i: [k for k, (_o, _t, sym, _a) in enumerate(rows) if sym in symbols] for i, rows in want.items()}
    got = {idx: picked for idx, _run, _base, picked in entries_naming(elf, sorted(want), symbols)}
    assert got == {i: ks for i, ks in naming.items() if ks}
    given: list[tuple[tuple[int, int], list[int]]] = []

    def every_other(run: RelocationRun, rows: list[int]) -> list[int]:
        given.append((run.place, rows))
        return rows[::2]

    kept = entries_naming(elf, sorted(want), symbols, every_other)
    assert {(run.place, base + i) for _idx, run, base, picked in kept for i in picked} == {
        (place, row) for place, rows in given for row in rows[::2]
    }
    assert sorted(row for _place, rows in given for row in rows) == sorted(
        base + i for _idx, run, base, picked in entries_naming(elf, sorted(want), symbols) for i in picked
    ), "keep is given every matching row, once"
    for idx, _run, _base, picked in kept:
        assert set(picked) <= set(naming[idx])


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_file_order_and_sections_with_data(path: Path) -> None:
    """The section table's file order (sorted once, kept as an array) and its data mask."""
    elf = ElfFile(path.read_bytes())
    secs = elf.sections
    assert list(secs.file_order) == sorted(range(1, len(secs)), key=secs.offset.__getitem__)
    with_data = [i for i in range(1, len(secs)) if secs[i].has_file_data]
    assert [i for i, flag in enumerate(secs.data_mask) if flag] == with_data
    # Each run's tables lie in file order.
    for run in elf.relocation_runs(elf.relocation_sections):
        assert list(run.sections) == sorted(run.sections, key=secs.offset.__getitem__)


def _object_with_tables() -> bytes:
    path = COMMITTED / "x86_64" / "keyhandler.livepatch"
    return path.read_bytes()


def _misaligned(data: bytes, index: int) -> bytes:
    """The object with relocation table ``index`` moved to the end of the file at an odd offset."""
    elf = ElfFile(data)
    lay = elf.layout
    off, size = elf.sections.offset[index], elf.sections.size[index]
    out = bytearray(data)
    out += bytes(-len(out) % 8 + 4)  # the table's new home: 4 bytes past a word boundary
    new_off = len(out)
    assert new_off % 8 == 4
    out += data[off : off + size]
    hdr = elf.e_shoff + index * lay.shdr.size
    struct.pack_into("<Q", out, hdr + 24, new_off)  # sh_offset (ELF64)
    return bytes(out)


def test_a_table_not_viewable_in_place_is_read_alone() -> None:
    data = _object_with_tables()
    index = sorted(_tables(data))[1]
    moved = _misaligned(data, index)
    elf = ElfFile(moved)
    runs = elf.relocation_runs(sorted(_tables(moved)))
    alone = [run for run in runs if list(run.sections) == [index]]
    assert len(alone) == 1 and not isinstance(alone[0].offsets, memoryview)
    assert _rows(elf, sorted(_tables(moved))) == _tables(moved)


@pytest.mark.parametrize("field", ["symbol", "offset"])
def test_a_bad_entry_in_a_run_is_named(field: str) -> None:
    data = bytearray(_object_with_tables())
    elf = ElfFile(bytes(data))
    tables = [i for i in elf.relocation_sections if elf.sections.size[i] >= 48]
    index = tables[len(tables) // 2]  # a table in the middle of its run
    at = elf.sections.offset[index] + 24  # its second entry
    if field == "symbol":
        struct.pack_into("<I", data, at + 12, 0xFFFF)
        expect = r"entry 1 \(offset 0x[0-9a-f]+\) uses symbol 65535, but the symbol table has \d+ entries"
    else:
        struct.pack_into("<Q", data, at, 0xFFFFFF)
        expect = r"entry 1 offset 0xffffff is outside its target section"
    bad = ElfFile(bytes(data))
    name = bad.sections.name(index)
    with pytest.raises(InputError, match=re.escape(f"relocation section [{index}] {name!r}: ") + expect):
        bad.check_relocations(bad.relocation_sections)


def test_defined_in_a_section_is_is_defined_in_section_for_each() -> None:
    """The symbol table's bulk test picks exactly the symbols its one-at-a-time test says are defined in a
    section: undefined, SHN_ABS and SHN_XINDEX symbols included, on every committed payload too."""
    from tests.test_elf_editor import KINDS, build

    objects = [ElfFile(build(elf64, rela)) for elf64, rela in KINDS] + [ElfFile(p.read_bytes()) for p in PAYLOADS]
    for elf in objects:
        syms = elf.symbols
        every = list(range(syms.count))
        assert syms.defined_in_a_section(every) == [i for i in every if syms.is_defined_in_section(i)]
        assert syms.defined_in_a_section(every[::-2]) == [i for i in every[::-2] if syms.is_defined_in_section(i)]
    assert 5 in objects[0].symbols.defined_in_a_section([5]), "a section index through SHN_XINDEX"

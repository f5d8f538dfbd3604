"""check's Context reads relocation entries and section names from the raw tables: against pyelftools.

The rules ask Context for the relocations they need (by symbol, by target
section) and for sections by name; Context reads those straight from the
relocation tables' and the name table's bytes, without building a table
object per section. These tests compare what it reads with pyelftools's
reading of the same file, on every committed payload of every architecture
(RELA on x86-64 and AArch64, REL on 32-bit Arm).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from lp_rewrite.arch import Kind
from lp_rewrite.check.context import Context
from lp_rewrite.errors import InputError
from lp_rewrite.identify import identify
from lp_rewrite.livepatch_abi import HOOK_SECTIONS
from lp_rewrite.policy import Policy
from lp_rewrite.read import read_payload
from tests.conftest import ARCHES, COMMITTED

PAYLOADS = sorted(p for arch in ARCHES for p in (COMMITTED / arch).glob("*.livepatch"))

# (relocation section index, entry) -> (type, symbol, offset, addend or None for REL)
Entries = dict[tuple[int, int], tuple[int, int, int, int | None]]


def _context(path: Path) -> Context:
    payload = read_payload(path)
    try:
        funcs = identify(payload, absent_ok=True)
    except InputError:  # checked without replacements, as check_payload does
        funcs = None
    return Context(payload, Policy(), funcs)


def _pyelftools_entries(path: Path) -> Entries:
    elf = ELFFile(io.BytesIO(path.read_bytes()))
    out: Entries = {}
    for index, sec in enumerate(elf.iter_sections()):
        if not isinstance(sec, RelocationSection):
            continue
        for i, rel in enumerate(sec.iter_relocations()):
            addend = rel["r_addend"] if sec.is_RELA() else None
            out[(index, i)] = (rel["r_info_type"], rel["r_info_sym"], rel["r_offset"], addend)
    return out


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: f"{p.parent.name}-{p.stem}")
def test_entries_are_what_pyelftools_reads(path: Path) -> None:
    ctx = _context(path)
    expected = _pyelftools_entries(path)
    for ridx in ctx.elf.relocation_sections:
        count = ctx.elf.sections.size[ridx] // ctx.elf.sections.entsize[ridx]
        got = {(ridx, i): (t, s, o, a) for i, t, s, o, a in ctx.entries(ridx, range(count))}
        assert got == {k: v for k, v in expected.items() if k[0] == ridx}


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: f"{p.parent.name}-{p.stem}")
def test_references_by_symbol_are_those_of_every_reference(path: Path) -> None:
    """Filtering by symbol (and leaving calls out) before classifying picks exactly what filtering after would."""
    ctx = _context(path)
    every = list(ctx.references())
    entries = _pyelftools_entries(path)
    assert every, "a payload with no reference in a loaded section"
    for ref in every:
        rtype, sym, offset, _addend = entries[(ref.reloc_section, ref.index)]
        assert (ref.reloc.type.code, ref.symbol, ref.offset) == (rtype, sym, offset)
        assert ctx.reference(ref.reloc_section, ref.index) == ref
    symbols = {ref.symbol for k, ref in enumerate(every) if k % 3 == 0}
    assert list(ctx.references(symbols)) == [ref for ref in every if ref.symbol in symbols]
    no_calls = [ref for ref in every if ref.symbol in symbols and ref.kind is not Kind.CALL]
    assert list(ctx.references(symbols, calls=False)) == no_calls


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: f"{p.parent.name}-{p.stem}")
def test_sections_named_and_counted(path: Path) -> None:
    ctx = _context(path)
    elf = ELFFile(io.BytesIO(path.read_bytes()))
    names = [sec.name for sec in elf.iter_sections()]
    for wanted in ([".text"], list(HOOK_SECTIONS), [".livepatch.funcs", ".rodata"], [".no.such.section"]):
        assert ctx.elf.sections.find_all(wanted) == [i for i, n in enumerate(names) if i and n in wanted]
    for i, sec in enumerate(elf.iter_sections()):
        loaded = bool(sec["sh_flags"] & 0x2)  # SHF_ALLOC
        assert ctx.counts(i) == (loaded and not ctx.exempt(sec.name) and sec.name not in HOOK_SECTIONS)


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: f"{p.parent.name}-{p.stem}")
def test_payload_only_is_the_entries_that_replace_nothing(path: Path) -> None:
    """Every executable entry with no replacement, named by its first global function (else its first function).

    "First" in (entry, end, symbol index) order; the symbols as pyelftools reads them.
    """
    ctx = _context(path)
    elf = ELFFile(io.BytesIO(path.read_bytes()))
    flags = [sec["sh_flags"] for sec in elf.iter_sections()]
    thumb = ctx.arch.function_value_flags
    here: dict[tuple[int, int], list[tuple[int, int, bool]]] = {}
    for i, sym in enumerate(elf.get_section_by_name(".symtab").iter_symbols()):  # type: ignore[union-attr]
        shndx = sym["st_shndx"]
        if i == 0 or sym["st_info"]["type"] != "STT_FUNC" or not isinstance(shndx, int) or shndx == 0:
            continue
        start = sym["st_value"] & ~thumb
        here.setdefault((shndx, start), []).append((start + sym["st_size"], i, sym["st_info"]["bind"] == "STB_LOCAL"))
    expected = {}
    for (sec, start), found in here.items():
        if flags[sec] & 0x6 == 0x6 and (sec, start) not in ctx.replacement_entries:  # SHF_ALLOC | SHF_EXECINSTR
            found.sort()
            expected[(sec, start)] = next((i for _end, i, local in found if not local), found[0][1])
            assert ctx.function_at(sec, start) == expected[(sec, start)]
    if ctx.funcs is None and ctx.elf.section_by_name(".livepatch.funcs") is not None:
        expected = {}
    assert ctx.payload_only == expected


def _naive_tables_against(ctx: Context, symbols: set[int]) -> list[tuple[int, list[int]]]:
    out = []
    for ridx in ctx.elf.relocation_sections:
        count = ctx.elf.sections.size[ridx] // ctx.elf.sections.entsize[ridx]
        picked = [i for i, _t, sym, _o, _a in ctx.entries(ridx, range(count)) if sym in symbols]
        if picked:
            out.append((ridx, picked))
    return out


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: f"{p.parent.name}-{p.stem}")
def test_tables_against_is_every_table_with_a_match(path: Path) -> None:
    ctx = _context(path)
    count = ctx.syms.count
    for symbols in ({0}, set(range(count)), set(range(1, count, 3)), {count - 1}, set()):
        assert ctx.tables_against(symbols) == _naive_tables_against(ctx, symbols)


def test_tables_against_skips_a_table_left_out_between_others() -> None:
    """A relocation table that relocates no section (sh_info 0) is in its run of tables but never matched."""
    path = COMMITTED / "x86_64" / "payload_only.livepatch"
    data = bytearray(path.read_bytes())
    elf = ELFFile(io.BytesIO(bytes(data)))
    tables = [i for i, s in enumerate(elf.iter_sections()) if isinstance(s, RelocationSection) and s["sh_info"]]
    left_out = tables[len(tables) // 2]
    shoff, shentsize = elf["e_shoff"], elf["e_shentsize"]
    data[shoff + left_out * shentsize + 44 : shoff + left_out * shentsize + 48] = bytes(4)  # Elf64_Shdr.sh_info
    payload = read_payload(bytes(data), "left-out")
    ctx = Context(payload, Policy(), None)
    assert left_out not in ctx.elf.relocation_sections
    everything = set(range(ctx.syms.count))
    found = ctx.tables_against(everything)
    assert left_out not in dict(found)
    assert found == _naive_tables_against(ctx, everything)


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: f"{p.parent.name}-{p.stem}")
def test_code_starts_by_row_name_each_rows_code_section(path: Path) -> None:
    """Per row of a run: the file offset of the section its table relocates when that is code with
    contents, else -1; for a part of a run (every other table), -1 on the rows of the tables left out."""
    ctx = _context(path)
    elf = ELFFile(io.BytesIO(path.read_bytes()))
    starts = []
    for sec in elf.iter_sections():
        code = sec["sh_flags"] & 0x4 and sec["sh_type"] not in ("SHT_NOBITS", "SHT_NULL")
        starts.append(sec["sh_offset"] if code else -1)
    starts[0] = -1
    tables = ctx.elf.relocation_sections
    for asked in (tables, tables[::2]):
        for run in ctx.elf.relocation_runs(asked):
            want = [-1] * len(run.types)
            for idx, lo, hi in zip(run.sections, run.starts, run.stops, strict=True):
                want[lo:hi] = [starts[ctx.elf.sections.info[idx]]] * (hi - lo)
            assert list(ctx._code_starts_by_row(run)) == want


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: f"{p.parent.name}-{p.stem}")
def test_sections_with_the_address_pattern_are_those_a_section_search_finds(path: Path) -> None:
    """hidden's one search of the whole file keeps (in order) every section in which a search of the
    section itself finds the arch's address pattern, so no section where address_computations() could
    report a site is skipped; any other it keeps has a match that starts in its last bytes and runs on
    past its end (Arm's patterns are 4-byte lookaheads)."""
    from lp_rewrite.check.hidden import _with_pattern

    ctx = _context(path)
    pattern = ctx.arch.address_pattern
    assert pattern is not None
    secs = ctx.elf.sections
    loaded = [i for i in range(1, len(secs)) if secs.flags[i] & 0x2 and secs.has_file_data(i)]
    want = [i for i in loaded if pattern.search(ctx.elf.section_data(i)) is not None]
    got = _with_pattern(ctx, loaded)
    assert set(want) <= set(got) and got == [i for i in loaded if i in set(got)]
    data = ctx.elf.data
    for i in set(got) - set(want):
        end = secs.offset[i] + secs.size[i]
        starts = range(max(secs.offset[i], end - 8), end)
        assert any(pattern.match(data, k) is not None for k in starts), secs.name(i)

"""The ELF editor and its index map, below fixture level.

Each test builds a small relocatable object here (both ELF classes, REL and
RELA, a section group and ``.symtab_shndx``), edits it with
:class:`lp_rewrite.elf.editor.ElfEditor`, and reads the result back with
pyelftools, an independent reader.
"""

from __future__ import annotations

import io
import struct
from array import array
from dataclasses import dataclass

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import Section, SymbolTableSection

from lp_rewrite.elf import consts as C
from lp_rewrite.elf.editor import ElfEditor, IndexMap, NewSymbol
from lp_rewrite.elf.file import ElfFile
from lp_rewrite.errors import InputError

# -- a tiny object writer (struct only: nothing of the package's layouts) -------


@dataclass
class Sec:
    name: str
    sh_type: int
    data: bytes = b""
    flags: int = 0
    link: int = 0
    info: int = 0
    align: int = 8
    entsize: int = 0


@dataclass
class Sym:
    name: str
    info: int
    shndx: int
    value: int = 0


def _strtab(names: list[str]) -> tuple[bytes, dict[str, int]]:
    out, offs = bytearray(b"\0"), {"": 0}
    for n in names:
        if n not in offs:
            offs[n] = len(out)
            out += n.encode() + b"\0"
    return bytes(out), offs


def build(elf64: bool, rela: bool, extra: list[Sec] | None = None, bad_sym: bool = False) -> bytes:
    """An ET_REL object with locals in two FILE groups, globals, a group, a relocation table and .symtab_shndx.

    Sections: 1 .text, 2 .data, 3 .group, 4 .rel(a).text, 5 .symtab, 6 .strtab, 7 .symtab_shndx, 8 .shstrtab.
    Symbols: 0 null, 1 FILE a.c, 2 SECTION .text, 3 la, 4 FILE b.c, 5 lb (SHN_XINDEX -> .data),
    6 g (first global), 7 u (undefined), 8 sig (the group's signature).
    """
    syms = [
        Sym("", 0, 0),
        Sym("a.c", C.st_info(C.STB_LOCAL, C.STT_FILE), C.SHN_ABS),
        Sym("", C.st_info(C.STB_LOCAL, C.STT_SECTION), 1),
        Sym("la", C.st_info(C.STB_LOCAL, C.STT_FUNC), 1, 0x10),
        Sym("b.c", C.st_info(C.STB_LOCAL, C.STT_FILE), C.SHN_ABS),
        Sym("lb", C.st_info(C.STB_LOCAL, C.STT_OBJECT), C.SHN_XINDEX, 0x8),
        Sym("g", C.st_info(C.STB_GLOBAL, C.STT_FUNC), 1, 0x20),
        Sym("u", C.st_info(C.STB_GLOBAL, C.STT_NOTYPE), C.SHN_UNDEF),
        Sym("sig", C.st_info(C.STB_GLOBAL, C.STT_OBJECT), 2),
    ]
    first_global = 6
    strtab, offs = _strtab([s.name for s in syms])
    symtab = b"".join(
        struct.pack("<IBBHQQ", offs[s.name], s.info, 0, s.shndx, s.value, 0)
        if elf64
        else struct.pack("<IIIBBH", offs[s.name], s.value, 0, s.info, 0, s.shndx)
        for s in syms
    )
    shndx = array("I", [0] * len(syms))
    shndx[5] = 2  # lb's section, through SHN_XINDEX
    # (offset, symbol, type, addend): every kind of symbol, distinct types.
    relocs = [(0x0, 2, 1, 4), (0x8, 3, 2, -4), (0x10, 5, 3, 0), (0x18, 6, 4, 8), (0x20, 7, 5, -8), (0x28, 8, 6, 0)]
    if bad_sym:
        relocs.append((0x30, 99, 1, 0))
    table = bytearray()
    for off, sym, rtype, add in relocs:
        info = (sym << 32 | rtype) if elf64 else (sym << 8 | rtype)
        fmt = ("<QQq" if rela else "<QQ") if elf64 else ("<IIi" if rela else "<II")
        table += struct.pack(fmt, off, info, add) if rela else struct.pack(fmt, off, info)
    ent = {(True, True): 24, (True, False): 16, (False, True): 12, (False, False): 8}[(elf64, rela)]
    sections = [
        Sec("", C.SHT_NULL, align=0),
        Sec(".text", C.SHT_PROGBITS, bytes(range(64)), C.SHF_ALLOC | C.SHF_EXECINSTR, align=16),
        Sec(".data", C.SHT_PROGBITS, bytes(32), C.SHF_ALLOC | C.SHF_WRITE | 0x200),  # SHF_GROUP
        Sec(".group", C.SHT_GROUP, struct.pack("<II", 1, 2), link=5, info=8, align=4, entsize=4),
        Sec(
            ".rela.text" if rela else ".rel.text",
            C.SHT_RELA if rela else C.SHT_REL,
            bytes(table),
            link=5,
            info=1,
            entsize=ent,
        ),
        Sec(".symtab", C.SHT_SYMTAB, symtab, link=6, info=first_global, entsize=24 if elf64 else 16),
        Sec(".strtab", C.SHT_STRTAB, strtab, align=1),
        Sec(".symtab_shndx", C.SHT_SYMTAB_SHNDX, shndx.tobytes(), link=5, align=4, entsize=4),
        *(extra or []),
    ]
    shstr, shoffs = _strtab([s.name for s in sections] + [".shstrtab"])
    sections.append(Sec(".shstrtab", C.SHT_STRTAB, shstr, align=1))
    ehsize, shentsize = (64, 64) if elf64 else (52, 40)
    body = bytearray(ehsize)
    offsets = []
    for s in sections:
        if s.sh_type == C.SHT_NULL:
            offsets.append(0)
            continue
        body += bytes(-len(body) % max(s.align, 1))
        offsets.append(len(body))
        body += s.data
    body += bytes(-len(body) % 8)
    shoff = len(body)
    for s, off in zip(sections, offsets, strict=True):
        fields = (shoffs[s.name], s.sh_type, s.flags, 0, off, len(s.data), s.link, s.info, s.align, s.entsize)
        body += struct.pack("<IIQQQQIIQQ" if elf64 else "<IIIIIIIIII", *fields)
    ident = b"\x7fELF" + bytes([2 if elf64 else 1, 1, 1]) + bytes(9)
    machine = C.EM_X86_64 if elf64 else C.EM_ARM
    hdr_fmt = "<16sHHIQQQIHHHHHH" if elf64 else "<16sHHIIIIIHHHHHH"
    body[:ehsize] = struct.pack(
        hdr_fmt, ident, C.ET_REL, machine, 1, 0, 0, shoff, 0, ehsize, 0, 0, shentsize, len(sections), len(sections) - 1
    )
    return bytes(body)


KINDS = [(True, True), (True, False), (False, True), (False, False)]
IDS = ["elf64-rela", "elf64-rel", "elf32-rela", "elf32-rel"]


def parse(data: bytes) -> ELFFile:
    return ELFFile(io.BytesIO(data))


def named(elf: ELFFile, name: str) -> Section:
    sec = elf.get_section_by_name(name)
    assert sec is not None, name
    return sec


def symbols(elf: ELFFile) -> list[tuple[str, int, str, str]]:
    tab = named(elf, ".symtab")
    assert isinstance(tab, SymbolTableSection)
    return [(s.name, s["st_value"], s["st_info"]["bind"], s["st_info"]["type"]) for s in tab.iter_symbols()]


def relocations(elf: ELFFile) -> list[tuple[int, int, int, int | None]]:
    sec = next(s for s in elf.iter_sections() if s.name in (".rela.text", ".rel.text"))
    assert isinstance(sec, RelocationSection)
    return [
        (r["r_offset"], r["r_info_sym"], r["r_info_type"], r["r_addend"] if r.is_RELA() else None)
        for r in sec.iter_relocations()
    ]


# -- the index map -------------------------------------------------------------


def test_index_map_identity() -> None:
    m = IndexMap(5, appended=2)
    assert not m.moves and m.inserted == 0 and m.new_count == 7 and m.appended_start == 5
    assert [m(i) for i in range(5)] == list(range(5))
    assert m.table == array("I", range(5))
    assert m.remap(array("I", [4, 0, 3])) == array("I", [4, 0, 3])


def test_index_map_blocks() -> None:
    m = IndexMap(9, [(4, 1), (6, 2)], appended=1)
    assert m.moves and m.inserted == 3 and m.new_count == 13
    assert [m(i) for i in range(9)] == [0, 1, 2, 3, 5, 6, 9, 10, 11]
    assert m.table.tolist() == [m(i) for i in range(9)]
    assert m.block_starts == (4, 7) and m.appended_start == 12
    assert m.remap(array("I", [8, 0, 4, 6]), "L") == array("L", [11, 0, 5, 9])
    # Output indices of the inserted symbols are exactly the ones no input index maps to.
    taken = set(m.table) | {12}
    assert sorted(set(range(13)) - taken) == [4, 7, 8]


def test_index_map_insert_at_end_and_at_start() -> None:
    m = IndexMap(3, [(0, 2), (3, 1)])
    assert m.table.tolist() == [2, 3, 4]
    assert m.block_starts == (0, 5) and m.new_count == 6


@pytest.mark.parametrize("blocks", [[(3, 1), (2, 1)], [(2, 1), (2, 1)], [(4, 1)], [(-1, 1)]])
def test_index_map_refuses_bad_positions(blocks: list[tuple[int, int]]) -> None:
    with pytest.raises(ValueError):
        IndexMap(3, blocks)


# -- the editor -----------------------------------------------------------------


def test_no_edit_is_the_input() -> None:
    data = build(True, True)
    assert ElfEditor(ElfFile(data)).to_bytes() is data


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "per-entry"])
@pytest.mark.parametrize(("elf64", "rela"), KINDS, ids=IDS)
def test_insert_renumbers_every_reference(elf64: bool, rela: bool, bulk: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not bulk:  # the path a big-endian host takes: one entry at a time
        monkeypatch.setattr("lp_rewrite.elf.editor._NATIVE_LE", False)
    data = build(elf64, rela)
    before = parse(data)
    old_syms, old_relocs = symbols(before), relocations(before)
    editor = ElfEditor(ElfFile(data))
    local = C.st_info(C.STB_LOCAL, C.STT_FUNC)
    imap = editor.insert_symbols(
        [
            (4, [NewSymbol("new_a", local, C.SHN_UNDEF)]),
            (
                6,
                [
                    NewSymbol("b.c", C.st_info(C.STB_LOCAL, C.STT_FILE), C.SHN_ABS),
                    NewSymbol("new_b", local, C.SHN_ABS, 0x1234),
                ],
            ),
        ],
        [NewSymbol("new_g", C.st_info(C.STB_GLOBAL, C.STT_FUNC), C.SHN_UNDEF)],
    )
    assert editor.symbol_map is imap
    assert imap.table.tolist() == [0, 1, 2, 3, 5, 6, 9, 10, 11]
    out = parse(editor.to_bytes())
    new_syms = symbols(out)
    assert len(new_syms) == 13
    for i, sym in enumerate(old_syms):  # every input symbol, unchanged, at its mapped index
        assert new_syms[imap(i)] == sym
    assert [new_syms[k] for k in (4, 7, 8, 12)] == [
        ("new_a", 0, "STB_LOCAL", "STT_FUNC"),
        ("b.c", 0, "STB_LOCAL", "STT_FILE"),
        ("new_b", 0x1234, "STB_LOCAL", "STT_FUNC"),
        ("new_g", 0, "STB_GLOBAL", "STT_FUNC"),
    ]
    assert named(out, ".symtab")["sh_info"] == 9  # first global, after the inserted locals
    assert relocations(out) == [(o, imap(s), t, a) for o, s, t, a in old_relocs]
    assert named(out, ".group")["sh_info"] == imap(8)
    ext = array("I", named(out, ".symtab_shndx").data())
    assert len(ext) == 13 and ext[imap(5)] == 2 and sum(ext) == 2  # lb's section moved with it; new ones 0
    # Sections other than the symbol and relocation tables are untouched.
    for name in (".text", ".data", ".group"):
        assert named(out, name).data() == named(before, name).data()
    # The package's own reader agrees, through SHN_XINDEX.
    again = ElfFile(editor.to_bytes())
    assert again.symbols.shndx[imap(5)] == 2 and again.symbols.first_global == 9


@pytest.mark.parametrize(("elf64", "rela"), KINDS, ids=IDS)
def test_append_only_moves_nothing(elf64: bool, rela: bool) -> None:
    data = build(elf64, rela)
    editor = ElfEditor(ElfFile(data))
    editor.rename_symbol(3, "la.renamed")
    imap = editor.insert_symbols([], [NewSymbol("alias", C.st_info(C.STB_GLOBAL, C.STT_FUNC), C.SHN_UNDEF)])
    assert not imap.moves and imap.appended_start == 9
    out = parse(editor.to_bytes())
    before = parse(data)
    assert [s[0] for s in symbols(out)] == ["", "a.c", "", "la.renamed", "b.c", "lb", "g", "u", "sig", "alias"]
    assert named(out, ".symtab")["sh_info"] == 6
    assert relocations(out) == relocations(before)
    assert editor.edited_tables == [5, 6, 7]  # the symbol table, its strings, .symtab_shndx; no relocation table


@pytest.mark.parametrize(("elf64", "rela"), KINDS, ids=IDS)
def test_set_relocation_symbols_and_addends(elf64: bool, rela: bool) -> None:
    data = build(elf64, rela)
    editor = ElfEditor(ElfFile(data))
    imap = editor.insert_symbols([(4, [NewSymbol("x", C.st_info(C.STB_LOCAL, C.STT_FUNC), C.SHN_UNDEF)])])
    editor.set_relocation_symbols(4, [1, 4], [4, 0])
    if rela:
        editor.set_relocation_addends(4, [1, 5], [0x7777, -0x10])
    else:
        with pytest.raises(ValueError):
            editor.set_relocation_addends(4, [1], [0])
    got = relocations(parse(editor.to_bytes()))
    old = relocations(parse(data))
    want = [(o, imap(s), t, a) for o, s, t, a in old]
    want[1] = (want[1][0], 4, want[1][2], 0x7777 if rela else None)  # the type is kept
    want[4] = (want[4][0], 0, want[4][2], want[4][3])
    if rela:
        want[5] = (*want[5][:3], -0x10)
    assert got == want
    assert editor.edited_tables == [5, 6, 7, 4]


def test_section_fields_and_contents() -> None:
    data = build(True, True)
    editor = ElfEditor(ElfFile(data))
    editor.set_section_field(2, "sh_addralign", 64)
    editor.set_section_field(3, "sh_entsize", 8)
    editor.contents(1)[0:4] = b"\xde\xad\xbe\xef"
    assert editor.edited_tables == []  # contents are not tables
    out = parse(editor.to_bytes())
    data_sec = out.get_section(2)
    assert data_sec["sh_addralign"] == 64 and data_sec["sh_offset"] % 64 == 0
    assert out.get_section(3)["sh_entsize"] == 8
    assert out.get_section(1).data() == b"\xde\xad\xbe\xef" + bytes(range(4, 64))
    assert [s.name for s in out.iter_sections()] == [s.name for s in parse(data).iter_sections()]


def test_insert_refuses_a_relocation_it_cannot_renumber() -> None:
    editor = ElfEditor(ElfFile(build(True, True, bad_sym=True)))
    local = NewSymbol("x", C.st_info(C.STB_LOCAL, C.STT_FUNC), C.SHN_UNDEF)
    with pytest.raises(InputError, match=r"entry 6 .* uses symbol 99, but the symbol table has 9 entries"):
        editor.insert_symbols([(1, [local])])
    # Appending renumbers nothing, so the same table does not stop it.
    editor = ElfEditor(ElfFile(build(True, True, bad_sym=True)))
    assert editor.insert_symbols([], [local]).appended == 1


def test_insert_refuses_an_unknown_symbol_index_table() -> None:
    addrsig = Sec(".llvm_addrsig", C.SHT_LLVM_ADDRSIG, b"\x03", link=5, align=1)
    local = NewSymbol("x", C.st_info(C.STB_LOCAL, C.STT_FUNC), C.SHN_UNDEF)
    with pytest.raises(InputError, match=r"'\.llvm_addrsig' holds symbol indices this editor does not renumber"):
        ElfEditor(ElfFile(build(True, True, [addrsig]))).insert_symbols([(1, [local])])


def test_insert_is_of_locals_and_once() -> None:
    editor = ElfEditor(ElfFile(build(True, True)))
    local = NewSymbol("x", C.st_info(C.STB_LOCAL, C.STT_FUNC), C.SHN_UNDEF)
    with pytest.raises(ValueError, match="past the first global"):
        editor.insert_symbols([(7, [local])])
    editor = ElfEditor(ElfFile(build(True, True)))
    editor.insert_symbols([(6, [local])])
    with pytest.raises(ValueError, match="once"):
        editor.insert_symbols([], [local])


def test_reader_limits_are_parameters() -> None:
    """The reader takes limits from its caller and words no refusal of Xen's."""
    from lp_rewrite.elf.file import SectionCountError

    data = build(True, True)
    with pytest.raises(SectionCountError) as info:
        ElfFile(data, max_sections=9)
    assert (info.value.count, info.value.limit) == (9, 9) and "xen" not in str(info.value).lower()
    assert ElfFile(data, max_sections=10).shnum == 9
    with pytest.raises(InputError, match="the name at offset 1 is longer than 2 bytes"):
        ElfFile(data, max_name_len=2).sections.name(1)


def test_relocation_tables_and_sections() -> None:
    """relocation_tables: every table naming the symbol table; relocation_sections: those with a target section."""
    other = Sec(".rela.other", C.SHT_RELA, b"", link=6, info=1, entsize=24)  # another sh_link
    nowhere = Sec(".rela.nowhere", C.SHT_RELA, b"", link=5, info=99, entsize=24)  # no such target
    elf = ElfFile(build(True, True, [other, nowhere]))
    assert elf.relocation_tables == [4, 9]
    assert list(elf.relocation_sections) == [4]


def _patched(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value) :]


def test_reader_refusals_are_data_worded_by_the_caller() -> None:
    """The reader names what it does not take; read_payload words it for a payload (the messages users see)."""
    from lp_rewrite.elf.file import UnsupportedObject
    from lp_rewrite.read import read_payload

    data = build(True, True)
    dynsym = Sec(".dynsym", 11, b"", link=6, entsize=24)
    second = Sec(".symtab2", C.SHT_SYMTAB, bytes(24), link=6, info=1, entsize=24)
    cases = {
        "byte order": (_patched(data, C.EI_DATA, b"\x02"), "", "Xen livepatch targets are little-endian"),
        "type": (
            _patched(data, 16, struct.pack("<H", C.ET_EXEC)),
            "ET_EXEC (an executable)",
            "ET_EXEC (an executable): a livepatch payload is a relocatable object (ET_REL)",
        ),
        "linked section": (
            build(True, True, [dynsym]),
            "section [8] '.dynsym': type SHT_DYNSYM (11) belongs to a linked object",
            "belongs to a linked object, not to a relocatable livepatch payload",
        ),
        "symbol tables": (
            build(True, True, [second]),
            "the object has 2 symbol tables (sections [5, 8])",
            "the object has 2 symbol tables (sections [5, 8]); Xen accepts exactly one",
        ),
    }
    for reason, (obj, detail, payload_words) in cases.items():
        with pytest.raises(UnsupportedObject) as info:
            ElfFile(obj)
        assert (info.value.reason, info.value.detail) == (reason, detail)
        assert "xen" not in str(info.value).lower() and "payload" not in str(info.value)
        with pytest.raises(InputError) as said:
            read_payload(obj, name="p.o")
        assert str(said.value).startswith("p.o: ") and str(said.value).endswith(payload_words)
    many = build(True, True, [Sec(f".s{i}", C.SHT_PROGBITS, align=1) for i in range(1015)])
    with pytest.raises(InputError) as said:
        read_payload(many, name="p.o")
    assert str(said.value) == (
        "p.o: the object has 1024 sections; Xen accepts a payload with fewer than 1024 "
        "(--ignore-xen-limits processes it anyway)"
    )
    assert read_payload(many, name="p.o", xen_limits=False).elf.shnum == 1024


@pytest.mark.parametrize(("elf64", "rela"), KINDS, ids=IDS)
def test_entries_set_in_a_table_not_copied_are_made_when_written(elf64: bool, rela: bool) -> None:
    """Entries set in a relocation table that is not copied are kept as rows and made into
    the table when the output is first read (the same bytes on every read); what packing
    into a copy would refuse is refused at once, by packing into a copy (struct.error, as
    before rows)."""
    data = build(elf64, rela)
    editor = ElfEditor(ElfFile(data))
    editor.set_relocation_symbols(4, [1, 4], [4, 0])
    if rela:
        editor.set_relocation_addends(4, [1, 5], [0x7777, -0x10])
    editor.set_relocation_symbols(4, [4], [3])  # the same entry again: the last one set is written
    old = relocations(parse(data))
    want = list(old)
    want[1] = (want[1][0], 4, want[1][2], 0x7777 if rela else None)
    want[4] = (want[4][0], 3, want[4][2], want[4][3])
    if rela:
        want[5] = (*want[5][:3], -0x10)
    pieces = editor.to_chunks()
    first, again = b"".join(pieces), b"".join(pieces)
    assert first == again == editor.to_bytes()
    assert relocations(parse(first)) == want
    assert editor.edited_tables == [4]
    entries = len(old)
    with pytest.raises(struct.error):  # past the table
        editor.set_relocation_symbols(4, [entries], [1])
    with pytest.raises(struct.error):  # beyond the field (ELF32: r_sym is 24 bits)
        editor.set_relocation_symbols(4, [0], [1 << (32 if elf64 else 24)])
    if rela:
        with pytest.raises(struct.error):
            editor.set_relocation_addends(4, [0], [1 << (63 if elf64 else 31)])

"""The ``.livepatch.funcs`` ABI below fixture level: layouts, the one parser, its problems, the entry lookup.

:func:`lp_rewrite.livepatch_abi.parse_funcs` is what identify refuses, check
reports as LP010 and the loader model reads; these tests build the table's
bytes with :mod:`struct` from Xen's ``struct livepatch_func`` (sysctl.h), not
from the module under test. The last ones damage one field of a committed
payload (located with pyelftools) and ask where the error is: the entry's
field, for identify's exception and check's finding alike.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from lp_rewrite.check import check_payload
from lp_rewrite.errors import InputError, Location, LpRewriteError
from lp_rewrite.identify import field_relocations, identify
from lp_rewrite.livepatch_abi import (
    FUNCS_SECTION,
    FuncsProblemKind,
    func_layout,
    parse_funcs,
    wrong_size,
    wrong_version,
)
from lp_rewrite.loader.refusal import Refused
from lp_rewrite.read import read_payload
from tests.conftest import COMMITTED

# sizeof(struct livepatch_func): (version, pointer size) -> bytes, from Xen's sysctl.h.
SIZES = {(1, 8): 64, (1, 4): 52, (2, 8): 104, (2, 4): 92}
# name, new_addr, old_addr (pointers), new_size, old_size (uint32_t), version (uint8_t).
FIELDS = {8: (0, 8, 16, 24, 28, 32), 4: (0, 4, 8, 12, 16, 20)}


def table(ptr: int, versions: list[int], *, size: int | None = None) -> bytes:
    """Entries of ``versions`` (each entry's size from its own version), fields numbered by entry."""
    out = bytearray()
    fmt = "<QQQIIB" if ptr == 8 else "<IIIIIB"
    for i, version in enumerate(versions):
        entry = bytearray(SIZES[(version, ptr)])
        struct.pack_into(fmt, entry, 0, 0x100 + i, 0x200 + i, 0x300 + i, 0x40 + i, 0x50 + i, version)
        out += entry
    return bytes(out if size is None else (out + bytes(max(0, size - len(out))))[:size])


@pytest.mark.parametrize(("version", "ptr"), sorted(SIZES))
def test_layouts_are_xens(version: int, ptr: int) -> None:
    lay = func_layout(version, ptr)
    assert lay.entry_size == SIZES[(version, ptr)]
    names = ("name", "new_addr", "old_addr", "new_size", "old_size", "version")
    widths = (ptr, ptr, ptr, 4, 4, 1)
    for name, offset, width in zip(names, FIELDS[ptr], widths, strict=True):
        assert lay.field(0, name) == (offset, width)
        assert lay.field(3, name) == (3 * lay.entry_size + offset, width)
    assert lay.version_offset == FIELDS[ptr][5]


@pytest.mark.parametrize(("version", "ptr"), sorted(SIZES))
def test_a_sound_table_is_read_entry_by_entry(version: int, ptr: int) -> None:
    shape = parse_funcs(table(ptr, [version] * 3), ptr)
    assert shape.problems == () and shape.layout == func_layout(version, ptr)
    assert [(e.index, e.offset) for e in shape.entries] == [(i, i * SIZES[(version, ptr)]) for i in range(3)]
    e = shape.entries[2]
    assert (e.name, e.new_addr, e.old_addr, e.new_size, e.old_size, e.version) == (
        0x102,
        0x202,
        0x302,
        0x42,
        0x52,
        version,
    )


@pytest.mark.parametrize("ptr", [8, 4])
def test_too_small_for_a_version_byte(ptr: int) -> None:
    voff = FIELDS[ptr][5]
    shape = parse_funcs(bytes(voff), ptr)
    (p,) = shape.problems
    assert p.kind is FuncsProblemKind.TOO_SMALL and shape.layout is None and shape.entries == ()
    assert p.describe() == f"{FUNCS_SECTION} is {voff} bytes, too small for one entry"
    assert parse_funcs(table(ptr, [2]), ptr).problems == ()  # one byte more is enough to tell the layout


@pytest.mark.parametrize("ptr", [8, 4])
def test_an_unknown_version_is_the_only_problem(ptr: int) -> None:
    data = bytearray(table(ptr, [2, 2]))
    data[FIELDS[ptr][5]] = 3
    data[SIZES[(2, ptr)] + FIELDS[ptr][5]] = 7  # not looked at: entry 0 says no layout is known
    shape = parse_funcs(data, ptr)
    (p,) = shape.problems
    assert (p.kind, p.entry, p.offset, p.version) == (FuncsProblemKind.UNKNOWN_VERSION, 0, FIELDS[ptr][5], 3)
    assert shape.layout is None
    assert p.describe() == (
        f"{FUNCS_SECTION} entry 0: payload version 3 is not supported (this tool knows versions 1, 2)"
    )


@pytest.mark.parametrize(("version", "ptr"), sorted(SIZES))
def test_a_size_that_is_not_a_multiple(version: int, ptr: int) -> None:
    size = 2 * SIZES[(version, ptr)] - 4
    shape = parse_funcs(table(ptr, [version, version], size=size), ptr)
    (p,) = shape.problems
    assert p.kind is FuncsProblemKind.SIZE and p.offset is None and p.size == size
    assert shape.layout == func_layout(version, ptr) and shape.entries == ()  # the layout still tells the names
    assert p.describe() == (
        f"{FUNCS_SECTION} size {size} is not a multiple of the version-{version} entry size {SIZES[(version, ptr)]}"
    )


@pytest.mark.parametrize("ptr", [8, 4])
def test_every_entry_of_another_version_is_a_problem(ptr: int) -> None:
    n = SIZES[(2, ptr)]
    data = bytearray(table(ptr, [2] * 4))
    data[1 * n + FIELDS[ptr][5]] = 1
    data[3 * n + FIELDS[ptr][5]] = 9
    shape = parse_funcs(data, ptr)
    assert [(p.kind, p.entry, p.offset, p.version) for p in shape.problems] == [
        (FuncsProblemKind.MIXED_VERSION, 1, n + FIELDS[ptr][5], 1),
        (FuncsProblemKind.MIXED_VERSION, 3, 3 * n + FIELDS[ptr][5], 9),
    ]
    assert len(shape.entries) == 4  # readable: the loader model and check still see each entry
    assert shape.problems[0].describe() == f"{FUNCS_SECTION} entry 1: payload version 1 differs from entry 0's 2"


def test_a_fixed_layout_reads_whole_entries_only() -> None:
    """The loader model reads the relocated bytes with Xen's layout, whatever their versions say."""
    lay = func_layout(2, 8)
    entries = lay.entries(table(8, [2, 2], size=2 * 104 + 50))
    assert [e.version for e in entries] == [2, 2]
    # 256 bytes of version-1 entries: two 104-byte entries, the second's version byte in new_addr of the third.
    assert [e.version for e in lay.entries(table(8, [1, 1, 1, 1]))] == [1, 0x02]


def test_xens_log_lines() -> None:
    assert wrong_version(1) == "Wrong version (1). Expected 2"
    assert wrong_size(100, FUNCS_SECTION, 104) == "Wrong size 100 of .livepatch.funcs (must be multiple of 104)"


def test_an_error_is_prefixed_once_and_keeps_its_location() -> None:
    at = Location(FUNCS_SECTION, 0x68, 8, "pong")
    exc = InputError("new_addr is wrong", location=at)
    out = exc.prefixed(f"{FUNCS_SECTION} entry 1")
    assert str(out) == ".livepatch.funcs entry 1: new_addr is wrong" and out.location is at
    assert type(out) is InputError and str(exc) == "new_addr is wrong"  # the original is left as it was
    refused = Refused("p.livepatch", "Wrong version (1). Expected 2").prefixed("ctx")
    assert isinstance(refused, Refused) and refused.xen_message == "Wrong version (1). Expected 2"
    assert str(Location(FUNCS_SECTION)) == FUNCS_SECTION and str(at) == ".livepatch.funcs+0x68"
    assert LpRewriteError("plain").location is None


def _damaged(arch: str, tmp_path: Path, edit: str) -> tuple[Path, int]:
    """mutual.livepatch with one field of .livepatch.funcs (or its relocations) changed; the table's file offset."""
    src = COMMITTED / arch / "mutual.livepatch"
    data = bytearray(src.read_bytes())
    with open(src, "rb") as stream:
        elf = ELFFile(stream)
        funcs = elf.get_section_by_name(FUNCS_SECTION)
        rel = elf.get_section_by_name((".rel" if arch == "arm" else ".rela") + FUNCS_SECTION)
        assert funcs is not None and rel is not None
        funcs_off, rel_off, entsize = funcs["sh_offset"], rel["sh_offset"], rel["sh_entsize"]
    entry = SIZES[(2, 4 if arch == "arm" else 8)]
    if edit == "name-outside":  # entry 2's name pointer, 0x1000 past its string (the addend)
        if arch == "arm":
            struct.pack_into("<I", data, funcs_off + 2 * entry, 0x1000)
        else:
            struct.pack_into("<q", data, rel_off + 4 * entsize + 16, 0x1000)
    elif edit == "new-addr-pc32":  # entry 1's new_addr relocated PC-relative (x86-64)
        struct.pack_into("<I", data, rel_off + 3 * entsize + 8, 2)
    elif edit == "same-field":  # entry 1's new_addr relocation moved onto entry 1's name field (x86-64)
        struct.pack_into("<Q", data, rel_off + 3 * entsize, entry)
    out = tmp_path / f"{edit}.livepatch"
    out.write_bytes(bytes(data))
    return out, funcs_off


@pytest.mark.parametrize("arch", ["x86_64", "aarch64", "arm"])
def test_an_entry_error_is_located_at_its_field(arch: str, tmp_path: Path) -> None:
    path, funcs_off = _damaged(arch, tmp_path, "name-outside")
    ptr = 4 if arch == "arm" else 8
    with pytest.raises(InputError) as raised:
        identify(read_payload(path))
    assert str(raised.value) == (
        ".livepatch.funcs entry 2: name pointer .rodata.lp_ping_name+0x1000 is outside its section"
    )
    assert raised.value.location == Location(FUNCS_SECTION, 2 * SIZES[(2, ptr)], ptr)  # a section symbol
    (f,) = [f for f in check_payload(path).findings if f.rule.id == "LP010"]
    assert f.message == f"{raised.value}; the replaced functions are unknown, so the relocation rules did not run"
    assert (f.section, f.offset, f.file_offset, f.length) == (
        FUNCS_SECTION,
        2 * SIZES[(2, ptr)],
        funcs_off + 2 * SIZES[(2, ptr)],
        ptr,
    )
    assert f.symbol is None  # the allow list's keys are unchanged: a symbol would make LP010:<name> allow it


def test_a_pointer_relocated_wrongly_is_located_at_that_pointer(tmp_path: Path) -> None:
    path, _ = _damaged("x86_64", tmp_path, "new-addr-pc32")
    with pytest.raises(InputError) as raised:
        identify(read_payload(path))
    assert str(raised.value).startswith(".livepatch.funcs entry 1: new_addr is relocated with R_X86_64_PC32")
    assert raised.value.location == Location(FUNCS_SECTION, 104 + 8, 8, "pong")


def test_two_relocations_on_a_field_strict_and_lenient(tmp_path: Path) -> None:
    """identify refuses them; the loader model's reading keeps both (Xen would apply both)."""
    path, _ = _damaged("x86_64", tmp_path, "same-field")
    payload = read_payload(path)
    funcs = payload.elf.section_by_name(FUNCS_SECTION)
    assert funcs is not None
    with pytest.raises(InputError, match=r"^\.livepatch\.funcs\+0x68: two relocations apply to the same field$"):
        identify(payload)
    with pytest.raises(InputError) as raised:
        field_relocations(payload, funcs)
    assert raised.value.location == Location(FUNCS_SECTION, 104)
    lenient = field_relocations(payload, funcs, strict=False)
    assert [r.offset for r in lenient].count(104) == 2 and len(lenient) == 10

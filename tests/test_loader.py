"""The Xen-semantics loader (lp_rewrite.loader) against independent references.

* Relocated bytes: every fixture, raw and rewritten, is also linked by GNU ld
  with each section at the address the loader chose and each undefined
  symbol at the table's address (a generated linker script). The bytes must
  be identical, except where Xen itself differs from the ELF ABI: the arm32
  B/BL mask, which the comparison predicts bit for bit.
* Placement, resolution and ``prepare_payload()`` facts are checked against
  the section headers and symbols as pyelftools reads them.
* Refusals: real fixtures damaged at one field (located with pyelftools),
  each refused with Xen's log line, values filled in.
"""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from lp_rewrite import rewrite
from lp_rewrite.arch import LoadError
from lp_rewrite.arch.arm import ARCH as ARM
from lp_rewrite.arch.x86_64 import ARCH as X86
from lp_rewrite.errors import InputError
from lp_rewrite.loader import LoadedPayload, Refused, default_base, load, synthetic_table
from lp_rewrite.read import read_payload
from lp_rewrite.xensyms import XenSymbols
from tests.conftest import BINUTILS, COMMITTED, TESTDATA, Case, case_params, have_binutils
from tests.elf_sections import elf_section, elf_symtab

CASES = case_params()
HV = {arch: TESTDATA / "emu" / "build" / arch / "hv.elf" for arch in ("x86_64", "aarch64", "arm")}
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4


def _load(source: Path | bytes, name: str = "p", *, prepare: bool = False) -> LoadedPayload:
    if isinstance(source, bytes):
        # Through load() itself, so that its raw-image checks come first.
        try:
            table = synthetic_table([read_payload(source, name=name)])
        except InputError:
            table = XenSymbols(source="<none>")
        return load(source, table, default_base(table), name=name, prepare=prepare)
    payload = read_payload(source)
    table = synthetic_table([payload])
    return load(payload, table, default_base(table), prepare=prepare)


# -- relocated bytes: the loader against GNU ld -------------------------------------


def _link_like_loader(loaded: LoadedPayload, path: Path, arch: str, out: Path) -> Path:
    """Link ``path`` with GNU ld, every section and undefined symbol where the loader put it."""
    script = ["SECTIONS {"]
    for placed in sorted(loaded.sections.values(), key=lambda p: p.address):
        script.append(f'  "{placed.name}" {placed.address:#x} : {{ *("{placed.name}") }}')
    script.append("}")
    with open(path, "rb") as f:
        undefined = {s.name for s in elf_symtab(ELFFile(f)).iter_symbols() if s["st_shndx"] == "SHN_UNDEF"}
    for name in sorted(undefined - {""}):
        found = loaded.table.lookup(name)
        assert found is not None
        script.append(f'"{name}" = {found.address:#x};')
    lds = out.with_suffix(".ld")
    lds.write_text("\n".join(script) + "\n")
    cmd = [BINUTILS[arch] + "ld", "-static", "-e", "0", "--build-id=none", "--no-warn-rwx-segments"]
    proc = subprocess.run([*cmd, "-T", str(lds), "-o", str(out), str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("variant", ["raw", "rewritten"])
@pytest.mark.parametrize("case", CASES)
def test_relocates_like_gnu_ld_but_for_xens_arm32_quirk(
    case: Case, payload_path: Path, variant: str, tmp_path: Path
) -> None:
    if not have_binutils(case.arch):
        pytest.skip(f"{BINUTILS[case.arch]}ld not installed")
    path = payload_path
    if variant == "rewritten":
        path = tmp_path / "rewritten.livepatch"
        rewrite(payload_path, path)
    loaded = _load(path)
    linked = _link_like_loader(loaded, path, case.arch, tmp_path / "linked.elf")
    # Xen's arm32 perform_rel() masks B/BL word offsets with 0x00FFFFFE: GNU ld does not.
    quirk = {(m.relocation.section, m.relocation.offset): m for m in loaded.misdirected_branches()}
    compared = 0
    with open(linked, "rb") as f:
        elf = ELFFile(f)
        for index, placed in loaded.sections.items():
            if placed.nobits or not placed.size or placed.name == ".note.gnu.build-id":
                continue  # ld makes its own build-id note (here: none)
            sec = elf.get_section_by_name(placed.name)
            assert sec is not None and sec["sh_addr"] == placed.address, placed.name
            ours, theirs = bytearray(loaded.section_bytes(index)), bytearray(sec.data())
            for (qsec, qoff), m in quirk.items():
                if qsec != index:
                    continue
                word_ld = struct.unpack_from("<I", theirs, qoff)[0]
                word_xen = struct.unpack_from("<I", ours, qoff)[0]
                assert word_xen == word_ld & ~1, f"{placed.name}+{qoff:#x}: {word_xen:#x} vs ld {word_ld:#x}"
                assert m.actual == m.intended - 4
                theirs[qoff : qoff + 4] = ours[qoff : qoff + 4]
            assert ours == theirs, f"{placed.name} differs from GNU ld"
            compared += len(ours)
    assert compared > 0
    if case.arch != "arm":
        assert not quirk


def test_arm32_branch_mask_is_xens() -> None:
    """perform_rel(): (S + A - P) >> 2 & 0x00FFFFFE, so odd word offsets lose a word."""
    bl = bytearray(struct.pack("<I", 0xEBFFFFFE))  # bl with the implicit addend -8
    ARM.relocate(28, bl, 0, 0x1000 + 12, -8, 0x1000)  # 1 word ahead of P + 8
    assert struct.unpack("<I", bl)[0] == 0xEB000000  # imm24 0: lands at P + 8, 4 bytes short
    bl = bytearray(struct.pack("<I", 0xEBFFFFFE))
    ARM.relocate(28, bl, 0, 0x1000 + 16, -8, 0x1000)  # 2 words ahead: exact
    assert struct.unpack("<I", bl)[0] == 0xEB000002


def test_arm32_movw_movt_ignore_the_addend() -> None:
    """MOVW/MOVT: Xen takes S alone; a non-zero addend only clears the immediate."""
    movw = bytearray(struct.pack("<I", 0xE3000008))  # movw r0, #8 (REL addend 8)
    ARM.relocate(43, movw, 0, 0x12345678, 8, 0)
    assert struct.unpack("<I", movw)[0] == 0xE3050678  # #0x5678, not 0x5680
    movt = bytearray(struct.pack("<I", 0xE3400000))
    ARM.relocate(44, movt, 0, 0x12345678, 0, 0)
    assert struct.unpack("<I", movt)[0] == 0xE3410234  # #0x1234


# -- placement, resolution, prepare ----------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_placement_follows_move_payload(case: Case, payload_path: Path) -> None:
    loaded = _load(payload_path)
    regions = loaded.layout.regions
    assert regions["text"].address == loaded.base
    assert regions["rw"].address == loaded.base + -(-len(regions["text"].data) // 4096) * 4096
    assert regions["ro"].address == regions["rw"].address + -(-len(regions["rw"].data) // 4096) * 4096
    with open(payload_path, "rb") as f:
        sections = list(ELFFile(f).iter_sections())
    running = {"text": 0, "rw": 0, "ro": 0}
    for index, sec in enumerate(sections):
        flags = sec["sh_flags"]
        if not flags & SHF_ALLOC:
            assert index not in loaded.sections, sec.name
            continue
        kind = "text" if flags & SHF_EXECINSTR else "rw" if flags & SHF_WRITE else "ro"
        placed = loaded.sections[index]
        align = sec["sh_addralign"]
        offset = (running[kind] + align - 1) & ~(align - 1) if align else 0
        assert (placed.region, placed.address) == (kind, regions[kind].address + offset), sec.name
        running[kind] = offset + sec["sh_size"]
        if sec["sh_type"] == "SHT_NOBITS":
            assert loaded.section_bytes(index) == bytes(sec["sh_size"])
    assert {k: len(r.data) for k, r in regions.items()} == running


@pytest.mark.parametrize("case", CASES)
def test_symbols_resolve_as_xen_resolves_them(case: Case, payload_path: Path) -> None:
    loaded = _load(payload_path)
    with open(payload_path, "rb") as f:
        elf = ELFFile(f)
        names = [s.name for s in elf.iter_sections()]
        flags = [s["sh_flags"] for s in elf.iter_sections()]
        for i, sym in enumerate(elf_symtab(elf).iter_symbols()):
            if i == 0:
                continue
            got = loaded.resolved.values[i]
            shndx = sym["st_shndx"]
            if shndx == "SHN_UNDEF":
                assert got == loaded.table.symbols[sym.name].address, sym.name
            elif shndx == "SHN_ABS":
                assert got == sym["st_value"]
            elif not flags[shndx] & SHF_ALLOC:
                assert i in loaded.resolved.ignored and got == sym["st_value"], (sym.name, names[shndx])
            else:
                assert got == loaded.sections[shndx].address + sym["st_value"], sym.name


def test_statics_resolve_by_file_name_against_xen_syms() -> None:
    """A rewritten payload's alias "common/hv.c#hv_local" is hv.elf's static hv_local."""
    arch = "x86_64"
    with open(HV[arch], "rb") as f:
        symtab = elf_symtab(ELFFile(f))
        local = next(s["st_value"] for s in symtab.iter_symbols() if s.name == "hv_local")
    out = rewrite(TESTDATA / "emu" / "build" / arch / "emu_multi.livepatch").output
    loaded = load(out, XenSymbols.from_xen_syms(HV[arch]), 0x4040_0000, name="multi")
    syms = loaded.payload.elf.symbols
    alias = next(i for i in range(syms.count) if syms.name(i) == "common/hv.c#hv_local")
    assert loaded.resolved.values[alias] == local
    by_name = {f.name: f for f in loaded.functions}
    assert by_name["common/hv.c#hv_local"].old_addr == local
    assert by_name["common/hv.c#hv_local"].old_addr_from_name


def test_prepare_reads_functions_and_hooks() -> None:
    path = COMMITTED / "x86_64" / "load_hook.livepatch"
    payload = read_payload(path)
    table = synthetic_table([payload])
    loaded = load(payload, table, default_base(table))
    [f] = loaded.functions
    assert (f.name, f.new_addr, f.old_addr) == (
        "on_event",
        loaded.symbol_address("on_event"),
        table.symbols["on_event"].address,
    )
    assert f.old_addr_from_name
    assert loaded.load_hooks == [loaded.symbol_address("lp_load")]
    # old_addr set by a relocation against the undefined original: not looked up by name.
    reloc = COMMITTED / "x86_64" / "old_addr_reloc.livepatch"
    payload = read_payload(reloc)
    table = synthetic_table([payload])
    [g] = load(payload, table, default_base(table)).functions
    assert g.old_addr == table.symbols["target_fn"].address and not g.old_addr_from_name


# -- refusals with Xen's words -------------------------------------------------------------

GOOD = COMMITTED / "x86_64" / "global_refs.livepatch"
GOOD_A64 = COMMITTED / "aarch64" / "global_refs.livepatch"
GOOD_ARM = COMMITTED / "arm" / "global_refs.livepatch"
DEBUG = COMMITTED / "x86_64" / "debug_info.livepatch"


def _shdr(path: Path, name: str) -> tuple[int, int, int]:
    """(header offset, data offset, index) of a section, found with pyelftools."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        for i, s in enumerate(elf.iter_sections()):
            if s.name == name:
                return elf["e_shoff"] + i * elf["e_shentsize"], s["sh_offset"], i
    raise KeyError(name)


def _symbol(path: Path, name: str) -> tuple[int, int]:
    """(file offset of the Elf_Sym, index) of a symbol."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        symtab = elf_symtab(elf)
        for i, s in enumerate(symtab.iter_symbols()):
            if s.name == name:
                return symtab["sh_offset"] + i * symtab["sh_entsize"], i
    raise KeyError(name)


def _edit(path: Path, *edits: Callable[[bytearray], None]) -> bytes:
    data = bytearray(path.read_bytes())
    for e in edits:
        e(data)
    return bytes(data)


def _u(fmt: str, at: int, value: int) -> Callable[[bytearray], None]:
    return lambda d: struct.pack_into(fmt, d, at, value)


def _refused(data: bytes, table: XenSymbols | None = None, base: int | None = None) -> str:
    with pytest.raises(Refused) as info:
        if table is None:
            _load(data, prepare=True)
        else:
            load(data, table, base if base is not None else default_base(table), name="p")
    assert str(info.value) == f"livepatch: p: {info.value.xen_message}"
    return info.value.xen_message


def _rela(path: Path, section: str, entry: int = 0) -> int:
    _h, data, _i = _shdr(path, section)
    return data + entry * 24


REFUSALS: dict[str, tuple[Callable[[], bytes], str]] = {
    "too-many-sections": (lambda: _edit(GOOD, _u("<H", 60, 1024)), "Too many (1024) sections"),
    "program-headers": (lambda: _edit(GOOD, _u("<H", 56, 1)), "Invalid ELF payload"),
    "not-elf": (lambda: b"\0" * 128, "Not an ELF payload"),
    "wrong-machine": (lambda: _edit(GOOD, _u("<H", 18, 3)), "Unsupported ELF Machine type"),
    "arm-eabi": (lambda: _edit(GOOD_ARM, _u("<I", 36, 0x04000000)), "Unsupported ELF EABI(4000000)"),
    "two-symbol-tables": (
        lambda: _edit(GOOD, _u("<I", _shdr(GOOD, ".strtab")[0] + 4, 2)),
        "Unsupported multiple symbol tables",
    ),
    "strtab-not-nul-terminated": (
        lambda: _edit(GOOD, lambda d: d.__setitem__(_shdr(GOOD, ".strtab")[1] + _strtab_size(GOOD) - 1, 0x41)),
        "String table section is corrupted",
    ),
    "over-2MiB": (lambda: GOOD.read_bytes() + bytes(2 * 1024 * 1024), "payload size"),
    "common-symbol": (
        lambda: _edit(GOOD, _u("<H", _symbol(GOOD, "do_work")[0] + 6, 0xFFF2)),
        "Unexpected common symbol: do_work",
    ),
    "stn-undef": (lambda: _edit(GOOD, _u("<I", _rela(GOOD, ".rela.text.install") + 12, 0)), "Encountered STN_UNDEF"),
    "ignored-symbol": (
        lambda: _edit(
            DEBUG,
            _u("<I", _rela(DEBUG, ".rela.text.install") + 12, _symbol_in(DEBUG, ".debug_info")),
        ),
        "Relocation against ignored symbol  cannot be resolved",
    ),
    "unhandled-x86": (
        lambda: _edit(GOOD, _u("<I", _rela(GOOD, ".rela.text.install") + 8, 10)),
        "Unhandled relocation 10",
    ),
    "unhandled-arm": (
        lambda: _edit(GOOD_ARM, lambda d: d.__setitem__(_shdr(GOOD_ARM, ".rel.text.caller")[1] + 4, 10)),
        "Unhandled relocation #a",
    ),
    "offset-past-section": (
        lambda: _edit(GOOD, _u("<Q", _rela(GOOD, ".rela.data.rel.ro.local.work_table"), 4)),
        "Relative relocation offset is past .data.rel.ro.local.work_table section",
    ),
    "write-exec": (
        lambda: _edit(GOOD, _u("<Q", _shdr(GOOD, ".text.caller")[0] + 8, SHF_ALLOC | SHF_EXECINSTR | SHF_WRITE)),
        "Not supporting .text.caller section!",
    ),
    "rel-on-x86": (
        lambda: _edit(GOOD, _u("<I", _shdr(GOOD, ".rela.text.caller")[0] + 4, 9)),
        "SHT_REL relocation unsupported",
    ),
    "wrong-link": (
        lambda: _edit(GOOD, _u("<I", _shdr(GOOD, ".rela.text.caller")[0] + 40, 1)),
        f"Relative link of .rela.text.caller is incorrect (1, expected={_shdr(GOOD, '.symtab')[2]})",
    ),
    "thumb-mapping-symbol": (
        lambda: _edit(GOOD_ARM, _rename_first(GOOD_ARM, "$a", "$t")),
        "Symbol '$t' should not be in payload",
    ),
    "wrong-funcs-size": (
        lambda: _edit(GOOD, _u("<Q", _shdr(GOOD, ".livepatch.funcs")[0] + 32, 100)),
        "Wrong size 100 of .livepatch.funcs (must be multiple of 104)",
    ),
}


def _strtab_size(path: Path) -> int:
    with open(path, "rb") as f:
        return int(elf_section(ELFFile(f), ".strtab")["sh_size"])


def _symbol_in(path: Path, section: str) -> int:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        index = next(i for i, s in enumerate(elf.iter_sections()) if s.name == section)
        return next(i for i, s in enumerate(elf_symtab(elf).iter_symbols()) if s["st_shndx"] == index)


def _rename_first(path: Path, old: str, new: str) -> Callable[[bytearray], None]:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        symtab = elf_symtab(elf)
        strtab = elf.get_section(symtab["sh_link"])
        sym = next(s for s in symtab.iter_symbols() if s.name == old)
        at = strtab["sh_offset"] + sym["st_name"]
    return lambda d: d.__setitem__(slice(at, at + len(new)), new.encode())


@pytest.mark.parametrize("kind", sorted(REFUSALS))
def test_refused_with_xens_words(kind: str) -> None:
    make, expect = REFUSALS[kind]
    message = _refused(make())
    assert message.startswith(expect), message


def test_unknown_symbol_and_unresolvable_old_address() -> None:
    payload = read_payload(COMMITTED / "x86_64" / "load_hook.livepatch")
    full = synthetic_table([payload])
    without_printk = XenSymbols.synthetic_for(n for n in full.symbols if n != "printk")
    assert _refused(payload.data, without_printk) == "Unknown symbol: printk"
    without_original = XenSymbols.synthetic_for(n for n in full.symbols if n != "on_event")
    assert _refused(payload.data, without_original) == "Could not resolve old address of on_event"


def test_overflow_is_refused_per_arch() -> None:
    # x86-64 PC32: the hypervisor 4 GiB away from the payload.
    payload = read_payload(GOOD)
    far = XenSymbols.synthetic_for(synthetic_table([payload]).symbols, base=0x1_0000_0000_0000)
    msg = _refused(GOOD.read_bytes(), far, 0x1000_0000)
    assert msg.startswith("Overflow in relocation ") and " in .rela.text." in msg
    # AArch64 CALL26 (+-128 MiB) and Arm CALL (+-32 MiB): 1 GiB away.
    for path in (GOOD_A64, GOOD_ARM):
        p = read_payload(path)
        table = XenSymbols.synthetic_for(synthetic_table([p]).symbols, base=0x4000_0000)
        msg = _refused(path.read_bytes(), table, 0x1000)
        assert msg.startswith("Overflow in relocation ") and " for .text." in msg, msg


def test_relocate_messages_are_templates_filled_by_the_driver() -> None:
    with pytest.raises(LoadError) as info:
        X86.relocate(2, bytearray(4), 0, 1 << 40, 0, 0)
    assert str(info.value) == "Overflow in relocation {index} in {rela} for {section}"

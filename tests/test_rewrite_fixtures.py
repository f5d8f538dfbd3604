"""The rewriter on every fixture, architecture and fixture set (committed and fresh).

For each payload: the exact set of retargeted relocations (checked against
the independent oracle and the manifest's per-section counts), everything
else unchanged by resolved identity, aliases and renames as specified, and
the output accepted by binutils, pyelftools and LIEF; idempotent and
deterministic.
"""

from __future__ import annotations

import io
import json
import re
import struct
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from lp_rewrite import Policy, analyse, rewrite
from lp_rewrite.errors import InputError
from tests.conftest import (
    BINUTILS,
    COMMITTED,
    Case,
    assert_one_line_error,
    case_params,
    cases,
    have_binutils,
    run_cli,
)
from tests.elf_sections import elf_relocs, elf_section, elf_symtab
from tests.oracle import Payload as Oracle
from tests.oracle import arm_addend

CASES = case_params()


def _retarget_set(result: object) -> set[tuple[str, int, int]]:
    p = result.payload  # type: ignore[attr-defined]
    return {(p.elf.sections[d.section].name, d.offset, d.rtype) for d in result.plan.retargets}  # type: ignore[attr-defined]


@pytest.mark.parametrize("case", CASES)
def test_retargets_exactly_what_the_rule_says(case: Case, payload_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.livepatch"
    result = rewrite(payload_path, out)
    got = _retarget_set(result)
    assert got == Oracle(payload_path).expected_retargets()
    per_section = Counter(sec for sec, _off, _t in got)
    assert dict(per_section) == case.expected, "manifest counts differ"


@pytest.mark.parametrize("case", CASES)
def test_everything_else_is_unchanged_by_resolved_identity(case: Case, payload_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.livepatch"
    result = rewrite(payload_path, out)
    before, after = Oracle(payload_path), Oracle(out)
    originals = before.replacements()
    moved = _retarget_set(result)
    rb, ra = before.relocations(), after.relocations()
    assert len(rb) == len(ra)
    for x, y in zip(rb, ra, strict=True):
        assert (x.section, x.offset, x.rtype) == (y.section, y.offset, y.rtype)
        if (x.section, x.offset, x.rtype) not in moved:
            assert x.resolved == y.resolved, f"{x.section}+{x.offset:#x} changed"
            continue
        # Moved: now an undefined symbol named as the original, designating it exactly.
        kind, secname, value = x.resolved
        assert kind == "def"
        original = originals[(secname, value + x.bias)]
        assert y.resolved[0] == "undef" and y.resolved[1] == original
        assert y.addend + y.bias == 0, f"{y.section}+{y.offset:#x}: alias+{y.addend + y.bias:#x}"


@pytest.mark.parametrize("case", CASES)
def test_symbols_renamed_and_aliases_added(case: Case, payload_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.livepatch"
    result = rewrite(payload_path, out)
    before, after = Oracle(payload_path).symtab, Oracle(out).symtab
    old = list(before.iter_symbols())
    new = list(after.iter_symbols())
    renamed = {i: n for i, n in result.plan.renames.items()}
    for i, sym in enumerate(old):
        twin = new[i]  # global aliases are appended: indices are stable
        for field in ("st_value", "st_size", "st_info", "st_shndx", "st_other"):
            assert sym[field] == twin[field], (i, field)
        assert twin.name == renamed.get(i, sym.name)
        if i in renamed:
            assert twin.name == sym.name + ".lp_new"
    added = new[len(old) :]
    reused = {a.name for a in result.plan.aliases.values() if a.existing is not None}
    assert sorted(s.name for s in added) == sorted(set(result.plan.aliases) - reused)
    for s in added:
        assert s["st_shndx"] == "SHN_UNDEF" and s["st_info"]["bind"] == "STB_GLOBAL"
    if result.plan.retargets:
        # Each original the payload retargets to is named exactly like Xen's symbol table.
        names = {s.name for s in new if s["st_shndx"] == "SHN_UNDEF"}
        assert set(Oracle(payload_path).replacements().values()) & names


@pytest.mark.parametrize("case", CASES)
def test_output_accepted_by_binutils_pyelftools_and_lief(case: Case, payload_path: Path, tmp_path: Path) -> None:
    if not have_binutils(case.arch):
        pytest.skip(f"{BINUTILS[case.arch]}binutils not installed")
    out = tmp_path / "out.livepatch"
    rewrite(payload_path, out)
    readelf = subprocess.run([BINUTILS[case.arch] + "readelf", "-W", "-a", str(out)], capture_output=True, text=True)
    assert readelf.returncode == 0 and readelf.stderr == "", readelf.stderr
    assert "warning" not in readelf.stdout.lower()
    linked = tmp_path / "linked.o"
    ld = subprocess.run([BINUTILS[case.arch] + "ld", "-r", "-o", str(linked), str(out)], capture_output=True, text=True)
    assert ld.returncode == 0 and ld.stderr == "", ld.stderr
    # `ld -r` must not bind the alias to anything: it stays undefined.
    relinked = Oracle(linked)
    undefined = {s.name for s in relinked.symtab.iter_symbols() if s["st_shndx"] == "SHN_UNDEF"}
    for alias in rewrite(payload_path).plan.aliases:
        assert alias in undefined
    _assert_lief_agrees(out)


def _assert_lief_agrees(path: Path) -> None:
    import lief

    binary = lief.ELF.parse(str(path))
    assert binary is not None, "LIEF could not parse the output"
    ours = Oracle(path).elf
    assert [s.name for s in binary.sections] == [s.name for s in ours.iter_sections()]
    assert [(s.size, s.offset) for s in binary.sections][1:] == [
        (s["sh_size"], s["sh_offset"]) for s in ours.iter_sections()
    ][1:]
    theirs = [(s.name, s.value, s.size, s.shndx) for s in binary.symtab_symbols]
    mine = [
        (s.name, s["st_value"], s["st_size"], s["st_shndx"] if isinstance(s["st_shndx"], int) else None)
        for s in elf_symtab(ours).iter_symbols()
    ]
    assert len(theirs) == len(mine)
    for t, m in zip(theirs, mine, strict=True):
        assert t[:3] == m[:3]
        if m[3] is not None:
            assert t[3] == m[3]


@pytest.mark.parametrize("case", CASES)
def test_idempotent_and_deterministic(case: Case, payload_path: Path, tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    first = rewrite(payload_path, a)
    rewrite(payload_path, b)
    assert a.read_bytes() == b.read_bytes()
    second = rewrite(a, c)
    assert not second.changed
    assert c.read_bytes() == a.read_bytes()
    if not first.changed:
        assert a.read_bytes() == payload_path.read_bytes()


def test_hello_world_shaped_payload_is_left_byte_identical(tmp_path: Path) -> None:
    from tests.conftest import ARCHES, COMMITTED

    for arch in ARCHES:
        src = COMMITTED / arch / "hello_world.livepatch"
        out = tmp_path / f"{arch}.livepatch"
        result = rewrite(src, out)
        assert not result.changed
        assert out.read_bytes() == src.read_bytes()
        reasons = Counter(d.reason.value for d in result.decisions)
        # Its entry references are only in .livepatch.funcs and .altinstructions.
        entry_refs = [
            result.payload.elf.sections[d.section].name
            for d in result.decisions
            if d.reason.value == "keep-exempt-section"
        ]
        assert ".altinstructions" in entry_refs and ".livepatch.funcs" in entry_refs
        assert reasons["keep-body-reference"] >= 1


def test_nop_entry_is_skipped() -> None:
    from tests.conftest import COMMITTED

    a = analyse(COMMITTED / "x86_64" / "nop_entry.livepatch")
    assert len(a.funcs.nop_entries) == 1 and a.funcs.count == 2
    assert [r.original for r in a.funcs.replacements] == ["tick"]


def test_old_addr_symbol_is_reused_as_alias(tmp_path: Path) -> None:
    from tests.conftest import ARCHES, COMMITTED

    for arch in ARCHES:
        result = rewrite(COMMITTED / arch / "old_addr_reloc.livepatch", tmp_path / f"{arch}.o")
        (alias,) = result.plan.aliases.values()
        assert alias.name == "target_fn" and alias.existing is not None
        assert not result.plan.appended  # no new symbol needed
        assert result.plan.renames  # target_fn_v2 still renamed


def test_different_name_alias_follows_the_name_string(tmp_path: Path) -> None:
    from tests.conftest import COMMITTED

    result = rewrite(COMMITTED / "x86_64" / "different_name.livepatch", tmp_path / "o")
    assert list(result.plan.aliases) == ["old_impl"]
    assert list(result.plan.renames.values()) == ["fresh_impl.lp_new"]


def test_static_alias_uses_file_hash_name(tmp_path: Path) -> None:
    from tests.conftest import ARCHES, COMMITTED

    for arch in ARCHES:
        result = rewrite(COMMITTED / arch / "static_section.livepatch", tmp_path / f"{arch}.o")
        assert list(result.plan.aliases) == ["common/static_section.c#handler"]


def test_keep_section_option_and_no_default_keep(tmp_path: Path) -> None:
    from tests.conftest import COMMITTED

    src = COMMITTED / "x86_64" / "special_sections.livepatch"
    base = rewrite(src, tmp_path / "a")
    assert {base.payload.elf.sections[d.section].name for d in base.plan.retargets} == {".rodata.rel_words"}
    kept = rewrite(src, tmp_path / "b", policy=Policy(keep_sections=(".rodata.rel_*",)))
    assert not kept.plan.retargets
    loose = rewrite(src, tmp_path / "c", policy=Policy(default_keep=False))
    moved = {loose.payload.elf.sections[d.section].name for d in loose.plan.retargets}
    # .livepatch.funcs is never retargeted; everything else now is.
    assert moved == {
        ".altinstructions",
        ".alt_call_sites",
        ".ex_table",
        ".bug_frames.0",
        ".bug_frames.3",
        ".rodata.rel_words",
    }


def test_rename_template_is_configurable_and_collision_free(tmp_path: Path) -> None:
    from tests.conftest import COMMITTED

    src = COMMITTED / "x86_64" / "global_refs.livepatch"
    result = rewrite(src, tmp_path / "o", policy=Policy(rename_template="__lp_new_{name}"))
    assert list(result.plan.renames.values()) == ["__lp_new_do_work"]
    # "lp_do_work" already names the .livepatch.funcs entry: a numbered suffix avoids it.
    clash = rewrite(src, tmp_path / "p", policy=Policy(rename_template="lp_{name}"))
    assert list(clash.plan.renames.values()) == ["lp_do_work.1"]


def test_cli_summary_and_verbose_decisions(tmp_path: Path) -> None:
    from tests.conftest import COMMITTED

    out = tmp_path / "o.livepatch"
    proc = run_cli("rewrite", "-v", COMMITTED / "x86_64" / "global_refs.livepatch", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "4 relocation(s) retargeted" in proc.stdout
    assert "alias do_work (added" in proc.stdout
    assert "renamed do_work -> do_work.lp_new" in proc.stdout
    assert "keep-exempt-section" in proc.stdout and proc.stdout.count("retarget  retarget") == 4
    again = run_cli("rewrite", out, "-o", tmp_path / "again.livepatch")
    assert again.returncode == 0 and "nothing to retarget" in again.stdout


# -- 32-bit Arm: SHT_RELA, and the MOVW/MOVT addends Xen drops ---------------------

ARM_NONZERO = COMMITTED / "arm" / "nonzero_offset.livepatch"
SHT_REL, SHT_RELA, SHF_ALLOC = 9, 4, 0x2
# What a RELA place holds instead of the implicit addend: the immediate field cleared.
ARM_ADDEND_FIELD = {2: 0xFFFFFFFF, 3: 0xFFFFFFFF, 28: 0x00FFFFFF, 29: 0x00FFFFFF, 43: 0x000F0FFF, 44: 0x000F0FFF}


def _arm_rel_to_rela(data: bytes) -> bytes:
    """The same 32-bit Arm object with every relocation section Xen applies as SHT_RELA.

    Each entry's implicit addend (decoded by the oracle, not by the tool)
    becomes r_addend and its place's addend bits are cleared, as GNU as
    writes RELA objects; ``.rel.X`` is renamed ``.rela.X``. The new tables
    and section name table are appended to the file; the old bytes stay
    behind, claimed by no section.
    """
    buf = bytearray(data)
    shoff, shnum, shstrndx = struct.unpack_from("<I", buf, 0x20)[0], *struct.unpack_from("<HH", buf, 0x30)
    hdr = struct.Struct("<10I")
    headers = [list(hdr.unpack_from(buf, shoff + 40 * i)) for i in range(shnum)]
    names = bytearray(buf[headers[shstrndx][4] : headers[shstrndx][4] + headers[shstrndx][5]])
    for h in headers:
        if h[1] != SHT_REL or not headers[h[7]][2] & SHF_ALLOC:
            continue
        target_off = headers[h[7]][4]
        table = bytearray()
        for pos in range(h[4], h[4] + h[5], 8):
            r_offset, r_info = struct.unpack_from("<II", buf, pos)
            rtype = r_info & 0xFF
            word = struct.unpack_from("<I", buf, target_off + r_offset)[0]
            table += struct.pack("<IIi", r_offset, r_info, arm_addend(rtype, word))
            struct.pack_into("<I", buf, target_off + r_offset, word & ~ARM_ADDEND_FIELD.get(rtype, 0))
        old_name = names[h[0] : names.index(b"\0", h[0])]
        h[0] = len(names)
        names += b".rela" + old_name[len(b".rel") :] + b"\0"
        buf += bytes(-len(buf) % 4)
        h[1], h[4], h[5], h[9] = SHT_RELA, len(buf), len(table), 12
        buf += table
    headers[shstrndx][4], headers[shstrndx][5] = len(buf), len(names)
    buf += names
    for i, h in enumerate(headers):
        hdr.pack_into(buf, shoff + 40 * i, *h)
    return bytes(buf)


def _section_symbol(elf: ELFFile, name: str) -> int:
    index = next(i for i, sec in enumerate(elf.iter_sections()) if sec.name == name)
    symbols = elf_symtab(elf).iter_symbols()
    return next(i for i, s in enumerate(symbols) if s["st_info"]["type"] == "STT_SECTION" and s["st_shndx"] == index)


def _rela_entries(data: bytes) -> dict[tuple[str, int], tuple[int, int]]:
    """(section, offset) -> (r_addend, symbol index) of every RELA entry, via pyelftools."""
    elf = ELFFile(io.BytesIO(data))
    out = {}
    for sec in elf.iter_sections():
        if sec["sh_type"] == "SHT_RELA":
            assert isinstance(sec, RelocationSection)
            target = elf.get_section(sec["sh_info"]).name
            for r in sec.iter_relocations():
                out[(target, r["r_offset"])] = (r["r_addend"], r["r_info_sym"])
    return out


def test_arm_rela_payload_is_rewritten_like_its_rel_twin(tmp_path: Path) -> None:
    from lp_rewrite.certificate import certify
    from lp_rewrite.loader import default_base, load, synthetic_table
    from lp_rewrite.read import read_payload

    rela = tmp_path / "rela.livepatch"
    rela.write_bytes(_arm_rel_to_rela(ARM_NONZERO.read_bytes()))
    elf = ELFFile(io.BytesIO(rela.read_bytes()))
    assert {s["sh_type"] for s in elf.iter_sections() if s.name.startswith(".rel")} == {"SHT_RELA"}
    # The conversion is faithful: Xen's loader (modelled) puts the same bytes in memory.
    table = synthetic_table([read_payload(ARM_NONZERO)])
    base = default_base(table)
    rel_img, rela_img = load(ARM_NONZERO, table, base), load(rela, table, base)
    assert rela_img.relocations and len(rela_img.relocations) == len(rel_img.relocations)
    for index in rel_img.sections:
        assert rel_img.section_bytes(index) == rela_img.section_bytes(index)

    out = tmp_path / "out.livepatch"
    result = rewrite(rela, out)
    assert _retarget_set(result) == _retarget_set(rewrite(ARM_NONZERO)) == Oracle(rela).expected_retargets()
    before, after = _rela_entries(rela.read_bytes()), _rela_entries(out.read_bytes())
    entry = 16  # second_fn's offset in .text, reached through the .text section symbol
    text_sym = _section_symbol(elf, ".text")
    through_section = 0
    for sec, off, _t in _retarget_set(result):
        (a_old, sym), (a_new, _alias) = before[(sec, off)], after[(sec, off)]
        if sym == text_sym:  # .text + A designated the entry; the alias + (A - k) designates the original
            assert a_new == a_old - entry
            through_section += 1
        else:
            assert a_new == a_old  # a symbol at the entry: the addend stays
    assert through_section == 4  # ABS32, REL32, CALL, JUMP24
    # RELA: the places themselves are untouched, only r_addend and the symbol change.
    for sec in (".text.install_second", ".data.rel.ro.offset_table"):
        assert elf_section(elf, sec).data() == elf_section(ELFFile(io.BytesIO(out.read_bytes())), sec).data()
    cert = certify(rela, out.read_bytes())
    assert len(cert.sites) == len(result.plan.retargets)


def _movw_with_addend(tmp_path: Path, addend: int) -> Path:
    """nonzero_offset's MOVW/MOVT of second_fn (.text+16) written as `.text` + 16.

    REL keeps the addend in the instruction's imm4:imm12; Xen's loader drops it.
    """
    data = bytearray(ARM_NONZERO.read_bytes())
    elf = ELFFile(io.BytesIO(bytes(data)))
    rel, text = elf_relocs(elf, ".rel.text.install_second"), elf_section(elf, ".text.install_second")
    text_sym = _section_symbol(elf, ".text")
    for i, r in enumerate(rel.iter_relocations()):
        if r["r_info_type"] in (43, 44):
            struct.pack_into("<I", data, rel["sh_offset"] + 8 * i + 4, (text_sym << 8) | r["r_info_type"])
            place = text["sh_offset"] + r["r_offset"]
            word = struct.unpack_from("<I", data, place)[0] & ~0x000F0FFF
            struct.pack_into("<I", data, place, word | (addend & 0xFFF) | ((addend >> 12) << 16))
    path = tmp_path / "movw.livepatch"
    path.write_bytes(bytes(data))
    return path


def _assert_refused_misapplied(src: Path, tmp_path: Path, where: str, why: str) -> None:
    out = tmp_path / "out" / "o.livepatch"
    out.parent.mkdir(exist_ok=True)
    for args in (("rewrite", src, "-o", out), ("explain", src), ("rewrite", "-v", src, "-o", out)):
        line = assert_one_line_error(run_cli(*args))
        assert where in line and why in line, line
    assert list(out.parent.iterdir()) == []
    with pytest.raises(InputError, match=re.escape(where)):
        analyse(src)


def test_arm_movw_movt_with_an_implicit_addend_is_refused(tmp_path: Path) -> None:
    src = _movw_with_addend(tmp_path, 16)
    # The REL implicit addend (16) designates second_fn's entry, but Xen would load .text's address.
    _assert_refused_misapplied(
        src,
        tmp_path,
        ".text.install_second+0x4: R_ARM_MOVW_ABS_NC against .text+0x10",
        "would load S instead of S+A (and 1 more)",
    )
    # Addend 0 is what Xen applies: `.text` + 0 is accepted (and is first_fn, not a replacement) ...
    zero = analyse(_movw_with_addend(tmp_path, 0), everything=True)
    assert {d.reason.value for d in zero.decisions if d.rtype in (43, 44)} == {"keep-not-replaced"}
    # ... and the committed fixture's MOVW/MOVT of second_fn + 0 are retargeted.
    moved = {(s, o, t) for s, o, t in _retarget_set(rewrite(ARM_NONZERO)) if t in (43, 44)}
    assert moved == {(".text.install_second", 4, 43), (".text.install_second", 8, 44)}


def test_arm_movw_movt_with_an_explicit_addend_is_refused(tmp_path: Path) -> None:
    rela = bytearray(_arm_rel_to_rela(ARM_NONZERO.read_bytes()))
    elf = ELFFile(io.BytesIO(bytes(rela)))
    sec = elf_relocs(elf, ".rela.text.install_second")
    movt = next(i for i, r in enumerate(sec.iter_relocations()) if r["r_info_type"] == 44)
    struct.pack_into("<i", rela, sec["sh_offset"] + 12 * movt + 8, 0x10000)
    src = tmp_path / "rela.livepatch"
    src.write_bytes(bytes(rela))
    _assert_refused_misapplied(
        src, tmp_path, ".text.install_second+0x8: R_ARM_MOVT_ABS against second_fn+0x10000", "instead of S+A"
    )
    # r_addend 0 with immediate bits left in the place: Xen ORs its result into them.
    rela = bytearray(_arm_rel_to_rela(ARM_NONZERO.read_bytes()))
    place = elf_section(elf, ".text.install_second")["sh_offset"] + 4
    struct.pack_into("<I", rela, place, struct.unpack_from("<I", rela, place)[0] | 0x10)
    src.write_bytes(bytes(rela))
    _assert_refused_misapplied(src, tmp_path, ".text.install_second+0x4: R_ARM_MOVW_ABS_NC", "OR its result")


@pytest.mark.skipif(not have_binutils("arm"), reason="arm binutils missing")
def test_arm_assembled_movw_plus_offset_is_refused_even_off_a_replacement(tmp_path: Path) -> None:
    """GNU as writes `#:lower16:table+16` as REL with 16 in the instruction.

    The reference is not to a replaced function: Xen mis-applies it whatever
    the rewrite does, so the payload is refused, not passed through.
    """
    asm = tmp_path / "m.S"
    asm.write_text(
        """
    .syntax unified
    .arm
    .section .text.fn, "ax", %progbits
    .global fn
    .type fn, %function
fn: bx lr
    .size fn, . - fn
    .section .text.user, "ax", %progbits
    .global user
    .type user, %function
user:
    movw r0, #:lower16:table+16
    movt r0, #:upper16:table+16
    bx lr
    .section .rodata.table, "a", %progbits
    .global table
table: .space 32
    .section .rodata.name, "a", %progbits
name: .asciz "fn"
    .section .livepatch.funcs, "aw", %progbits
    .word name, fn, 0, 0, 32
    .byte 2
    .space 92 - 21
"""
    )
    obj = tmp_path / "m.o"
    subprocess.run([BINUTILS["arm"] + "as", "-o", str(obj), str(asm)], check=True)
    words = Oracle(obj).relocations()
    assert {(r.section, r.offset, r.addend) for r in words if r.rtype in (43, 44)} == {
        (".text.user", 0, 16),
        (".text.user", 4, 16),
    }
    _assert_refused_misapplied(obj, tmp_path, ".text.user+0x0: R_ARM_MOVW_ABS_NC against table+0x10", "S+A")


@pytest.mark.skipif(not have_binutils("aarch64"), reason="aarch64 binutils missing")
def test_aarch64_short_reach_entry_references_are_kept(tmp_path: Path) -> None:
    """ADR (+-1 MiB), b.cond (+-1 MiB) and tbz (+-32 KiB) cannot designate a hypervisor function:
    Xen keeps a payload only within +-128 MiB (one B) of the functions it patches. Retargeted,
    Xen would refuse the payload ("Overflow in relocation"); they keep the payload's copy, while
    the ADRP+ADD pair and the BL beside them move to the original."""
    asm = tmp_path / "reach.S"
    asm.write_text(
        """
    .section .text.fn, "ax", %progbits
    .global fn
    .type fn, %function
fn: ret
    .size fn, . - fn
    .section .text.user, "ax", %progbits
    .global user
    .type user, %function
user:
    adr x0, fn
    b.eq fn
    tbz x1, #3, fn
    adrp x2, fn
    add x2, x2, :lo12:fn
    bl fn
    ret
    .size user, . - user
    .section .rodata.name, "a", %progbits
name: .asciz "fn"
    .section .livepatch.funcs, "aw", %progbits
    .xword name, fn, 0
    .word 4, 4
    .byte 2
    .space 104 - 33
"""
    )
    obj = tmp_path / "reach.o"
    subprocess.run([BINUTILS["aarch64"] + "as", "-o", str(obj), str(asm)], check=True)
    analysis = analyse(obj)
    names = analysis.payload.elf.sections
    text_user = {d.offset: d.reason.value for d in analysis.decisions if names[d.section].name == ".text.user"}
    want = {0x0: "keep-out-of-reach", 0x4: "keep-out-of-reach", 0x8: "keep-out-of-reach"}
    want |= {0xC: "retarget", 0x10: "retarget", 0x14: "retarget"}
    assert text_user == want
    out = tmp_path / "reach.rewritten.o"
    result = rewrite(obj, out)
    assert len(result.plan.retargets) == 3
    proc = run_cli("verify", obj, out)  # loads where Xen would: every kept site still reaches the copy
    assert proc.returncode == 0, proc.stderr
    assert "3 retargeted site(s)" in proc.stdout
    # The gate: the ADR's address still escapes (LP001, no rewrite can move it); the branches are calls.
    gate = run_cli("check", "--format", "json", out)
    assert gate.returncode == 1
    found = [(f["rule"], f["section"], f["offset"]) for f in json.loads(gate.stdout)["payloads"][0]["findings"]]
    assert ("LP001", ".text.user", 0) in found
    assert not [f for f in found if f[0] == "LP001" and f[2] != 0]


def test_a_funcs_table_xen_does_not_load_is_refused(tmp_path: Path) -> None:
    """prepare_payload() reads .livepatch.funcs at its load address: without SHF_ALLOC there is none."""
    data = bytearray((COMMITTED / "x86_64" / "global_refs.livepatch").read_bytes())
    elf = ELFFile(io.BytesIO(bytes(data)))
    index = next(i for i, sec in enumerate(elf.iter_sections()) if sec.name == ".livepatch.funcs")
    at = elf["e_shoff"] + index * elf["e_shentsize"] + 8  # sh_flags
    struct.pack_into("<Q", data, at, struct.unpack_from("<Q", data, at)[0] & ~0x2)  # clear SHF_ALLOC
    src = tmp_path / "noalloc.livepatch"
    src.write_bytes(bytes(data))
    line = assert_one_line_error(run_cli("rewrite", src, "-o", tmp_path / "out"))
    assert ".livepatch.funcs is not SHF_ALLOC" in line
    assert not (tmp_path / "out").exists()
    # The Xen-semantics loader (verify, check) refuses it the same way, in prepare_payload().
    from lp_rewrite.loader import Refused, default_base, load, synthetic_table
    from lp_rewrite.read import read_payload

    table = synthetic_table([read_payload(src)])
    with pytest.raises(Refused, match="not SHF_ALLOC: prepare_payload"):
        load(src, table, default_base(table))


# -- fixture shapes: cold parts, several symbols at one entry, hooks ---------------


def _fixture_params(name: str) -> list[object]:
    return [pytest.param(c, id=c.id) for c in cases() if c.name == name]


def _symbol_name(oracle: Oracle, index: int) -> str:
    """A relocation's symbol as readelf shows it (section symbols by their section's name)."""
    sym = oracle.symtab.get_symbol(index)
    if sym["st_info"]["type"] == "STT_SECTION":
        return str(oracle.elf.get_section(sym["st_shndx"]).name)
    return str(sym.name)


@pytest.mark.parametrize("case", _fixture_params("cold_split_O2") + _fixture_params("cold_split_O3"))
def test_cold_part_jumps_back_into_the_new_body_and_stays(case: Case, payload_path: Path) -> None:
    a = analyse(payload_path)
    (rep,) = a.funcs.replacements
    names = a.payload.elf.sections
    back = [
        d
        for d in a.decisions
        if names[d.section].name == ".text.unlikely.check_value" and d.target_section == rep.section
    ]
    assert back, "the cold part must reference check_value's section"
    for d in back:
        assert d.reason.value == "keep-body-reference"
        assert d.target_offset is not None and rep.offset < d.target_offset < rep.offset + rep.size
        sec = names[d.section]
        reloc = a.payload.arch.classify(d.rtype, sec, a.payload.elf.section_data(d.section), d.offset)
        assert reloc is not None and reloc.kind.value == "call"  # a jump, not an address
    # The oracle agrees: nothing in the cold part moves.
    assert not {s for s, _o, _t in Oracle(payload_path).expected_retargets()} & {".text.unlikely.check_value"}


@pytest.mark.parametrize("case", _fixture_params("entry_alias"))
def test_every_symbol_at_an_entry_is_renamed_and_every_reference_through_one_moves(
    case: Case, payload_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.livepatch"
    result = rewrite(payload_path, out)
    before, after = Oracle(payload_path), Oracle(out)
    tick = next(i for i, s in enumerate(before.elf.iter_sections()) if s.name == ".text.tick")
    at_entry = {
        s.name
        for s in before.symtab.iter_symbols()
        if s["st_shndx"] == tick and s["st_value"] == 0 and s["st_info"]["type"] == "STT_FUNC"
    }
    # GCC adds tick.localalias where the code is position-independent (-fpic), not on Arm.
    assert at_entry == {"tick", "tick_alias"} | ({"tick.localalias"} if case.arch != "arm" else set())
    assert sorted(result.plan.renames.values()) == sorted(n + ".lp_new" for n in at_entry)
    defined = {s.name for s in after.symtab.iter_symbols() if s["st_shndx"] == tick}
    assert defined >= {n + ".lp_new" for n in at_entry} and not defined & at_entry
    # Each reference to the entry, whichever symbol it names, now names the alias `tick`.
    through: Counter[str] = Counter()
    for x, y in zip(before.relocations(), after.relocations(), strict=True):
        if x.resolved[0] != "def" or (x.resolved[1], x.resolved[2] + x.bias) != (".text.tick", 0):
            continue
        if x.section in (".livepatch.funcs", ".eh_frame"):
            assert y.resolved == x.resolved
            continue
        through[_symbol_name(before, x.symbol)] += 1
        assert y.resolved[:2] == ("undef", "tick") and y.addend + y.bias == 0
    assert sum(through.values()) == len(result.plan.retargets)
    expected = {"tick", "tick_alias"} if case.arch == "arm" else {"tick", "tick_alias", ".text.tick"}
    assert set(through) == expected, through  # .text.tick: GAS's rewrite of a call to tick.localalias


def _retarget_sections(result: object) -> set[str]:
    return {sec for sec, _off, _t in _retarget_set(result)}


@pytest.mark.parametrize("case", _fixture_params("hook_entry"))
def test_hook_tables_keep_a_replacement_that_is_also_the_hook(case: Case, payload_path: Path, tmp_path: Path) -> None:
    from lp_rewrite.loader import default_base, load, synthetic_table
    from lp_rewrite.read import read_payload

    out = tmp_path / "out.livepatch"
    result = rewrite(payload_path, out, everything=True)
    hooks = [d for d in result.decisions if result.payload.elf.sections[d.section].name.startswith(".livepatch.hooks.")]
    assert {result.payload.elf.sections[d.section].name for d in hooks} == {
        ".livepatch.hooks.load",
        ".livepatch.hooks.unload",
    }
    assert {d.reason.value for d in hooks} == {"keep-exempt-section"}
    assert _retarget_sections(result) == {".text.install_fix"}
    # Not negotiable: without the default keep list the hook tables still keep the copy.
    loose = _retarget_sections(rewrite(payload_path, policy=Policy(default_keep=False)))
    assert ".text.install_fix" in loose and not {s for s in loose if s.startswith(".livepatch.")}
    # Loaded as Xen loads it: both hooks call the payload's apply_fix, the stored pointer is the original.
    table = synthetic_table([read_payload(payload_path), read_payload(out)])
    loaded = load(out, table, default_base(table))
    copy = loaded.symbol_address("apply_fix.lp_new")
    assert loaded.load_hooks == [copy] and loaded.unload_hooks == [copy]
    original = table.lookup("apply_fix")
    assert original is not None and original.address != copy

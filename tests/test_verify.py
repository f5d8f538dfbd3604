"""The ``verify`` certificate: it passes on every real rewrite and fails on wrong ones.

Wrong rewrites are made by hand from real ones, one field at a time, located
with pyelftools (not with the project's reader): a site left behind, a site
moved to the wrong address, a site moved that must stay, a REL addend
encoded wrong, an alias Xen cannot resolve. Each must be refused, naming
the site.
"""

from __future__ import annotations

import io
import json
import re
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from lp_rewrite import Policy, rewrite
from lp_rewrite.certificate import certify
from lp_rewrite.cli.verify import CertificateHook
from lp_rewrite.errors import VerificationError
from lp_rewrite.xensyms import XenSymbols
from tests.conftest import COMMITTED, TESTDATA, Case, assert_one_line_error, case_params, run_cli
from tests.elf_sections import elf_section, elf_symtab

CASES = case_params()
GOOD = COMMITTED / "x86_64" / "global_refs.livepatch"
GOOD_ARM = COMMITTED / "arm" / "nonzero_offset.livepatch"
EMU = TESTDATA / "emu" / "build" / "x86_64"


@pytest.mark.parametrize("case", CASES)
def test_certifies_every_fixture(case: Case, payload_path: Path) -> None:
    result = rewrite(payload_path)
    cert = certify(payload_path, result.output, rewritten_name="rewritten")
    names = result.payload.elf.sections
    planned = {(names[d.section].name, d.offset) for d in result.plan.retargets}
    assert {(s.section, s.offset) for s in cert.sites} == planned
    assert dict(Counter(s.section for s in cert.sites)) == case.expected
    assert cert.blind == [], "every site must tell the entry and the original apart"
    for site in cert.sites:
        assert site.original_address != site.entry
    with open(payload_path, "rb") as f:
        alloc = sum(s["sh_size"] for s in ELFFile(f).iter_sections() if s["sh_flags"] & 0x2)
    assert cert.bytes_compared == alloc


@pytest.mark.parametrize("case", CASES)
def test_a_payload_is_not_its_own_rewrite(case: Case, payload_path: Path) -> None:
    """Completeness: verifying ORIGINAL against itself fails whenever a site must move."""
    if not case.expected:
        assert certify(payload_path, payload_path).sites == []
        return
    first = rewrite(payload_path).plan.retargets[0]
    names = rewrite(payload_path).payload.elf.sections
    with pytest.raises(VerificationError) as info:
        certify(payload_path, payload_path)
    assert f"{names[first.section].name}+{first.offset:#x}" in str(info.value)
    assert "still designates the payload's copy" in str(info.value)


# -- deliberately wrong rewrites ------------------------------------------------------


def _reloc_entries(data: bytes, section: str) -> list[tuple[int, int, int, int]]:
    """(file offset, r_info symbol, type, addend-or-0) of every entry, via pyelftools."""
    elf = ELFFile(io.BytesIO(data))
    sec = elf_section(elf, section)
    assert isinstance(sec, RelocationSection), section
    size = sec["sh_entsize"]
    out = []
    for i, r in enumerate(sec.iter_relocations()):
        out.append((sec["sh_offset"] + i * size, r["r_info_sym"], r["r_info_type"], r.entry.get("r_addend", 0)))
    return out


def _symbol_index(data: bytes, name: str, undefined: bool) -> int:
    symtab = elf_symtab(ELFFile(io.BytesIO(data)))
    for i, s in enumerate(symtab.iter_symbols()):
        if s.name == name and (s["st_shndx"] == "SHN_UNDEF") == undefined:
            return i
    raise KeyError(name)


def _rewritten(path: Path) -> bytearray:
    return bytearray(rewrite(path).output)


def _half_rewritten() -> tuple[bytes, str]:
    """One of the two retargeted calls in .text.caller put back on the payload's copy."""
    out = _rewritten(GOOD)
    alias = _symbol_index(bytes(out), "do_work", undefined=True)
    copy = _symbol_index(bytes(out), "do_work.lp_new", undefined=False)
    at, _sym, rtype, _a = next(e for e in _reloc_entries(bytes(out), ".rela.text.caller") if e[1] == alias)
    struct.pack_into("<Q", out, at + 8, (copy << 32) | rtype)
    offset = struct.unpack_from("<Q", out, at)[0]
    return bytes(out), f".text.caller+{offset:#x} (R_X86_64_PLT32): still designates the payload's copy"


def _wrong_addend() -> tuple[bytes, str]:
    out = _rewritten(GOOD)
    alias = _symbol_index(bytes(out), "do_work", undefined=True)
    at, _s, _t, addend = next(e for e in _reloc_entries(bytes(out), ".rela.text.install") if e[1] == alias)
    struct.pack_into("<q", out, at + 16, addend + 1)
    offset = struct.unpack_from("<Q", out, at)[0]
    return bytes(out), f".text.install+{offset:#x} (R_X86_64_PC32): expected "


def _kept_site_moved() -> tuple[bytes, str]:
    """new_addr in .livepatch.funcs moved to the alias: Xen would patch the original onto itself."""
    out = _rewritten(GOOD)
    alias = _symbol_index(bytes(out), "do_work", undefined=True)
    entries = _reloc_entries(bytes(out), ".rela.livepatch.funcs")
    at, _s, rtype, _a = next(e for e in entries if struct.unpack_from("<Q", out, e[0])[0] == 8)
    struct.pack_into("<Q", out, at + 8, (alias << 32) | rtype)
    return bytes(out), ".livepatch.funcs+0x8: the site of R_X86_64_64 against do_work+0x0 (not one that must be"


def _arm_rel_addend_wrong() -> tuple[bytes, str]:
    """A REL place whose re-encoded implicit addend is off by two words.

    (One word would not do: Xen's arm32 mask clears bit 0 of the word offset,
    so an addend off by one word can relocate to the very same instruction.)
    """
    out = _rewritten(GOOD_ARM)
    alias = _symbol_index(bytes(out), "common/nonzero_offset.c#second_fn", undefined=True)
    elf = ELFFile(io.BytesIO(bytes(out)))
    text = elf_section(elf, ".text.install_second")
    entries = _reloc_entries(bytes(out), ".rel.text.install_second")
    at, _s, _t, _a = next(e for e in entries if e[1] == alias and e[2] == 28)  # R_ARM_CALL
    offset = struct.unpack_from("<I", out, at)[0]
    word_at = text["sh_offset"] + offset
    word = struct.unpack_from("<I", out, word_at)[0]
    struct.pack_into("<I", out, word_at, (word & 0xFF000000) | ((word + 2) & 0xFFFFFF))
    return bytes(out), f".text.install_second+{offset:#x} (R_ARM_CALL): expected "


WRONG: dict[str, tuple[Path, Callable[[], tuple[bytes, str]]]] = {
    "half-rewritten": (GOOD, _half_rewritten),
    "wrong-addend": (GOOD, _wrong_addend),
    "kept-site-moved": (GOOD, _kept_site_moved),
    "arm-rel-addend": (GOOD_ARM, _arm_rel_addend_wrong),
}


@pytest.mark.parametrize("kind", sorted(WRONG))
def test_a_wrong_rewrite_fails_naming_the_site(kind: str, tmp_path: Path) -> None:
    original, make = WRONG[kind]
    data, expect = make()
    with pytest.raises(VerificationError) as info:
        certify(original, data, rewritten_name="bad")
    assert expect in str(info.value), str(info.value)
    # The same through the command line: exit 1, one line naming the site; JSON says why.
    bad = tmp_path / "bad.livepatch"
    bad.write_bytes(data)
    line = assert_one_line_error(run_cli("verify", original, bad), code=1)
    assert expect in line
    proc = run_cli("verify", "--format", "json", original, bad)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["verified"] is False and expect in doc["error"]


def test_an_alias_xen_cannot_resolve_fails_the_load() -> None:
    """Against the real xen-syms: an alias name the hypervisor does not have."""
    original = EMU / "emu_hook.livepatch"
    out = _rewritten(original)
    elf = ELFFile(io.BytesIO(bytes(out)))
    symtab = elf_symtab(elf)
    alias = next(s for s in symtab.iter_symbols() if s.name == "hv_original" and s["st_shndx"] == "SHN_UNDEF")
    at = elf.get_section(symtab["sh_link"])["sh_offset"] + alias["st_name"]
    out[at : at + 11] = b"hv_originaX"
    table = XenSymbols.from_xen_syms(EMU / "hv.elf")
    with pytest.raises(VerificationError) as info:
        certify(original, bytes(out), table=table, rewritten_name="bad")
    assert "Xen would refuse it" in str(info.value) and "Unknown symbol: hv_originaX" in str(info.value)


def test_other_arch_is_not_a_rewrite() -> None:
    with pytest.raises(VerificationError, match="is a arm object, the original is x86_64"):
        certify(GOOD, COMMITTED / "arm" / "global_refs.livepatch")


def _funcs_edited(*, new_addr_type: int | None = None, old_literal: int | None = None) -> bytes:
    """GOOD with entry 0's new_addr relocation type or its old_addr field changed."""
    data = bytearray(GOOD.read_bytes())
    if new_addr_type is not None:
        at, sym, _t, _a = next(e for e in _reloc_entries(bytes(data), ".rela.livepatch.funcs") if _offset(data, e) == 8)
        struct.pack_into("<Q", data, at + 8, (sym << 32) | new_addr_type)
    if old_literal is not None:
        funcs = elf_section(ELFFile(io.BytesIO(bytes(data))), ".livepatch.funcs")
        struct.pack_into("<Q", data, funcs["sh_offset"] + 16, old_literal)
    return bytes(data)


def _offset(data: bytearray, entry: tuple[int, int, int, int]) -> int:
    return int(struct.unpack_from("<Q", data, entry[0])[0])


def test_a_none_relocation_leaves_new_addr_empty(tmp_path: Path) -> None:
    """R_X86_64_NONE at new_addr writes nothing: Xen reads 0, a NOP entry, and nothing is replaced."""
    src = tmp_path / "none.livepatch"
    src.write_bytes(_funcs_edited(new_addr_type=0))
    result = rewrite(src)
    assert not result.funcs.replacements and result.funcs.nop_entries == [0]
    assert result.output == src.read_bytes() and not result.decisions.retargets


def test_a_non_pointer_relocation_at_new_addr_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "pc32.livepatch"
    src.write_bytes(_funcs_edited(new_addr_type=2))  # R_X86_64_PC32: an offset, not the address
    line = assert_one_line_error(run_cli("rewrite", src, "-o", tmp_path / "out"))
    assert "entry 0: new_addr is relocated with R_X86_64_PC32, not R_X86_64_64" in line
    assert not (tmp_path / "out").exists()


def test_a_payload_xen_refuses_anyway_is_certified_as_such(tmp_path: Path) -> None:
    """A literal old_addr out of branch range of any load address: Xen refuses the original
    in prepare_payload() (livepatch_verify_distance) and the rewrite when relocating it: the
    certificate says both are refused instead of claiming a difference."""
    src = tmp_path / "far.livepatch"
    src.write_bytes(_funcs_edited(old_literal=0x4))
    out = tmp_path / "far.rewritten.livepatch"
    result = rewrite(src, out)
    assert result.decisions.retargets  # retargeted to an SHN_ABS alias at 0x4
    cert = certify(src, out)
    assert cert.refused_both and not cert.sites
    assert "old_addr 0x4 is out of branch range" in cert.prepare and "Overflow in relocation" in cert.prepare
    proc = run_cli("verify", src, out)
    assert proc.returncode == 0, proc.stderr
    assert "equivalent: the rewrite does not change whether the payload loads" in proc.stdout
    # The same proof for a rewrite made with other options needs those options.
    renamed = tmp_path / "far.renamed.livepatch"
    rewrite(src, renamed, policy=Policy(rename_template="__new_{name}"))
    assert run_cli("verify", src, renamed).returncode == 1
    proc = run_cli("verify", src, renamed, "--rename-template", "__new_{name}")
    assert proc.returncode == 0, proc.stderr
    assert "equivalent: the rewrite does not change whether the payload loads" in proc.stdout
    # Not so for a file that differs elsewhere: with no loaded image to compare, the
    # rewritten file must be exactly what the rewrite makes of the original.
    wrong = bytearray(out.read_bytes())
    text = elf_section(ELFFile(io.BytesIO(bytes(wrong))), ".text.caller")
    wrong[text["sh_offset"]] ^= 0x40  # the first opcode byte: no relocation's place
    at = text["sh_offset"]
    expect = f"not the rewrite of the original with these options (byte {at:#x} differs)"
    with pytest.raises(VerificationError, match=re.escape(expect)):
        certify(src, bytes(wrong), rewritten_name="not-a-rewrite")


# -- the command line --------------------------------------------------------------------


def test_cli_verify_prints_the_certificate(tmp_path: Path) -> None:
    out = tmp_path / "r.livepatch"
    rewrite(GOOD, out)
    proc = run_cli("verify", GOOD, out)
    assert proc.returncode == 0, proc.stderr
    assert "4 retargeted site(s)" in proc.stdout
    assert ".text.caller" in proc.stdout and ".data.rel.ro.local.work_table+0x0" in proc.stdout
    doc = json.loads(run_cli("verify", "--format", "json", GOOD, out).stdout)
    assert doc["verified"] is True and doc["symbols"] == "<synthetic>"
    assert len(doc["retargeted"]) == 4 and {r["original"] for r in doc["retargeted"]} == {"do_work"}
    per = {s["name"]: s["retargeted"] for s in doc["sections"] if s["retargeted"]}
    assert per == {".data.rel.ro.local.work_table": 1, ".text.caller": 2, ".text.install": 1}


def test_cli_verify_against_xen_syms(tmp_path: Path) -> None:
    original = EMU / "emu_multi.livepatch"
    out = tmp_path / "r.livepatch"
    rewrite(original, out)
    proc = run_cli("verify", "--format", "json", "--xen-syms", EMU / "hv.elf", original, out)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["symbols"] == str(EMU / "hv.elf")
    with open(EMU / "hv.elf", "rb") as f:
        hv = {s.name: s["st_value"] for s in elf_symtab(ELFFile(f)).iter_symbols()}
    got = {r["original"]: r["original_address"] for r in doc["retargeted"]}
    assert got == {
        "hv_original": hv["hv_original"],
        "hv_second": hv["hv_second"],
        "common/hv.c#hv_local": hv["hv_local"],
    }


def test_cli_verify_input_errors_exit_2(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_text("not a payload\n" * 20)
    assert "Not an ELF payload" in assert_one_line_error(run_cli("verify", junk, GOOD))
    assert "not a page-aligned" in assert_one_line_error(run_cli("verify", "--base", "0x1001", GOOD, GOOD))
    # Neither .livepatch.funcs nor a hook section: Xen refuses it, and there is nothing to certify.
    unhooked = tmp_path / "unhooked.livepatch"
    data = (COMMITTED / "x86_64" / "no_funcs.livepatch").read_bytes()
    unhooked.write_bytes(data.replace(b".livepatch.hooks.load\0", b".livepatch.hooks.loaX\0"))
    assert "Nothing to patch" in assert_one_line_error(run_cli("verify", unhooked, unhooked))


def test_rewrite_verify_certifies_before_renaming(tmp_path: Path) -> None:
    out = tmp_path / "r.livepatch"
    proc = run_cli("rewrite", GOOD, "-o", out, "--verify")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("verified: ")
    doc = json.loads(run_cli("rewrite", GOOD, "-o", out, "--verify", "--format", "json").stdout)
    assert len(doc["certificate"]["retargeted"]) == 4
    emu = tmp_path / "emu.livepatch"
    proc = run_cli("rewrite", EMU / "emu_hook.livepatch", "-o", emu, "--verify", "--xen-syms", EMU / "hv.elf")
    assert proc.returncode == 0, proc.stderr


def test_rewrite_verify_stops_a_wrong_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rewriter that forgets a site: the certificate refuses it and nothing is written."""
    from lp_rewrite import pipeline

    bad, _expect = _half_rewritten()
    monkeypatch.setattr(pipeline, "apply_chunks", lambda *_a: [bad])
    monkeypatch.setattr(pipeline, "check_rewrite", lambda *_a: None)
    out = tmp_path / "r.livepatch"
    with pytest.raises(VerificationError, match="still designates the payload's copy"):
        pipeline.rewrite(GOOD, out, before_rename=CertificateHook(Policy(), None, str(out)))
    assert list(tmp_path.iterdir()) == []

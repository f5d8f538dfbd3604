"""`lp-rewrite check`: every rule fires where it must and nowhere else, on each architecture.

Fixtures are the manifest's payloads (committed and freshly built) and the
small hypervisor images of testdata/check (committed and freshly built by
scripts/build_check_xen.py). Expected places come from independent sources
where one exists: the oracle (pyelftools + capstone) for what a rewrite must
move, a plain list of the types Xen's loaders apply, and capstone/struct
decoding of the reported bytes.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from lp_rewrite import Policy, rewrite
from lp_rewrite.check import CheckOptions, check_payload
from lp_rewrite.check.allow import AllowList
from lp_rewrite.check.findings import Finding, PayloadReport, Severity
from lp_rewrite.check.xen import XenImage
from tests.conftest import (
    ARCHES,
    BINUTILS,
    COMMITTED,
    FIXTURE_SETS,
    MANIFEST,
    ROOT,
    Case,
    build_fresh,
    cases,
    have_binutils,
    load_script,
)
from tests.elf_sections import elf_relocs, elf_section, elf_symtab
from tests.oracle import Payload as Oracle

CHECK_XEN = ROOT / "testdata" / "check"


def params(*names: str, arches: tuple[str, ...] = ARCHES) -> list[object]:
    return [
        pytest.param(Case(s, n, a), id=f"{s}-{n}-{a}")
        for s in FIXTURE_SETS
        for n in names
        for a in arches
        if a in MANIFEST[n].get("arches", ARCHES)
    ]


def by_rule(report: PayloadReport, rule: str, *, active: bool = True) -> list[Finding]:
    return [f for f in report.findings if f.rule.id == rule and (f.suppressed is None or not active)]


def symbols(report: PayloadReport, rule: str) -> set[str | None]:
    return {f.symbol for f in report.findings if f.rule.id == rule and f.suppressed is None}


@pytest.fixture(scope="session")
def fresh_xen(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    return build_fresh(tmp_path_factory, "build_check_xen")


@pytest.fixture
def xen(request: pytest.FixtureRequest, fresh_xen: Path | None) -> XenImage:
    """The case's hypervisor image, from the same fixture set as its payload."""
    case: Case = request.node.callspec.params["case"]
    if case.fixture_set == "committed":
        return XenImage.load(CHECK_XEN / case.arch / "xen-syms")
    if fresh_xen is None:
        pytest.skip("cross compilers missing: cannot rebuild the hypervisor images")
    return XenImage.load(fresh_xen / case.arch / "xen-syms")


def check_params(*names: str, arches: tuple[str, ...] = ARCHES) -> list[object]:
    """Cases for the payloads scripts/build_check_xen.py builds (testdata/check/payloads/)."""
    return [pytest.param(Case(s, n, a), id=f"{s}-{n}-{a}") for s in FIXTURE_SETS for n in names for a in arches]


@pytest.fixture
def check_payload_path(request: pytest.FixtureRequest, fresh_xen: Path | None) -> Path:
    """The case's payload from testdata/check/<arch>/, committed or freshly built with its image."""
    case: Case = request.node.callspec.params["case"]
    if case.fixture_set == "committed":
        return CHECK_XEN / case.arch / f"{case.name}.livepatch"
    if fresh_xen is None:
        pytest.skip("cross compilers missing: cannot rebuild the check payloads")
    return fresh_xen / case.arch / f"{case.name}.livepatch"


def rewritten(src: Path, tmp: Path, policy: Policy | None = None) -> Path:
    out = tmp / f"rewritten-{src.name}"
    rewrite(src, out, policy=policy)
    return out


# -- LP001 not rewritten ------------------------------------------------------------


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in cases()])
def test_lp001_flags_exactly_what_a_rewrite_moves_and_nothing_after_it(
    case: Case, payload_path: Path, tmp_path: Path
) -> None:
    report = check_payload(payload_path)
    places = {(f.section, f.offset) for f in by_rule(report, "LP001")}
    expected = {(sec, off) for sec, off, _t in Oracle(payload_path).expected_retargets()}
    assert places == expected
    assert dict(Counter(sec for sec, _o in places)) == case.expected
    after = check_payload(rewritten(payload_path, tmp_path))
    assert not by_rule(after, "LP001")


def test_lp001_follows_the_keep_list_the_payload_was_rewritten_with(tmp_path: Path) -> None:
    src = COMMITTED / "x86_64" / "special_sections.livepatch"
    keep = Policy(keep_sections=(".rodata.rel_*",))
    out = rewritten(src, tmp_path, keep)
    default = check_payload(out)
    assert {f.section for f in by_rule(default, "LP001")} == {".rodata.rel_words"}
    assert not by_rule(check_payload(out, CheckOptions(policy=keep)), "LP001")


# -- LP002 escaping payload-only functions ---------------------------------------


@pytest.mark.parametrize("case", params("check_escape"))
def test_lp002_hook_registering_a_payload_only_function(case: Case, payload_path: Path) -> None:
    report = check_payload(payload_path)
    (hook,) = by_rule(report, "LP002")
    assert hook.symbol == "fresh_cb" and hook.section == ".text.lp_load"
    assert "load hook lp_load" in hook.message
    # reviewed_cb is stored in data, and allowed by the payload's own .lp_rewrite.allow.
    (allowed,) = [f for f in report.findings if f.suppressed is not None]
    assert allowed.suppressed is not None  # what the filter above selected on
    assert allowed.symbol == "reviewed_cb" and ".lp_rewrite.allow" in allowed.suppressed
    assert allowed.section is not None and "reviewed_table" in allowed.section
    # called_only is only called; lp_load only sits in the hook table.
    assert {f.symbol for f in report.findings} == {"fresh_cb", "reviewed_cb"}
    allow = AllowList.build(["fresh_cb"])
    assert not check_payload(payload_path, CheckOptions(allow=allow)).active()


@pytest.mark.parametrize("case", params("payload_only"))
def test_lp002_payload_only_function_in_data_and_in_code(case: Case, payload_path: Path, tmp_path: Path) -> None:
    report = check_payload(rewritten(payload_path, tmp_path))
    found = by_rule(report, "LP002")
    assert {f.symbol for f in found} == {"brand_new"}
    assert {f.section for f in found} == {".text.install_new", _data_section(case.arch, "new_table")}
    # The call from patched() is not a finding; the code reference is one finding, not one per half.
    assert len(found) == 2


def test_lp002_through_capstone_when_the_fast_decoder_declines(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same findings when every rel32 site goes to capstone, and capstone really decodes them."""
    import lp_rewrite.arch.x86_64 as x86_64
    import lp_rewrite.arch.x86_insn as x86_insn

    src = COMMITTED / "x86_64" / "payload_only.livepatch"
    fast = {(f.section, f.offset, f.symbol) for f in by_rule(check_payload(src), "LP002")}
    assert {sec for sec, _off, _sym in fast} == {".text.install_new", ".data.rel.ro.local.new_table"}
    seen: list[tuple[int, str]] = []
    real = x86_insn._capstone

    def spy(code: memoryview, field: int, where: str) -> x86_insn.Rel32Site:
        site = real(code, field, where)
        seen.append((field, site.form.value))
        return site

    for module in (x86_insn, x86_64):
        monkeypatch.setattr(module, "fast_rel32" if module is not x86_insn else "_fast", lambda code, field: None)
    monkeypatch.setattr(x86_64, "CALL_JMP_OPCODES", ())  # and the call/jmp shortcut of classify() and direct_calls()
    monkeypatch.setattr(x86_insn, "_capstone", spy)
    slow = {(f.section, f.offset, f.symbol) for f in by_rule(check_payload(src), "LP002")}
    assert slow == fast
    (code_ref,) = [off for sec, off, _sym in slow if sec == ".text.install_new"]
    assert (code_ref, "lea") in seen  # capstone classified the lea that takes brand_new's address
    assert (1, "jump") in seen  # and patched()'s tail call to it, which it then left alone


def _data_section(arch: str, name: str) -> str:
    return f".rodata.{name}" if arch == "arm" else f".data.rel.ro.local.{name}"


@pytest.mark.parametrize(
    "case", params("keyhandler", "load_hook", "hello_world", "global_refs", "no_funcs", "mutual", "check_xen_refs")
)
def test_lp002_negative_hook_tables_and_calls(case: Case, payload_path: Path) -> None:
    assert not by_rule(check_payload(payload_path), "LP002", active=False)


def test_lp002_allow_file_and_rule_scoped_entries(tmp_path: Path) -> None:
    src = COMMITTED / "x86_64" / "payload_only.livepatch"
    listing = tmp_path / "allow.txt"
    listing.write_text("# reviewed\nbrand_new   unregistered by the revert hook  # trailing comment\n")
    report = check_payload(src, CheckOptions(allow=AllowList.build(files=[listing])))
    assert by_rule(report, "LP002", active=False) and not by_rule(report, "LP002")
    assert all("allow.txt:2" in (f.suppressed or "") for f in report.findings if f.rule.id == "LP002")
    # A rule-scoped entry for another rule does not allow LP002.
    other = check_payload(src, CheckOptions(allow=AllowList.build(["LP001:brand_new"])))
    assert len(by_rule(other, "LP002")) == 2
    assert not by_rule(check_payload(src, CheckOptions(allow=AllowList.build(["escaping-new-function:*"]))), "LP002")


HIDDEN_ASM = {
    "x86_64": "lea fn(%rip), %rax\n ret",
    "aarch64": "adr x0, fn\n ret",
    "arm": "adr r0, fn\n bx lr",
}


@pytest.mark.parametrize("arch", ARCHES)
def test_lp002_hidden_self_address_of_a_payload_only_function(arch: str, tmp_path: Path) -> None:
    if not have_binutils(arch):
        pytest.skip(f"{BINUTILS[arch]}as not installed")
    src = tmp_path / "h.s"
    # A local function: GAS resolves a reference to it within its own section.
    src.write_text(f".text\n.type fn, %function\nfn:\n {HIDDEN_ASM[arch]}\n.size fn, .-fn\n")
    obj = tmp_path / "h.o"
    subprocess.run([BINUTILS[arch] + "as", "-o", str(obj), str(src)], check=True)
    report = check_payload(obj)
    (found,) = by_rule(report, "LP002")
    assert found.symbol == "fn" and "resolved by the assembler" in found.message
    assert found.offset == 0


# -- LP003 unsupported relocation types ------------------------------------------

XEN_TYPES = {
    "EM_X86_64": {0, 1, 2, 4},
    "EM_AARCH64": {257, 258, 259, 260, 261, 262, *range(263, 273), 274, 275, 276, 277, 278, 279, 280, 282, 283}
    | {284, 285, 286, *range(287, 294), 299},
    "EM_ARM": {0, 2, 3, 28, 29, 43, 44},
}


def _refused(path: Path) -> set[tuple[str, int]]:
    """(section, offset) of every relocation Xen would not apply, read with pyelftools."""
    out = set()
    with open(path, "rb") as stream:
        elf = ELFFile(stream)
        allowed = XEN_TYPES[elf["e_machine"]]
        for sec in elf.iter_sections():
            if isinstance(sec, RelocationSection) and sec["sh_info"]:
                target = elf.get_section(sec["sh_info"])
                if target["sh_flags"] & 2:
                    out |= {
                        (target.name, r["r_offset"]) for r in sec.iter_relocations() if r["r_info_type"] not in allowed
                    }
    return out


@pytest.mark.parametrize("case", params("check_unsupported", "unsupported_reloc"))
def test_lp003_every_refused_relocation(case: Case, payload_path: Path, tmp_path: Path) -> None:
    report = check_payload(payload_path)
    places = {(f.section, f.offset) for f in by_rule(report, "LP003")}
    assert places and places == _refused(payload_path)
    names = " ".join(f.message for f in by_rule(report, "LP003"))
    assert (
        {"x86_64": "GOT", "aarch64": "GOT", "arm": "R_ARM_THM_"}[case.arch] in names
        if case.name.startswith("check")
        else "R_X86_64_32S" in names
    )
    # rewrite refuses the same payload.
    from lp_rewrite.errors import InputError

    with pytest.raises(InputError, match=MANIFEST[case.name]["error"]):
        rewrite(payload_path, tmp_path / "out")


@pytest.mark.parametrize("case", params("global_refs", "hello_world", "check_escape"))
def test_lp003_negative(case: Case, payload_path: Path) -> None:
    assert _refused(payload_path) == set()
    assert not by_rule(check_payload(payload_path), "LP003")


# -- LP004-LP007 with --xen-syms --------------------------------------------------


@pytest.mark.parametrize("case", params("check_xen_refs"))
def test_lp004_to_lp007_against_the_hypervisor_image(
    case: Case, payload_path: Path, xen: XenImage, tmp_path: Path
) -> None:
    options = CheckOptions(xen=xen)
    report = check_payload(payload_path, options)
    assert symbols(report, "LP004") == {"no_such_fn", "common/kernel.c#not_there"}
    assert symbols(report, "LP005") == {"common/dup.c#twice"}
    too_short = {"x86_64": {"do_work", "tiny", "tiny_endbr"}}.get(case.arch, {"do_work"})
    assert symbols(report, "LP006") == too_short
    ibt = {"plain_fn", "sealed_fn"} if case.arch == "x86_64" else set()
    assert symbols(report, "LP007") == ibt
    # Rewritten, the reference to plain_fn names Xen's original: still no landing pad.
    after = check_payload(rewritten(payload_path, tmp_path), options)
    assert not by_rule(after, "LP001")
    assert symbols(after, "LP007") == ibt
    assert symbols(after, "LP004") == symbols(report, "LP004")
    assert not by_rule(report, "LP018") and not by_rule(after, "LP018")  # nothing there is in .init.*


@pytest.mark.parametrize("case", params("check_xen_refs", arches=("x86_64",)))
def test_lp006_lp007_facts_match_the_image_bytes(case: Case, payload_path: Path, xen: XenImage) -> None:
    """What the rules assume about the image, checked with pyelftools and struct."""
    with open(xen.path, "rb") as stream:
        elf = ELFFile(stream)
        syms = {s.name: s for s in elf_symtab(elf).iter_symbols()}
        text = elf_section(elf, ".text")
        code = text.data()

        def entry(name: str) -> bytes:
            off = syms[name]["st_value"] - text["sh_addr"]
            return bytes(code[off : off + 4])

        clobber = elf_section(elf, ".init.data")
        lo = syms["__initdata_cf_clobber_start"]["st_value"] - clobber["sh_addr"]
        hi = syms["__initdata_cf_clobber_end"]["st_value"] - clobber["sh_addr"]
        sealed = set(struct.unpack(f"<{(hi - lo) // 8}Q", clobber.data()[lo:hi]))
        # One table of each kind: .init.data.cf_clobber (writable) and .init.rodata.cf_clobber.
        tables = {s.name: s for s in elf_symtab(elf).iter_symbols() if s.name.startswith("boot_")}
    endbr = bytes.fromhex("f30f1efa")
    assert entry("tiny_endbr") == endbr and entry("ibt_fn") == endbr and entry("plain_fn") != endbr
    both = {syms["sealed_fn"]["st_value"], syms["sealed_data_fn"]["st_value"]}
    assert both <= sealed and xen.sealed == both
    assert set(tables) == {"boot_ops", "boot_data_ops"}
    assert syms["tiny"]["st_size"] < 5 and 5 <= syms["tiny_endbr"]["st_size"] < 9
    assert xen.ibt


@pytest.mark.parametrize("case", params("check_xen_refs", arches=("x86_64",)))
def test_lp007_through_absolute_aliases(case: Case, payload_path: Path, xen: XenImage, tmp_path: Path) -> None:
    """rewrite --absolute: the reference to plain_fn goes through an SHN_ABS alias, and still lands on no ENDBR64."""
    out = tmp_path / "absolute.livepatch"
    rewrite(payload_path, out, policy=Policy(absolute=True, xen_syms=xen.path))
    with open(out, "rb") as stream:
        alias = [s for s in elf_symtab(ELFFile(stream)).iter_symbols() if s.name == "plain_fn"]
    assert [s["st_shndx"] for s in alias] == ["SHN_ABS"]  # the only plain_fn left is the absolute alias
    report = check_payload(out, CheckOptions(xen=xen))
    assert symbols(report, "LP007") == {"plain_fn", "sealed_fn"}
    (f,) = [f for f in by_rule(report, "LP007") if f.symbol == "plain_fn"]
    assert f"absolute {alias[0]['st_value']:#x}" in f.message and "does not start with ENDBR64" in f.message
    before = {(g.section, g.offset) for g in by_rule(check_payload(payload_path, CheckOptions(xen=xen)), "LP007")}
    assert {(g.section, g.offset) for g in by_rule(report, "LP007")} == before
    assert not by_rule(report, "LP001") and not by_rule(report, "LP013")


def _abs_value(path: Path, name: str, delta: int, dst: Path) -> Path:
    """``path`` with the SHN_ABS symbol ``name`` moved by ``delta`` bytes."""
    data = bytearray(path.read_bytes())
    with open(path, "rb") as stream:
        elf = ELFFile(stream)
        symtab = elf_symtab(elf)
        (i,) = [i for i, s in enumerate(symtab.iter_symbols()) if s.name == name and s["st_shndx"] == "SHN_ABS"]
        wide = elf.elfclass == 64
        at = symtab["sh_offset"] + i * symtab["sh_entsize"] + (8 if wide else 4)
    fmt = "<Q" if wide else "<I"
    struct.pack_into(fmt, data, at, struct.unpack_from(fmt, data, at)[0] + delta)
    dst.write_bytes(bytes(data))
    return dst


def _literal_old_addr(path: Path, original: str, value: int, dst: Path) -> Path:
    """``path`` with a literal old_addr for the entry that replaces ``original`` (a field with no relocation)."""
    from lp_rewrite.identify import identify
    from lp_rewrite.read import read_file, read_payload

    (rep,) = [r for r in identify(read_payload(read_file(path), str(path))).replacements if r.original == original]
    data = bytearray(path.read_bytes())
    with open(path, "rb") as stream:
        elf = ELFFile(stream)
        funcs = elf_section(elf, ".livepatch.funcs")
        ptr, entry = (8, 104) if elf.elfclass == 64 else (4, 92)
    struct.pack_into("<Q" if ptr == 8 else "<I", data, funcs["sh_offset"] + rep.entry * entry + 2 * ptr, value)
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("case", params("check_xen_refs"))
def test_lp013_absolute_values_and_literals_against_the_image(
    case: Case, payload_path: Path, xen: XenImage, tmp_path: Path
) -> None:
    options = CheckOptions(xen=xen)
    plain_fn = xen.symbols.lookup("plain_fn")
    assert plain_fn is not None
    absolute = tmp_path / "absolute.livepatch"
    rewrite(payload_path, absolute, policy=Policy(absolute=True, xen_syms=xen.path))
    assert not by_rule(check_payload(absolute, options), "LP013")
    # An SHN_ABS value 4 bytes into the function: every reference through it lands there.
    off = _abs_value(absolute, "plain_fn", 4, tmp_path / "off.livepatch")
    (f,) = by_rule(check_payload(off, options), "LP013")
    assert f.symbol == "plain_fn" and f.section == ".text.install_all"
    assert f"{plain_fn.address + 4:#x} (0x4 bytes into plain_fn there)" in f.message
    assert f"has plain_fn at {plain_fn.address:#x}" in f.message
    # Literal old_addr values: right, wrong, and a name this image lacks.
    right = _literal_old_addr(payload_path, "plain_fn", plain_fn.address, tmp_path / "right.livepatch")
    assert not by_rule(check_payload(right, options), "LP013")
    wrong = _literal_old_addr(payload_path, "plain_fn", plain_fn.address + 16, tmp_path / "wrong.livepatch")
    (f,) = by_rule(check_payload(wrong, options), "LP013")
    assert f.section == ".livepatch.funcs" and f.length == (8 if case.arch != "arm" else 4)
    assert f.file_offset is not None
    assert (
        int.from_bytes(wrong.read_bytes()[f.file_offset : f.file_offset + f.length], "little") == plain_fn.address + 16
    )
    gone = _literal_old_addr(payload_path, "common/kernel.c#not_there", plain_fn.address, tmp_path / "gone.livepatch")
    (f,) = by_rule(check_payload(gone, options), "LP013")
    assert "the entry of plain_fn there" in f.message and "has no common/kernel.c#not_there" in f.message
    # An ambiguous static: a literal naming one of the two is neither LP005 nor LP013; anything else is LP013.
    twins = [c.address for c in xen.symbols.matches("common/dup.c#twice")]
    assert len(twins) == 2
    chosen = check_payload(_literal_old_addr(payload_path, "common/dup.c#twice", twins[1], tmp_path / "t.lp"), options)
    assert "common/dup.c#twice" not in symbols(chosen, "LP005") | symbols(chosen, "LP013")
    neither = check_payload(_literal_old_addr(payload_path, "common/dup.c#twice", 8, tmp_path / "n.lp"), options)
    assert symbols(neither, "LP013") == {"common/dup.c#twice"}


@pytest.mark.parametrize("case", check_params("check_aliases"))
def test_lp004_lp005_through_the_aliases_a_rewrite_adds(
    case: Case, check_payload_path: Path, xen: XenImage, tmp_path: Path
) -> None:
    """After the rewrite the originals are undefined symbols: Xen resolves them by name, and so does check."""
    options = CheckOptions(xen=xen)
    raw = check_payload(check_payload_path, options)
    # Before: the names are only .livepatch.funcs strings (old_addr 0).
    assert {(f.symbol, f.section) for f in by_rule(raw, "LP004")} == {("common/kernel.c#gone", ".livepatch.funcs")}
    assert {(f.symbol, f.section) for f in by_rule(raw, "LP005")} == {("common/dup.c#twice", ".livepatch.funcs")}
    after = check_payload(rewritten(check_payload_path, tmp_path), options)
    assert not by_rule(after, "LP001")
    for rule_id, name in (("LP004", "common/kernel.c#gone"), ("LP005", "common/dup.c#twice")):
        found = {f.section: f for f in by_rule(after, rule_id)}
        assert set(found) == {".livepatch.funcs", ".text.install"}, rule_id
        alias = found[".text.install"]
        assert alias.symbol == name and alias.message.startswith(f"undefined symbol {name!r}")
        # The place is the reference the rewrite moved to the alias, read back independently.
        with open(tmp_path / f"rewritten-{check_payload_path.name}", "rb") as stream:
            elf = ELFFile(stream)
            symtab = elf_symtab(elf)
            rel = next(
                sec
                for sec in elf.iter_sections()
                if isinstance(sec, RelocationSection) and elf.get_section(sec["sh_info"]).name == ".text.install"
            )
            at = {r["r_offset"] for r in rel.iter_relocations() if symtab.get_symbol(r["r_info_sym"]).name == name}
        assert alias.offset in at
    if case.arch == "x86_64":
        assert symbols(after, "LP007") == {"common/dup.c#twice", "sealed_data_fn"}
    assert not by_rule(raw, "LP018") and not by_rule(after, "LP018")


def test_lp007_not_without_ibt(tmp_path: Path) -> None:
    image = tmp_path / "xen-syms"
    image.write_bytes(
        (CHECK_XEN / "x86_64" / "xen-syms").read_bytes().replace(bytes.fromhex("f30f1efa"), b"\x0f\x1f\x40\x00")
    )
    xen = XenImage.load(image)
    assert not xen.ibt
    report = check_payload(COMMITTED / "x86_64" / "check_xen_refs.livepatch", CheckOptions(xen=xen))
    assert not by_rule(report, "LP007")
    # Without ENDBR64 the jump needs only 5 bytes: tiny_endbr (7 bytes) now fits.
    assert symbols(report, "LP006") == {"do_work", "tiny"}


@pytest.mark.parametrize("case", params("global_refs", "keyhandler", "load_hook"))
def test_lp004_to_lp007_negative_on_a_rewritten_payload(
    case: Case, payload_path: Path, xen: XenImage, tmp_path: Path
) -> None:
    """Every name resolves once, every original is long enough and cf_check: nothing to say.

    (On 32-bit Arm, Xen's branch encoding still sends some calls astray: LP014, tested below.)
    """
    report = check_payload(rewritten(payload_path, tmp_path), CheckOptions(xen=xen))
    assert [f for f in report.findings if f.rule.id != "LP014"] == []
    assert case.arch == "arm" or not by_rule(report, "LP014")


def test_xen_syms_for_another_architecture_is_refused() -> None:
    from lp_rewrite.errors import UsageError

    with pytest.raises(UsageError, match="is arm"):
        check_payload(
            COMMITTED / "x86_64" / "global_refs.livepatch",
            CheckOptions(xen=XenImage.load(CHECK_XEN / "arm" / "xen-syms")),
        )


def _renamed_file_symbol(src: Path, dst: Path, file_name: str, new_name: bytes) -> Path:
    """A copy of src whose first FILE symbol ``file_name`` is renamed (in place: new_name is not longer).

    An empty new_name points the symbol's st_name at the string table's
    leading NUL: other symbols may share the string itself.
    """
    data = bytearray(src.read_bytes())
    with open(src, "rb") as stream:
        elf = ELFFile(stream)
        symtab = elf_symtab(elf)
        strtab = elf.get_section(symtab["sh_link"])
        index = next(i for i, sym in enumerate(symtab.iter_symbols()) if sym.name == file_name)
        entry = symtab["sh_offset"] + index * symtab["sh_entsize"]
        pos = strtab["sh_offset"] + symtab.get_symbol(index)["st_name"]
    assert len(new_name) <= len(file_name)
    if new_name:
        data[pos : pos + len(file_name)] = new_name.ljust(len(file_name), b"\0")
    else:
        struct.pack_into("<I", data, entry, 0)  # st_name comes first in both ELF classes
    dst.write_bytes(bytes(data))
    return dst


def test_xen_syms_file_scope_as_xen_tools_symbols_c(tmp_path: Path) -> None:
    """xen/tools/symbols.c: a local is FILE#name; an empty FILE name ends the scope ('filename = *str ?
    strdup(str) : NULL'); a name with _compiled. in it, FILE part included, is left out."""
    src = CHECK_XEN / "x86_64" / "xen-syms"
    table = XenImage.load(src).symbols
    assert "common/dup.c#twice" in table.ambiguous and "common/kernel.c#helper" in table.symbols
    blank = XenImage.load(_renamed_file_symbol(src, tmp_path / "blank", "common/dup.c", b"")).symbols
    assert "twice" in blank.symbols and "#twice" not in blank.symbols  # the first twice: no scope
    assert "common/dup.c#twice" in blank.symbols and not blank.ambiguous
    compiled = XenImage.load(
        _renamed_file_symbol(src, tmp_path / "compiled", "common/kernel.c", b"k_compiled.c")
    ).symbols
    assert (
        not [n for n in compiled.symbols if n.endswith(("#helper", "#boot_ops"))] and "helper" not in compiled.symbols
    )
    assert set(table.symbols) - set(compiled.symbols) == {
        "common/kernel.c#helper",
        "common/kernel.c#boot_data_ops",
        "common/kernel.c#boot_ops",
    }


# -- LP018 init sections ------------------------------------------------------------

# kernel.c's boot-time symbols and the output section xen-syms has them in.
INIT = {"init_only_fn": ".init.text", "init_setup_fn": ".init.text", "init_only_data": ".init.data"}


def _relocations_to(path: Path, name: str) -> list[tuple[str, int]]:
    """(section, offset) of every relocation against ``name`` in a loaded section, in file order (pyelftools)."""
    from elftools.elf.constants import SH_FLAGS

    out = []
    with open(path, "rb") as stream:
        elf = ELFFile(stream)
        symtab = elf_symtab(elf)
        for sec in elf.iter_sections():
            if not isinstance(sec, RelocationSection):
                continue
            target = elf.get_section(sec["sh_info"])
            if not target["sh_flags"] & SH_FLAGS.SHF_ALLOC:
                continue
            for r in sec.iter_relocations():
                if symtab.get_symbol(r["r_info_sym"]).name == name:
                    out.append((target.name, r["r_offset"]))
    return out


@pytest.mark.parametrize("case", check_params("check_init"))
def test_lp018_init_code_and_data_against_the_image(case: Case, check_payload_path: Path, xen: XenImage) -> None:
    """Calls, reads and pointers to .init.text/.init.data symbols, and originals there; .text ones are fine."""
    with open(xen.path, "rb") as stream:  # the image's facts, read independently
        elf = ELFFile(stream)
        section_of = {
            s.name: elf.get_section(s["st_shndx"]).name
            for s in elf_symtab(elf).iter_symbols()
            if s.name and isinstance(s["st_shndx"], int)
        }
    assert {n: section_of[n] for n in INIT} == INIT
    assert section_of["register_keyhandler"] == section_of["printk"] == ".text"
    assert {n: getattr(xen.symbols.lookup(n), "section", None) for n in INIT} == INIT

    report = check_payload(check_payload_path, CheckOptions(xen=xen))
    assert symbols(report, "LP018") == set(INIT)  # not printk, register_keyhandler or dump_runq
    assert not [f for f in report.findings if f.rule.id not in ("LP018", "LP014")]
    assert case.arch == "arm" or not by_rule(report, "LP014")
    found = by_rule(report, "LP018")
    uses = {str(f.symbol): f for f in found if f.section != ".livepatch.funcs"}
    assert set(uses) == set(INIT)
    for name, f in uses.items():
        refs = [r for r in _relocations_to(check_payload_path, name) if r[0] != ".livepatch.funcs"]
        assert (f.section, f.offset) == refs[0], name  # the first, as LP004 and LP013 place theirs
        assert f"the hypervisor's {name}, which Xen frees after boot ({INIT[name]})" in f.message
        assert f.file_offset is not None and f.length == 4
        more = len(refs) - 1
        assert (f"({more} more reference" in f.message) == bool(more), f.message
    assert {n: f.symbol_kind for n, f in uses.items()} == {
        "init_only_fn": "function",
        "init_setup_fn": "function",
        "init_only_data": "variable",
    }
    assert uses["init_only_fn"].message.startswith("uses_init_code+")
    assert "calls the hypervisor's init_only_fn" in uses["init_only_fn"].message
    assert "the call jumps into freed memory" in uses["init_only_fn"].message
    # A load on x86 (mov foo(%rip)) and AArch64 (adrp+ldr); Arm builds the address (movw+movt), then loads.
    data = "takes the address of" if case.arch == "arm" else "reads or writes"
    assert f"{data} the hypervisor's init_only_data" in uses["init_only_data"].message
    assert str(uses["init_setup_fn"].section).startswith(".data")
    assert "takes the address of the hypervisor's init_setup_fn" in uses["init_setup_fn"].message
    # The two entries: init_setup_fn through old_addr's relocation, init_only_fn by its name string.
    ptr, entry = (4, 92) if case.arch == "arm" else (8, 104)
    patched = {f.symbol: f for f in found if f.section == ".livepatch.funcs"}
    assert set(patched) == {"init_setup_fn", "init_only_fn"}
    old_addr = [r for r in _relocations_to(check_payload_path, "init_setup_fn") if r[0] == ".livepatch.funcs"]
    assert [(".livepatch.funcs", patched["init_setup_fn"].offset)] == old_addr
    assert old_addr[0][1] % entry == 2 * ptr
    assert "(old_addr's symbol, resolved by name), which is in .init.text" in patched["init_setup_fn"].message
    only = patched["init_only_fn"]
    assert only.offset is not None and only.offset % entry == 0 and only.length == ptr
    assert "(its name string, old_addr 0), which is in .init.text" in only.message
    assert "writes its jump into freed memory" in only.message


@pytest.mark.parametrize("case", params("check_xen_refs"))
def test_lp018_prelinked_literals_and_absolute_symbols(
    case: Case, payload_path: Path, xen: XenImage, tmp_path: Path
) -> None:
    """A literal old_addr, or an SHN_ABS value, in .init.text is judged by the address, whatever the name."""
    options = CheckOptions(xen=xen)
    init_fn, plain_fn = xen.symbols.lookup("init_setup_fn"), xen.symbols.lookup("plain_fn")
    assert init_fn is not None and plain_fn is not None
    right = _literal_old_addr(payload_path, "plain_fn", plain_fn.address, tmp_path / "right.livepatch")
    assert not by_rule(check_payload(right, options), "LP018")
    into_init = _literal_old_addr(payload_path, "plain_fn", init_fn.address, tmp_path / "init.livepatch")
    report = check_payload(into_init, options)
    (f,) = by_rule(report, "LP018")
    assert f.symbol == "plain_fn" and f.section == ".livepatch.funcs"
    assert f"(old_addr {init_fn.address:#x}), which is in .init.text" in f.message
    assert {(g.section, g.offset) for g in by_rule(report, "LP013")} == {(f.section, f.offset)}
    # rewrite --absolute: the reference to plain_fn goes through an SHN_ABS alias; moved into .init.text.
    absolute = tmp_path / "absolute.livepatch"
    rewrite(payload_path, absolute, policy=Policy(absolute=True, xen_syms=xen.path))
    assert not by_rule(check_payload(absolute, options), "LP018")
    moved = _abs_value(absolute, "plain_fn", init_fn.address - plain_fn.address, tmp_path / "moved.livepatch")
    report = check_payload(moved, options)
    (f,) = by_rule(report, "LP018")
    assert f.symbol == "plain_fn" and f.section == ".text.install_all"
    assert f"the hypervisor's plain_fn (absolute {init_fn.address:#x}), which Xen frees after boot" in f.message
    assert {(g.section, g.offset) for g in by_rule(report, "LP013")} == {(f.section, f.offset)}


# -- LP008 hidden references -------------------------------------------------------


def _insn_at(arch: str, blob: bytes) -> str:
    import capstone

    mode = {
        "x86_64": (capstone.CS_ARCH_X86, capstone.CS_MODE_64),
        "aarch64": (capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM),
        "arm": (capstone.CS_ARCH_ARM, capstone.CS_MODE_ARM),
    }[arch]
    insn = next(capstone.Cs(*mode).disasm(blob, 0))
    return f"{insn.mnemonic} {insn.op_str}"


@pytest.mark.parametrize("case", params("check_hidden_ref"))
def test_lp008_hidden_reference_to_a_replaced_entry(case: Case, payload_path: Path, tmp_path: Path) -> None:
    report = check_payload(payload_path)
    (found,) = by_rule(report, "LP008")
    assert found.symbol == "common/check_hidden_ref.c#handler"
    assert found.file_offset is not None
    blob = payload_path.read_bytes()[found.file_offset : found.file_offset + 16]
    insn = _insn_at(case.arch, blob)
    assert insn.split()[0] in {"x86_64": {"lea"}, "aarch64": {"adr"}, "arm": {"sub", "adr"}}[case.arch], insn
    # No relocation at that place, so a rewrite leaves it, and check still says so.
    assert by_rule(check_payload(rewritten(payload_path, tmp_path)), "LP008")


@pytest.mark.parametrize("case", params("nonzero_offset", "global_refs", "static_section", "cold_split_O3", "mutual"))
def test_lp008_negative(case: Case, payload_path: Path) -> None:
    assert not by_rule(check_payload(payload_path), "LP008")


# -- LP014 branches Xen's arm32 loader encodes short ----------------------------------


def _short_branches(path: Path, xen_syms: Path | None) -> set[tuple[str, int]]:
    """(section, offset) of each B/BL whose word offset is odd, by Xen's arithmetic on pyelftools' reading.

    Independent of the project: the RX layout is move_payload()'s (executable,
    non-writable SHF_ALLOC sections in header order, each at its alignment)
    from a page-aligned start, hypervisor addresses come from lookup.c's rules
    (scripts/lpbuild_mini.py), and Xen's ``(S + A - P) >> 2`` decides.
    Branches to names the image lacks or has twice are not judged, nor, without
    an image, any branch to a hypervisor symbol.
    """
    lookup = load_script("lpbuild_mini").XenSymsLookup(xen_syms) if xen_syms is not None else None
    out = set()
    with open(path, "rb") as stream:
        elf = ELFFile(stream)
        sections = list(elf.iter_sections())
        rx: dict[int, int] = {}
        end = 0
        for i, sec in enumerate(sections):
            if sec["sh_flags"] & 0x7 == 0x6:  # SHF_ALLOC | SHF_EXECINSTR, not SHF_WRITE
                align = sec["sh_addralign"] or 1
                rx[i] = (end + align - 1) & -align
                end = rx[i] + sec["sh_size"]
        symtab = elf_symtab(elf)
        for rel in elf.iter_sections():
            if not isinstance(rel, RelocationSection) or rel["sh_info"] not in rx:
                continue
            data = sections[rel["sh_info"]].data()
            for r in rel.iter_relocations():
                if r["r_info_type"] not in (28, 29):  # R_ARM_CALL, R_ARM_JUMP24
                    continue
                sym = symtab.get_symbol(r["r_info_sym"])
                if sym["st_shndx"] in rx:
                    target = rx[sym["st_shndx"]] + sym["st_value"]
                elif sym["st_shndx"] == "SHN_UNDEF" and lookup is not None:
                    try:
                        target = lookup.by_xen_name(sym.name).value
                    except LookupError:
                        continue
                else:
                    continue
                imm = struct.unpack_from("<I", data, r["r_offset"])[0] & 0xFFFFFF
                addend = ((imm ^ 0x800000) - 0x800000) << 2
                if (target + addend - (rx[rel["sh_info"]] + r["r_offset"])) >> 2 & 1:
                    out.add((sections[rel["sh_info"]].name, r["r_offset"]))
    return out


ARM_BRANCHY = ("global_refs", "keyhandler", "load_hook", "mutual", "check_xen_refs", "check_escape", "jump_table")


@pytest.mark.parametrize("case", params(*ARM_BRANCHY, arches=("arm",)))
def test_lp014_exactly_the_branches_xens_mask_shortens(
    case: Case, payload_path: Path, xen: XenImage, tmp_path: Path
) -> None:
    after = rewritten(payload_path, tmp_path)
    for path in (payload_path, after):
        for image in (None, xen):
            report = check_payload(path, CheckOptions(xen=image))
            places = {(f.section, f.offset) for f in by_rule(report, "LP014")}
            assert places == _short_branches(path, image.path if image else None), (path.name, image)
    # What the fixtures show: a call inside the payload, judged without any image.
    if case.name == "mutual":
        assert by_rule(check_payload(payload_path), "LP014")


def test_lp014_does_not_depend_on_the_page_aligned_load_address() -> None:
    """What makes the rule decidable at build time: any page-aligned base gives the same branches."""
    from lp_rewrite.loader import default_base, load, synthetic_table
    from lp_rewrite.read import read_file, read_payload

    for name in ARM_BRANCHY:
        payload = read_payload(read_file(COMMITTED / "arm" / f"{name}.livepatch"), name)
        table = synthetic_table([payload])
        base = default_base(table)
        seen = {
            frozenset(
                (m.relocation.section, m.relocation.offset)
                for m in load(payload, table, b, prepare=False).misdirected_branches()
            )
            for b in (base, base + 0x1000, base + 0x7000, base + 0x123000)
        }
        assert len(seen) == 1, name


ARM_BRANCHES = """\
.syntax unified
.arch armv7-a
.arm
.text
.globl caller_odd, target_a, caller_even, target_b
.type caller_odd, %function
caller_odd:             @ 0x0: bl to 0x4, (4 - 8) / 4 = -1 words: odd
    bl target_a
.type target_a, %function
target_a:               @ 0x4
    mov pc, lr
.type caller_even, %function
caller_even:            @ 0x8: bl to 0x10, (0x10 - 0x10) / 4 = 0 words: even
    bl target_b
    nop
.type target_b, %function
target_b:               @ 0x10
    mov pc, lr
    b target_a          @ 0x14: (4 - 0x1c) / 4 = -6 words: even
    b caller_even       @ 0x18: (8 - 0x20) / 4 = -6 words: even
    b caller_odd        @ 0x1c: (0 - 0x24) / 4 = -9 words: odd
    bl printk           @ 0x20 and 0x24: one of the two is odd, whatever printk's address
    bl printk
"""


def test_lp014_by_construction(tmp_path: Path) -> None:
    if not have_binutils("arm"):
        pytest.skip(f"{BINUTILS['arm']}as not installed")
    src = tmp_path / "b.s"
    src.write_text(ARM_BRANCHES)
    obj = tmp_path / "b.o"
    subprocess.run([BINUTILS["arm"] + "as", "-o", str(obj), str(src)], check=True)
    alone = by_rule(check_payload(obj), "LP014")
    assert {(f.offset, f.symbol) for f in alone} == {(0x0, "target_a"), (0x1C, "caller_odd")}
    (first,) = [f for f in alone if f.offset == 0]
    assert "R_ARM_CALL branch to target_a 4 bytes short" in first.message and "-mlong-calls" in first.message
    # With the hypervisor's addresses, exactly one of the two calls to printk.
    image = XenImage.load(CHECK_XEN / "arm" / "xen-syms")
    printk = image.symbols.lookup("printk")
    assert printk is not None
    odd = 0x20 if (printk.address - 8 - 0x20) >> 2 & 1 else 0x24
    with_xen = {(f.offset, f.symbol) for f in by_rule(check_payload(obj, CheckOptions(xen=image)), "LP014")}
    assert with_xen == {(0x0, "target_a"), (0x1C, "caller_odd"), (odd, "printk")}


_BRANCH_TYPES = {"x86_64": {4}, "aarch64": {282, 283}}  # R_X86_64_PLT32; R_AARCH64_JUMP26, _CALL26


def _branch_relocations(path: Path, types: set[int]) -> int:
    with open(path, "rb") as stream:
        elf = ELFFile(stream)
        return sum(
            r["r_info_type"] in types
            for sec in elf.iter_sections()
            if isinstance(sec, RelocationSection)
            for r in sec.iter_relocations()
        )


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_lp014_never_elsewhere(arch: str) -> None:
    """Sources whose 32-bit Arm build Xen misencodes (where the parity says so) give no LP014 here, branches and all."""
    image = XenImage.load(CHECK_XEN / arch / "xen-syms")
    arm = XenImage.load(CHECK_XEN / "arm" / "xen-syms")
    misencoded = 0
    for name in ARM_BRANCHY:
        twin = COMMITTED / "arm" / f"{name}.livepatch"
        short = _short_branches(twin, arm.path)
        assert {(f.section, f.offset) for f in by_rule(check_payload(twin, CheckOptions(xen=arm)), "LP014")} == short
        misencoded += len(short)
        path = COMMITTED / arch / f"{name}.livepatch"
        assert _branch_relocations(path, _BRANCH_TYPES[arch]), name  # the same calls, as this target encodes them
        assert not by_rule(check_payload(path, CheckOptions(xen=image)), "LP014"), name
    assert misencoded  # the Arm twins do hit Xen's mask


ELSEWHERE_MOVES = {
    "x86_64": """\
.text
.globl take
.type take, @function
take:
    movabs $hv_table+16, %rax     # R_X86_64_64, addend 16
    lea hv_table+16(%rip), %rax   # R_X86_64_PC32, addend 12
    call hv_func                  # R_X86_64_PLT32, addend -4
    ret
.data
.quad hv_table-4
""",
    "aarch64": """\
.text
.globl take
.type take, %function
take:
    adrp x0, hv_table+16
    add x0, x0, :lo12:hv_table+16
    movz x1, #:abs_g3:hv_table+16
    movk x1, #:abs_g2_nc:hv_table+16
    movk x1, #:abs_g1_nc:hv_table+16
    movk x1, #:abs_g0_nc:hv_table+16
    bl hv_func+8
    ret
.data
.quad hv_table-4
""",
}


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_lp015_never_elsewhere(arch: str, tmp_path: Path) -> None:
    """Addresses with addends, which Arm's MOVW/MOVT misapply (test_lp015_movw_movt_addends): Xen applies S+A here."""
    if not have_binutils(arch):
        pytest.skip(f"{BINUTILS[arch]}as not installed")
    src = tmp_path / "m.s"
    src.write_text(ELSEWHERE_MOVES[arch])
    obj = tmp_path / "m.o"
    subprocess.run([BINUTILS[arch] + "as", "-o", str(obj), str(src)], check=True)
    with open(obj, "rb") as stream:
        elf = ELFFile(stream)
        addends = [
            r["r_addend"] for s in elf.iter_sections() if isinstance(s, RelocationSection) for r in s.iter_relocations()
        ]
    assert len(addends) >= 4 and all(addends)
    report = check_payload(obj)
    assert not by_rule(report, "LP003")  # every type is one Xen applies: LP015 had them all to judge
    assert not by_rule(report, "LP015")


def test_lp014_the_emulated_misdirected_call() -> None:
    """emu_bl's `bl lp_slow` in hv_checked, which tests/test_emulation.py steps on a CPU: it lands 4 bytes short."""
    emu = ROOT / "testdata" / "emu" / "build" / "arm"
    for image in (None, XenImage.load(emu / "hv.elf")):
        found = by_rule(check_payload(emu / "emu_bl.livepatch", CheckOptions(xen=image)), "LP014")
        assert [(f.section, f.symbol) for f in found] == [(".text.hv_checked", "lp_slow")]


# -- LP015 relocations Xen applies to a wrong value ---------------------------------------

ARM_MOVES = """\
.syntax unified
.arch armv7-a
.arm
.text
.globl take
.type take, %function
take:
    movw r0, #:lower16:hv_table+16    @ Xen loads hv_table's halves, not hv_table+16's
    movt r0, #:upper16:hv_table+16
    movw r1, #:lower16:hv_table       @ addend 0: fine
    movt r1, #:upper16:hv_table
    movw r2, #:lower16:hv_table-4     @ a negative one: imm16 0xfffc
    movt r2, #:upper16:hv_table-4
    mov pc, lr
"""


def test_lp015_movw_movt_addends(tmp_path: Path) -> None:
    if not have_binutils("arm"):
        pytest.skip(f"{BINUTILS['arm']}as not installed")
    src = tmp_path / "m.s"
    src.write_text(ARM_MOVES)
    obj = tmp_path / "m.o"
    subprocess.run([BINUTILS["arm"] + "as", "-o", str(obj), str(src)], check=True)
    with open(obj, "rb") as stream:
        elf = ELFFile(stream)
        text = elf_section(elf, ".text")
        rel = elf_relocs(elf, ".rel.text")
        moves = {r["r_offset"]: r["r_info_type"] for r in rel.iter_relocations()}
        words = {off: struct.unpack_from("<I", text.data(), off)[0] for off in moves}
    # The implicit addend of MOVW/MOVT is the instruction's imm16 (imm4:imm12).
    addends = {off: (w & 0xFFF) | ((w >> 4) & 0xF000) for off, w in words.items()}
    assert set(moves.values()) == {43, 44} and sorted(addends.values()) == [0, 0, 16, 16, 0xFFFC, 0xFFFC]
    found = by_rule(check_payload(obj), "LP015")
    assert {f.offset for f in found} == {off for off, a in addends.items() if a}
    assert {f.symbol for f in found} == {"hv_table"}
    assert sum("hv_table-0x4" in f.message for f in found) == 2
    (movw,) = [f for f in found if f.offset == 0]
    assert "R_ARM_MOVW_ABS_NC against hv_table+0x10" in movw.message and "-mword-relocations" in movw.message
    assert movw.file_offset == text["sh_offset"]
    # rewrite refuses the same payload.
    from lp_rewrite.errors import InputError

    with pytest.raises(InputError, match="MOVW/MOVT addends"):
        rewrite(obj, tmp_path / "out.o")


# -- LP009-LP011 structure ---------------------------------------------------------


def _rename_section(path: Path, old: str, new: str, dst: Path) -> Path:
    assert len(old) == len(new)
    data = bytearray(path.read_bytes())
    with open(path, "rb") as stream:
        elf = ELFFile(stream)
        shstr = elf.get_section(elf["e_shstrndx"])
        base = shstr["sh_offset"]
        for sec in elf.iter_sections():
            if sec.name == old:
                pos = base + sec["sh_name"]
                data[pos : pos + len(old)] = new.encode()
    dst.write_bytes(bytes(data))
    return dst


def _set_section_size(path: Path, name: str, size: int, dst: Path) -> Path:
    data = bytearray(path.read_bytes())
    with open(path, "rb") as stream:
        elf = ELFFile(stream)
        idx = next(i for i, s in enumerate(elf.iter_sections()) if s.name == name)
        shdr = elf["e_shoff"] + idx * elf["e_shentsize"]
        if elf.elfclass == 64:
            struct.pack_into("<Q", data, shdr + 32, size)
        else:
            struct.pack_into("<I", data, shdr + 20, size)
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("arch", ARCHES)
def test_lp009_missing_or_empty_required_sections(arch: str, tmp_path: Path) -> None:
    src = COMMITTED / arch / "global_refs.livepatch"
    assert not by_rule(check_payload(src), "LP009")
    for name in (".livepatch.depends", ".livepatch.xen_depends"):
        broken = _rename_section(src, name, name[:-1] + "X", tmp_path / "m.livepatch")
        (f,) = by_rule(check_payload(broken), "LP009")
        assert f.message.startswith(f"no {name} section")
    empty = _set_section_size(src, ".note.gnu.build-id", 0, tmp_path / "e.livepatch")
    (f,) = by_rule(check_payload(empty), "LP009")
    assert ".note.gnu.build-id is empty" in f.message


@pytest.mark.parametrize("arch", ARCHES)
def test_lp009_hooks_only_is_valid_nothing_to_patch_is_not(arch: str, tmp_path: Path) -> None:
    src = COMMITTED / arch / "no_funcs.livepatch"
    assert check_payload(src).findings == []
    broken = _rename_section(src, ".livepatch.hooks.load", ".livepatch.hooks.loaX", tmp_path / "n.livepatch")
    (f,) = by_rule(check_payload(broken), "LP009")
    assert "Nothing to patch" in f.message


@pytest.mark.parametrize("arch", ARCHES)
def test_lp009_empty_hook_section(arch: str, tmp_path: Path) -> None:
    """A hook section that is there but empty: check_patching_sections() refuses it."""
    src = COMMITTED / arch / "no_funcs.livepatch"
    rel = ".rel.livepatch.hooks.load" if arch == "arm" else ".rela.livepatch.hooks.load"
    no_relocs = _set_section_size(src, rel, 0, tmp_path / "r.livepatch")
    empty = _set_section_size(no_relocs, ".livepatch.hooks.load", 0, tmp_path / "e.livepatch")
    (f,) = by_rule(check_payload(empty), "LP009")
    assert f.message.startswith(".livepatch.hooks.load is present but empty") and f.section == ".livepatch.hooks.load"
    with open(empty, "rb") as stream:
        elf = ELFFile(stream)
        index = next(i for i, sec in enumerate(elf.iter_sections()) if sec.name == ".livepatch.hooks.load")
        assert f.file_offset == elf["e_shoff"] + index * elf["e_shentsize"]  # the header that says 0


@pytest.mark.parametrize("arch", ARCHES)
def test_lp010_funcs_table_shape(arch: str, tmp_path: Path) -> None:
    src = COMMITTED / arch / "mutual.livepatch"
    ptr = 4 if arch == "arm" else 8
    with open(src, "rb") as stream:
        funcs = elf_section(ELFFile(stream), ".livepatch.funcs")
        off, size = funcs["sh_offset"], funcs["sh_size"]
    entry = 92 if arch == "arm" else 104
    odd = _set_section_size(src, ".livepatch.funcs", size - 4, tmp_path / "odd.livepatch")
    (f,) = by_rule(check_payload(odd), "LP010")
    assert f"not a multiple of the version-2 entry size {entry}" in f.message
    data = bytearray(src.read_bytes())
    data[off + 3 * ptr + 8] = 3
    (tmp_path / "v3.livepatch").write_bytes(bytes(data))
    (f,) = by_rule(check_payload(tmp_path / "v3.livepatch"), "LP010")
    assert "version 3" in f.message and f.file_offset == off + 3 * ptr + 8
    data[off + 3 * ptr + 8] = 2
    data[off + 2 * entry + 3 * ptr + 8] = 1
    (tmp_path / "mixed.livepatch").write_bytes(bytes(data))
    (f,) = by_rule(check_payload(tmp_path / "mixed.livepatch"), "LP010")
    assert "entry 2 has payload version 1" in f.message
    assert not by_rule(check_payload(src), "LP010")


@pytest.mark.parametrize("arch", ARCHES)
def test_lp010_version_1_is_an_error_unless_allowed(arch: str, tmp_path: Path) -> None:
    """Xen >= 4.14 refuses version 1 ('Wrong version'); a team targeting 4.7-4.13 allows it."""
    payload = rewritten(COMMITTED / arch / "version1.livepatch", tmp_path)
    (f,) = check_payload(payload).findings
    assert f.rule.id == "LP010" and f.severity.value == "error" and "version 1" in f.message
    assert f.file_offset is not None and payload.read_bytes()[f.file_offset] == 1  # the version byte itself
    assert f.symbol == "version-1" and "--allow LP010:version-1" in f.message
    allowed = check_payload(payload, CheckOptions(allow=AllowList.build(["LP010:version-1"])))
    assert [g.rule.id for g in allowed.findings] == ["LP010"] and not allowed.active()
    # The entry allows that one finding: a v1 table of a wrong size still fails.
    with open(payload, "rb") as stream:
        size = elf_section(ELFFile(stream), ".livepatch.funcs")["sh_size"]
    odd = _set_section_size(payload, ".livepatch.funcs", size - 4, tmp_path / "odd.livepatch")
    (left,) = check_payload(odd, CheckOptions(allow=AllowList.build(["LP010:version-1"]))).active()
    assert left.rule.id == "LP010" and "not a multiple of the version-1 entry size" in left.message
    assert left.symbol is None
    # The loader model agrees: Xen refuses it, with the log line the finding quotes.
    from lp_rewrite.loader import Refused, default_base, load, synthetic_table
    from lp_rewrite.read import read_file, read_payload

    loaded = read_payload(read_file(payload), str(payload))
    table = synthetic_table([loaded])
    with pytest.raises(Refused) as refused:
        load(loaded, table, default_base(table))
    assert refused.value.xen_message in f.message


@pytest.mark.parametrize("arch", ARCHES)
def test_lp011_size(arch: str, tmp_path: Path) -> None:
    src = COMMITTED / arch / "global_refs.livepatch"
    big = tmp_path / "big.livepatch"
    big.write_bytes(src.read_bytes() + bytes(2 * 1024 * 1024))
    (f,) = by_rule(check_payload(big), "LP011")
    assert "over Xen's 2097152-byte limit" in f.message
    assert not by_rule(check_payload(src), "LP011")


def _section_count(path: Path) -> int:
    with open(path, "rb") as stream:
        return ELFFile(stream).num_sections()


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("shnum", [1023, 1024])
def test_lp011_section_count(arch: str, shnum: int, tmp_path: Path) -> None:
    """Xen's e_shnum < 1024: the object's section count, read independently, decides, on both sides of it."""
    if not have_binutils(arch):
        pytest.skip(f"{BINUTILS[arch]}as not installed")
    asm = tmp_path / "many.s"
    head = ".text\n.globl f\nf:\n.byte 0\n"  # a symbol, so that the object has a symbol table to read
    empty = tmp_path / "empty.o"
    asm.write_text(head)
    subprocess.run([BINUTILS[arch] + "as", "-o", str(empty), str(asm)], check=True)
    count = shnum - _section_count(empty)  # `as` adds its own (.text, .symtab, ...)
    asm.write_text(head + "".join(f'.section .s{i},"a"\n.byte {i % 256}\n' for i in range(count)))
    obj = tmp_path / "many.livepatch"
    subprocess.run([BINUTILS[arch] + "as", "-o", str(obj), str(asm)], check=True)
    assert _section_count(obj) == shnum
    found = by_rule(check_payload(obj), "LP011")
    if shnum >= 1024:
        (f,) = found
        assert f"has {shnum} sections" in f.message
    else:
        assert found == []


# -- LP012 unreadable payloads, or parts no rule can analyse ----------------------


def _undecodable_fixup(dst: Path) -> Path:
    """x86 hello_world with the jmp before .fixup's rel32 field turned into 0x06 (invalid in 64-bit mode)."""
    src = COMMITTED / "x86_64" / "hello_world.livepatch"
    with open(src, "rb") as stream:
        elf = ELFFile(stream)
        fixup = elf_section(elf, ".fixup")
        rel = elf_relocs(elf, ".rela.fixup")
        (field,) = [r["r_offset"] for r in rel.iter_relocations()]
        at = fixup["sh_offset"] + field - 1
    data = bytearray(src.read_bytes())
    assert data[at] == 0xE9  # jmp rel32: the instruction that holds the field
    data[at] = 0x06
    dst.write_bytes(bytes(data))
    return dst


def test_lp012_a_part_no_rule_can_analyse(tmp_path: Path) -> None:
    """Readable, but no decoder can say what the rel32 at .fixup+0x8 belongs to: LP012, and rewrite refuses it."""
    payload = _undecodable_fixup(tmp_path / "undecodable.livepatch")
    report = check_payload(payload)
    (f,) = by_rule(report, "LP012")
    assert "could not be made" in f.message and ".fixup+0x8" in f.message and "cannot decode" in f.message
    assert report.error is None and by_rule(report, "LP009") == []  # the other rules still ran
    from lp_rewrite.errors import InputError

    with pytest.raises(InputError, match=r"\.fixup\+0x8: cannot decode"):
        rewrite(payload, tmp_path / "out.livepatch")


@pytest.mark.parametrize("arch", ARCHES)
def test_lp012_unreadable_file_in_a_batch(arch: str, tmp_path: Path) -> None:
    from lp_rewrite.check.batch import run

    good = rewritten(COMMITTED / arch / "global_refs.livepatch", tmp_path)
    bad = tmp_path / "truncated.livepatch"
    bad.write_bytes(good.read_bytes()[:200])  # the header survives, the section table does not
    stderr = io.StringIO()
    result = run([bad, good], CheckOptions(), progress=False, stream=stderr)
    first, second = result.reports
    assert first.error is not None and [f.rule.id for f in first.findings] == ["LP012"]
    assert second.error is None and second.findings == []
    assert result.unreadable == 1 and result.exit_code(Severity.ERROR) == 2
    (line,) = stderr.getvalue().splitlines()
    assert line.startswith(f"lp-rewrite: error: {bad}")


# -- reviewed exceptions ------------------------------------------------------------


def _with_allow_section(src: Path, entries: list[str], dst: Path, arch: str) -> Path:
    """``src`` plus a .lp_rewrite.allow section holding ``entries`` (what LP_REWRITE_ALLOW() emits)."""
    blob = dst.with_suffix(".allow")
    blob.write_bytes(b"".join(e.encode() + b"\0" for e in entries))
    subprocess.run(
        [BINUTILS[arch] + "objcopy", "--add-section", f".lp_rewrite.allow={blob}", str(src), str(dst)], check=True
    )
    return dst


@pytest.mark.parametrize("arch", ARCHES)
def test_payload_allow_section_only_allows_lp002_by_name(arch: str, tmp_path: Path) -> None:
    """The payload cannot silence what makes Xen refuse it, nor LP002 wholesale; --allow still can."""
    if not have_binutils(arch):
        pytest.skip(f"{BINUTILS[arch]}objcopy not installed")
    raw = COMMITTED / arch / "global_refs.livepatch"
    lp001 = len(by_rule(check_payload(raw), "LP001"))
    assert lp001
    sweeping = ["LP001:*", "not-rewritten:*", "LP001:do_work", "LP009:*", "LP002:*", "*"]
    report = check_payload(_with_allow_section(raw, sweeping, tmp_path / "a.livepatch", arch))
    assert len(by_rule(report, "LP001")) == lp001 and all(f.suppressed is None for f in report.findings)
    # Missing a section Xen requires: LP009 stays, whatever the payload says.
    broken = _rename_section(raw, ".livepatch.depends", ".livepatch.dependX", tmp_path / "m.livepatch")
    missing = check_payload(_with_allow_section(broken, ["LP009:*"], tmp_path / "b.livepatch", arch))
    (f,) = by_rule(missing, "LP009")
    assert f.severity.value == "error"
    # The same entries on the command line keep their power.
    cli = CheckOptions(allow=AllowList.build(["LP001:*", "LP009:*"]))
    assert not [f for f in check_payload(tmp_path / "b.livepatch", cli).active() if f.rule.id in ("LP001", "LP009")]
    # LP002 for a named symbol is what the section is for.
    only = COMMITTED / arch / "payload_only.livepatch"
    named = check_payload(_with_allow_section(only, ["*", "brand_new reviewed"], tmp_path / "c.livepatch", arch))
    assert by_rule(named, "LP002", active=False) and not by_rule(named, "LP002")
    assert all(".lp_rewrite.allow: reviewed" in (f.suppressed or "") for f in by_rule(named, "LP002", active=False))
    star = check_payload(_with_allow_section(only, ["*", "LP002:*"], tmp_path / "d.livepatch", arch))
    assert len(by_rule(star, "LP002")) == 2


# -- robustness ---------------------------------------------------------------------


def test_malformed_payloads_never_crash() -> None:
    """Byte flips in real fixtures: either a one-line InputError or a report, nothing else."""
    import random

    from lp_rewrite.errors import LpRewriteError

    rng = random.Random(4)
    sources = sorted(COMMITTED.glob("*/*.livepatch"))
    reports = 0
    for n in range(400):
        data = bytearray(rng.choice(sources).read_bytes())
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            check_payload(bytes(data), name=f"mutant-{n}")
            reports += 1
        except LpRewriteError as exc:
            assert "\n" not in str(exc)
    assert reports > 50  # most mutants stay readable and go through every rule


def test_committed_images_are_what_the_script_builds(fresh_xen: Path | None) -> None:
    if fresh_xen is None:
        pytest.skip("cross compilers missing")
    for arch in ARCHES:
        a = XenImage.load(CHECK_XEN / arch / "xen-syms")
        b = XenImage.load(fresh_xen / arch / "xen-syms")
        assert set(a.symbols.symbols) == set(b.symbols.symbols)
        assert a.symbols.ambiguous == b.symbols.ambiguous
        assert a.sealed == b.sealed
        built = sorted(p.name for p in (fresh_xen / arch).glob("*.livepatch"))
        assert built == sorted(p.name for p in (CHECK_XEN / arch).glob("*.livepatch")) and built
    assert shutil.which(BINUTILS["x86_64"] + "ld")

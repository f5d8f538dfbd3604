"""The notes Xen reads: LP016 (misaligned-note), rewrite --align-notes, and signed payloads (LP017).

Payloads come from scripts/build_note_fixtures.py (committed in
testdata/notes/, and rebuilt fresh with this machine's objcopy): the
fixtures' depends notes re-added after the link with objcopy --add-section
(sh_addralign 1), and a .note.Xen.signature added the way livepatch-sign
adds it. Where a note lands is also computed here, independently of the
project's loader model, from pyelftools' section headers.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from lp_rewrite.apply import apply, plan
from lp_rewrite.certificate import certify
from lp_rewrite.check import CheckOptions, check_payload
from lp_rewrite.check.allow import AllowList
from lp_rewrite.check.findings import Finding, PayloadReport
from lp_rewrite.errors import VerificationError
from lp_rewrite.loader.placement import section_offsets
from lp_rewrite.pipeline import analyse, prove_edit, rewrite
from lp_rewrite.policy import Policy
from lp_rewrite.read import read_payload
from tests.conftest import ARCHES, COMMITTED, ROOT, build_fresh, load_script, run_cli
from tests.elf_sections import ro_offsets

NOTES = ROOT / "testdata" / "notes"
DEPENDS = (".livepatch.depends", ".livepatch.xen_depends")
ALIGNMENT_CHECKED = ("arm",)  # LP016's target; x86-64 and AArch64 Xen read unaligned words (real hypervisor)


@pytest.fixture(scope="module", params=["committed", "fresh"])
def notes_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if request.param == "committed":
        return NOTES
    if not all(load_script("build_note_fixtures").toolchain_available(a) for a in ARCHES):
        pytest.skip("binutils for every architecture needed to rebuild the note fixtures")
    out = build_fresh(tmp_path_factory, "build_note_fixtures")
    if out is None:
        pytest.skip("cross toolchains missing")
    return out


# keyhandler: references to retarget; hello_world: nothing to retarget; hooks only: no .livepatch.funcs.
MISALIGNED = ["keyhandler_misaligned", "hello_world_misaligned", "action_hooks_nofunc_misaligned"]


def by_rule(report: PayloadReport, rule: str) -> list[Finding]:
    return [f for f in report.findings if f.rule.id == rule and f.suppressed is None]


def section(data: bytes, name: str) -> tuple[int, int, bytes]:
    """(sh_addralign, sh_offset, contents) of a section, by pyelftools."""
    sec = ELFFile(io.BytesIO(data)).get_section_by_name(name)
    assert sec is not None, name
    return sec["sh_addralign"], sec["sh_offset"], sec.data()


# -- LP016 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("name", MISALIGNED)
def test_lp016_fires_where_xen_checks_alignment(notes_dir: Path, arch: str, name: str) -> None:
    data = (notes_dir / arch / f"{name}.livepatch").read_bytes()
    placed = ro_offsets(data)
    assert all(placed[s] % 4 for s in DEPENDS)  # the fixture is what it claims: both land unaligned
    found = {str(f.section): f for f in by_rule(check_payload(data), "LP016")}
    if arch not in ALIGNMENT_CHECKED:
        assert found == {}
        return
    assert set(found) == set(DEPENDS)
    for name_, f in found.items():
        assert f.severity.value == "error" and f.symbol == name_
        assert f"offset {placed[name_]:#x} of the RO region" in f.message and "Data Abort" in f.message
        assert "--align-notes" in f.message
        # The finding's bytes are the section header (where sh_addralign is).
        elf = ELFFile(io.BytesIO(data))
        index = next(i for i, s in enumerate(elf.iter_sections()) if s.name == name_)
        assert f.file_offset == elf["e_shoff"] + index * elf["e_shentsize"] and f.length == elf["e_shentsize"]
    _align, file_offset, _data = section(data, ".livepatch.xen_depends")
    assert ("Xen 4.20 and later" in found[".livepatch.xen_depends"].message) == (file_offset % 4 != 0)


@pytest.mark.parametrize("arch", ARCHES)
def test_lp016_quiet_on_aligned_notes(arch: str) -> None:
    """The fixtures' own notes (.balign 4) and the same notes at alignment 1 that happen to land aligned."""
    data = (COMMITTED / arch / "keyhandler.livepatch").read_bytes()
    assert not by_rule(check_payload(data), "LP016")
    # sh_addralign 1 on notes that land on a 4-byte boundary anyway: nothing is misread.
    one = bytearray(data)
    elf = ELFFile(io.BytesIO(data))
    wide = elf.elfclass == 64
    for i, sec in enumerate(elf.iter_sections()):
        if sec.name in DEPENDS:
            at = elf["e_shoff"] + i * elf["e_shentsize"] + (48 if wide else 32)
            one[at : at + (8 if wide else 4)] = (1).to_bytes(8 if wide else 4, "little")
    assert {section(bytes(one), s)[0] for s in DEPENDS} == {1}
    assert all(ro_offsets(bytes(one))[s] % 4 == 0 for s in DEPENDS)
    assert not by_rule(check_payload(bytes(one)), "LP016")


def test_lp016_is_suppressible_by_section() -> None:
    data = (NOTES / "arm" / "hello_world_misaligned.livepatch").read_bytes()
    report = check_payload(data, CheckOptions(allow=AllowList.build(["LP016:.livepatch.depends"])))
    assert [f.section for f in by_rule(report, "LP016")] == [".livepatch.xen_depends"]


# -- LP017 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
def test_lp017_signed_payload_that_needs_a_rewrite(notes_dir: Path, arch: str) -> None:
    data = (notes_dir / arch / "keyhandler_signed.livepatch").read_bytes()
    report = check_payload(data)
    assert by_rule(report, "LP001")
    [found] = by_rule(report, "LP017")
    _align, offset, contents = section(data, ".note.Xen.signature")
    assert found.section == ".note.Xen.signature" and found.file_offset == offset and found.length == len(contents)
    assert contents[12:16] == b"Xen\0" and contents[8:12] == bytes(4)  # name Xen, type 0
    assert "LP001" in found.message and "then sign" in found.message


@pytest.mark.parametrize("arch", ARCHES)
def test_lp017_quiet_on_a_signed_payload_with_nothing_to_rewrite(notes_dir: Path, arch: str) -> None:
    report = check_payload((notes_dir / arch / "hello_world_signed.livepatch").read_bytes())
    assert report.findings == []


@pytest.mark.parametrize("arch", ARCHES)
def test_lp017_when_only_the_notes_need_aligning(notes_dir: Path, arch: str) -> None:
    report = check_payload((notes_dir / arch / "hello_world_misaligned_signed.livepatch").read_bytes())
    assert not by_rule(report, "LP001")
    if arch in ALIGNMENT_CHECKED:
        [found] = by_rule(report, "LP017")
        assert "LP016" in found.message
    else:
        assert report.findings == []


def test_lp017_follows_the_allow_list() -> None:
    """A reviewed LP001 (--allow) leaves nothing to rewrite: the signature stands."""
    data = (NOTES / "x86_64" / "keyhandler_signed.livepatch").read_bytes()
    report = check_payload(data, CheckOptions(allow=AllowList.build(["LP001:*"])))
    assert not by_rule(report, "LP001") and not by_rule(report, "LP017")


def test_signature_found_by_note_name_and_type() -> None:
    """A signature section under another name (livepatch-sign takes the product name) is still one."""
    from lp_rewrite.notes import signature

    data = bytearray((NOTES / "x86_64" / "keyhandler_signed.livepatch").read_bytes())
    at = data.find(b".note.Xen.signature\0")
    data[at : at + 19] = b".note.Acm.signature"
    payload = read_payload(bytes(data))
    found = signature(payload.elf)
    assert found is not None and found.section.name == ".note.Acm.signature"
    assert [f.rule.id for f in check_payload(bytes(data)).findings] == ["LP001", "LP017"]
    # Not signed: no note named Xen of type 0 anywhere.
    assert signature(read_payload((COMMITTED / "x86_64" / "keyhandler.livepatch").read_bytes()).elf) is None


# -- rewrite --align-notes ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("name", MISALIGNED)
def test_align_notes(notes_dir: Path, arch: str, name: str) -> None:
    src = (notes_dir / arch / f"{name}.livepatch").read_bytes()
    policy = Policy(align_notes=True)
    result = rewrite(src, policy=policy)
    out = result.output
    # Rewritten even when nothing else is to do (hello_world has nothing to retarget).
    assert result.changed and out != src
    assert bool(result.plan.retargets) == name.startswith("keyhandler")
    for sec in DEPENDS:
        align_in, _off_in, data_in = section(src, sec)
        align_out, off_out, data_out = section(out, sec)
        assert (align_in, align_out) == (1, 4) and data_out == data_in and off_out % 4 == 0
    # Where Xen puts them now: independently, and by the project's loader model.
    assert all(ro_offsets(out)[sec] % 4 == 0 for sec in DEPENDS)
    elf = read_payload(out).elf
    offsets, _sizes = section_offsets(elf, "out")
    for sec in DEPENDS:
        s = elf.section_by_name(sec)
        assert s is not None and offsets[s.index][1] % 4 == 0
    report = check_payload(out)
    assert not by_rule(report, "LP016") and not by_rule(report, "LP001")
    # The certificate, with the same option, and a second run that changes nothing.
    cert = certify(src, out, policy=policy)
    assert sorted(cert.aligned_notes) == sorted(DEPENDS)
    again = rewrite(out, policy=policy)
    assert not again.changed and again.output == out


@pytest.mark.parametrize("arch", ARCHES)
def test_notes_untouched_without_the_option(arch: str) -> None:
    src = (NOTES / arch / "hello_world_misaligned.livepatch").read_bytes()
    result = rewrite(src)
    assert not result.changed and result.output == src
    kept = rewrite((NOTES / arch / "keyhandler_misaligned.livepatch").read_bytes()).output
    assert {section(kept, s)[0] for s in DEPENDS} == {1}
    assert bool(by_rule(check_payload(kept), "LP016")) == (arch in ALIGNMENT_CHECKED)


def test_self_check_proves_the_alignment_plan() -> None:
    """The header change is a planned edit: the self-check refuses one the plan does not name."""
    src = (NOTES / "arm" / "keyhandler_misaligned.livepatch").read_bytes()
    policy = Policy(align_notes=True)
    analysis = analyse(src, policy)
    edits = plan(analysis.payload, analysis.funcs, analysis.decisions, policy)
    data = apply(analysis.payload, analysis.funcs, edits)
    prove_edit(analysis, edits, data, policy)  # as planned: proven
    edits.addralign = {}
    with pytest.raises(VerificationError, match="sh_addralign is 4, the plan says 1"):
        prove_edit(analysis, edits, data, policy)


def test_verify_needs_the_option(tmp_path: Path) -> None:
    src = NOTES / "arm" / "keyhandler_misaligned.livepatch"
    out = tmp_path / "out.livepatch"
    done = run_cli("rewrite", "--align-notes", "--verify", src, "-o", out)
    assert done.returncode == 0, done.stderr
    assert "aligned .livepatch.depends: sh_addralign 1 -> 4" in done.stdout
    ok = run_cli("verify", "--align-notes", src, out)
    assert ok.returncode == 0, ok.stderr
    assert "aligned to 4 (--align-notes), contents unchanged: .livepatch.depends, .livepatch.xen_depends" in ok.stdout
    bad = run_cli("verify", src, out)
    assert bad.returncode == 1 and "loaded section" in bad.stderr and ".livepatch.depends" in bad.stderr


# -- rewrite refuses a signed payload it would change ----------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
def test_rewrite_refuses_signed_payload(tmp_path: Path, arch: str) -> None:
    out = tmp_path / "out.livepatch"
    done = run_cli("rewrite", NOTES / arch / "keyhandler_signed.livepatch", "-o", out)
    assert done.returncode == 2 and not out.exists()
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "payload is signed (section [" in lines[0]
    assert lines[0].endswith(".note.Xen.signature): rewrite before signing")
    # Alignment alone is a change too.
    done = run_cli("rewrite", "--align-notes", NOTES / arch / "hello_world_misaligned_signed.livepatch", "-o", out)
    assert done.returncode == 2 and "rewrite before signing" in done.stderr and not out.exists()


@pytest.mark.parametrize("arch", ARCHES)
def test_signed_payload_with_nothing_to_do_passes_through(tmp_path: Path, arch: str) -> None:
    src = NOTES / arch / "hello_world_signed.livepatch"
    out = tmp_path / "out.livepatch"
    done = run_cli("rewrite", "--align-notes", src, "-o", out)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == src.read_bytes()

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

from lp_rewrite.check import CheckOptions, check_payload
from lp_rewrite.check.allow import AllowList
from lp_rewrite.check.findings import Finding, PayloadReport
from lp_rewrite.read import read_payload
from tests.conftest import ARCHES, COMMITTED, ROOT, build_fresh, load_script

NOTES = ROOT / "testdata" / "notes"
DEPENDS = (".livepatch.depends", ".livepatch.xen_depends")
ALIGNMENT_CHECKED = ("arm", "aarch64")  # LP016's targets; x86-64 reads unaligned words


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


def by_rule(report: PayloadReport, rule: str) -> list[Finding]:
    return [f for f in report.findings if f.rule.id == rule and f.suppressed is None]


def ro_offsets(data: bytes) -> dict[str, int]:
    """Independent placement (pyelftools): each read-only SHF_ALLOC section's offset in Xen's RO region."""
    elf = ELFFile(io.BytesIO(data))
    size, out = 0, {}
    for sec in elf.iter_sections():
        flags = sec["sh_flags"]
        if not flags & 0x2 or flags & 0x1 or flags & 0x4:  # SHF_ALLOC, not WRITE, not EXECINSTR
            continue
        align = sec["sh_addralign"]
        size = (size + align - 1) & ~(align - 1) if align else 0
        out[sec.name] = size
        size += sec["sh_size"]
    return out


def section(data: bytes, name: str) -> tuple[int, int, bytes]:
    """(sh_addralign, sh_offset, contents) of a section, by pyelftools."""
    sec = ELFFile(io.BytesIO(data)).get_section_by_name(name)
    assert sec is not None, name
    return sec["sh_addralign"], sec["sh_offset"], sec.data()


# -- LP016 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("name", ["keyhandler_misaligned", "hello_world_misaligned"])
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

"""The rewriter on every fixture, architecture and fixture set (committed and fresh).

For each payload: the exact set of retargeted relocations (checked against
the independent oracle and the manifest's per-section counts), everything
else unchanged by resolved identity, aliases and renames as specified, and
the output accepted by binutils, pyelftools and LIEF; idempotent and
deterministic.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import pytest

from lp_rewrite import Policy, analyse, rewrite
from tests.conftest import BINUTILS, Case, case_params, have_binutils, run_cli
from tests.oracle import Payload as Oracle

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
        for s in ours.get_section_by_name(".symtab").iter_symbols()
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

"""--local-aliases: STB_LOCAL aliases for objects that still go through ld -r.

Checked against the real GNU ld of each architecture: on x86-64 `ld -r`
keeps an undefined local alias distinct and unresolved; on AArch64 and Arm
it fails with "undefined reference", which is why the tool refuses there.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from lp_rewrite import Policy, rewrite
from lp_rewrite.errors import UsageError
from tests.conftest import BINUTILS, COMMITTED, assert_one_line_error, have_binutils, load_script, run_cli
from tests.elf_sections import elf_section, elf_symtab
from tests.oracle import Payload as Oracle

LOCAL = Policy(local_aliases=True)


def _symbols(path: Path) -> list[tuple[str, str, str, object]]:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        return [
            (s.name, s["st_info"]["bind"], s["st_info"]["type"], s["st_shndx"]) for s in elf_symtab(elf).iter_symbols()
        ]


def _sh_info(path: Path, name: str) -> int:
    with open(path, "rb") as f:
        return int(elf_section(ELFFile(f), name)["sh_info"])


def _ld_r(arch: str, out: Path, *objs: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BINUTILS[arch] + "ld", "-r", "-o", str(out), *map(str, objs)], capture_output=True, text=True
    )


def _assert_relocations_equivalent(before: Path, after: Path, moved: set[tuple[str, int, int]]) -> None:
    """Renumbering must not change what any relocation resolves to."""
    rb, ra = Oracle(before).relocations(), Oracle(after).relocations()
    assert len(rb) == len(ra)
    for x, y in zip(rb, ra, strict=True):
        if (x.section, x.offset, x.rtype) not in moved:
            assert x.resolved == y.resolved, (x, y)


def test_static_original_gets_a_local_alias_in_its_file_group(tmp_path: Path) -> None:
    src = COMMITTED / "x86_64" / "static_section.livepatch"
    out = tmp_path / "local.o"
    result = rewrite(src, out, policy=LOCAL)
    syms = _symbols(out)
    alias_index = next(i for i, s in enumerate(syms) if s[0] == "common/static_section.c#handler")
    assert syms[alias_index][1:] == ("STB_LOCAL", "STT_FUNC", "SHN_UNDEF")
    # prelink scopes a local by the nearest preceding FILE symbol: it must be the alias's file.
    file_before = next(s[0] for s in reversed(syms[:alias_index]) if s[2] == "STT_FILE")
    assert file_before == "common/static_section.c"
    first_global = _sh_info(out, ".symtab")
    assert first_global == _sh_info(src, ".symtab") + 1
    assert all(s[1] == "STB_LOCAL" for s in syms[:first_global])
    assert all(s[1] != "STB_LOCAL" for s in syms[first_global:])
    moved = {(result.payload.elf.sections[d.section].name, d.offset, d.rtype) for d in result.plan.retargets}
    _assert_relocations_equivalent(src, out, moved)
    # Non-ALLOC relocation sections are renumbered too (debug info of a -g build).
    dbg_src = COMMITTED / "x86_64" / "debug_info.livepatch"
    dbg = rewrite(dbg_src, tmp_path / "dbg.o", policy=Policy(local_aliases=True))
    moved = {(dbg.payload.elf.sections[d.section].name, d.offset, d.rtype) for d in dbg.plan.retargets}
    _assert_relocations_equivalent(dbg_src, tmp_path / "dbg.o", moved)


def test_plain_name_original_keeps_a_global_alias(tmp_path: Path) -> None:
    # prelink resolves a LOCAL undefined symbol only inside its FILE scope, so a
    # global original must stay GLOBAL; ld -r cannot merge it (the copy was renamed).
    out = tmp_path / "o"
    rewrite(COMMITTED / "x86_64" / "global_refs.livepatch", out, policy=LOCAL)
    (alias,) = [s for s in _symbols(out) if s[0] == "do_work"]
    assert alias[1:] == ("STB_GLOBAL", "STT_FUNC", "SHN_UNDEF")


def test_missing_file_scope_gets_a_file_symbol(tmp_path: Path) -> None:
    moved_file = tmp_path / "elsewhere.o"
    subprocess.run(
        [
            "objcopy",
            "--redefine-sym=common/static_section.c=other/place.c",
            str(COMMITTED / "x86_64" / "static_section.livepatch"),
            str(moved_file),
        ],
        check=True,
    )
    out = tmp_path / "o"
    rewrite(moved_file, out, policy=LOCAL)
    syms = _symbols(out)
    i = next(i for i, s in enumerate(syms) if s[0] == "common/static_section.c#handler")
    assert syms[i - 1][:3] == ("common/static_section.c", "STB_LOCAL", "STT_FILE")


def _second_copy(tmp_path: Path) -> Path:
    """static_section.c built again with its globals renamed, so both link together."""
    build_fixtures = load_script("build_fixtures")
    if not build_fixtures.toolchain_available("x86_64"):
        pytest.skip("x86-64 compiler missing")
    spec = dict(build_fixtures.load_manifest()["static_section"])
    spec["cflags"] = [
        "-Dinstall_handler=install_handler2",
        "-Dhandler_table=handler_table2",
        "-Dlp_handler=lp_handler2",
    ]
    built: Path = build_fixtures.build_fixture("copy", spec, "x86_64", tmp_path, tmp_path)
    return built


@pytest.mark.skipif(not have_binutils("x86_64"), reason="x86-64 binutils missing")
def test_x86_ld_r_keeps_local_aliases_distinct(tmp_path: Path) -> None:
    a, b = tmp_path / "a.o", tmp_path / "b.o"
    rewrite(COMMITTED / "x86_64" / "static_section.livepatch", a, policy=LOCAL)
    rewrite(_second_copy(tmp_path), b, policy=LOCAL)
    linked = tmp_path / "linked.o"
    proc = _ld_r("x86_64", linked, a, b)
    assert proc.returncode == 0, proc.stderr
    aliases = [s for s in _symbols(linked) if s[0] == "common/static_section.c#handler"]
    assert len(aliases) == 2 and all(s[1:] == ("STB_LOCAL", "STT_FUNC", "SHN_UNDEF") for s in aliases)
    # The linked result needs no further rewrite: every entry reference already moved.
    assert not rewrite(linked).plan.changes


@pytest.mark.skipif(not have_binutils("x86_64"), reason="x86-64 binutils missing")
def test_bfd_objcopy_and_strip_turn_undefined_locals_global(tmp_path: Path) -> None:
    # What livepatch-build does after ld -r (strip -w -N, objcopy --add-section)
    # keeps the alias undefined but makes it GLOBAL: harmless for Xen, which
    # resolves undefined symbols by name whatever their binding.
    a = tmp_path / "a.o"
    rewrite(COMMITTED / "x86_64" / "static_section.livepatch", a, policy=LOCAL)
    for cmd in (
        ["objcopy", str(a), str(tmp_path / "b.o")],
        ["strip", "-w", "-N", "nothing", str(a), "-o", str(tmp_path / "b.o")],
    ):
        subprocess.run(cmd, check=True)
        (alias,) = [s for s in _symbols(tmp_path / "b.o") if s[0] == "common/static_section.c#handler"]
        assert alias[1:] == ("STB_GLOBAL", "STT_FUNC", "SHN_UNDEF")


@pytest.mark.parametrize("arch", ["aarch64", "arm"])
def test_arm_ld_r_rejects_undefined_locals_so_the_tool_refuses(arch: str, tmp_path: Path) -> None:
    src = COMMITTED / arch / "static_section.livepatch"
    line = assert_one_line_error(run_cli("rewrite", "--local-aliases", src, "-o", tmp_path / "o"))
    assert f"GNU ld -r on {arch} rejects undefined local symbols" in line
    assert not (tmp_path / "o").exists()
    with pytest.raises(UsageError):
        rewrite(src, tmp_path / "o", policy=LOCAL)
    if not have_binutils(arch):
        pytest.skip(f"{arch} binutils missing")
    # Why: build the object anyway and show the linker's verdict.
    forced = tmp_path / "forced.o"
    rewrite(src, forced, policy=Policy(local_aliases=True, linker_check=False))
    proc = _ld_r(arch, tmp_path / "linked.o", forced)
    assert proc.returncode != 0
    assert "undefined reference to `common/static_section.c#handler'" in proc.stderr
    # The same object shape links on x86-64 (previous test); and global aliases link here.
    ok = tmp_path / "global.o"
    rewrite(src, ok)
    assert _ld_r(arch, tmp_path / "linked2.o", ok).returncode == 0


GROUP_ASM = """
    .section .text.keep_me,"axG",@progbits,keep_me,comdat
    .globl keep_me
    .type keep_me,@function
keep_me:
    lea handler(%rip), %rax
    ret
    .text
    .type handler,@function
handler:
    ret
    .section .rodata.name,"a"
name: .asciz "x.c#handler"
    .section .livepatch.funcs,"a"
    .quad name, handler, 0
    .long 0, 16
    .byte 2
    .zero 104 - 33
"""


@pytest.mark.skipif(not have_binutils("x86_64"), reason="x86-64 binutils missing")
def test_group_signature_is_renumbered(tmp_path: Path) -> None:
    asm = tmp_path / "g.s"
    asm.write_text(GROUP_ASM)
    obj = tmp_path / "g.o"
    subprocess.run(["as", "--64", "-o", str(obj), str(asm)], check=True)
    out = tmp_path / "out.o"
    rewrite(obj, out, policy=LOCAL)
    for path in (obj, out):
        with open(path, "rb") as f:
            elf = ELFFile(f)
            group = elf_section(elf, ".group")
            sig = elf_symtab(elf).get_symbol(group["sh_info"])
            assert sig.name == "keep_me"
    proc = _ld_r("x86_64", tmp_path / "l.o", out)
    assert proc.returncode == 0, proc.stderr


SHN_XINDEX = 0xFFFF


def _raw_symbols(path: Path) -> tuple[list[tuple[str, int, int]], list[str]]:
    """(name, raw st_shndx, .symtab_shndx entry) per symbol, and the section names.

    Read from the bytes (Elf64_Sym: st_shndx at 6, 24 bytes each) so that the
    extended index is seen as stored, not as a parser resolves it.
    """
    data = path.read_bytes()
    with open(path, "rb") as f:
        elf = ELFFile(f)
        symtab = elf_symtab(elf)
        ext_sec = elf_section(elf, ".symtab_shndx")
        ext = struct.unpack_from(f"<{ext_sec['sh_size'] // 4}I", data, ext_sec["sh_offset"])
        assert len(ext) == symtab.num_symbols()
        out = []
        for i, sym in enumerate(symtab.iter_symbols()):
            raw = struct.unpack_from("<H", data, symtab["sh_offset"] + 24 * i + 6)[0]
            out.append((sym.name, raw, ext[i]))
        return out, [s.name for s in elf.iter_sections()]


def test_symtab_shndx_is_renumbered_with_the_symbols(tmp_path: Path) -> None:
    fuzz = load_script("fuzz")
    src = tmp_path / "shndx.o"
    src.write_bytes(fuzz.with_symtab_shndx((COMMITTED / "x86_64" / "static_section.livepatch").read_bytes()))
    out = tmp_path / "out.o"
    result = rewrite(src, out, policy=LOCAL)
    before, sec_names = _raw_symbols(src)
    after, sec_names_after = _raw_symbols(out)
    assert sec_names_after == sec_names
    assert sum(raw == SHN_XINDEX for _n, raw, _e in before) >= 5, "the input must use extended indices"
    # Symbols the rewrite added: the local alias (inserted before the globals) and nothing else.
    added = [i for i, (n, _r, _e) in enumerate(after) if n in result.plan.aliases]
    assert [after[i][0] for i in added] == ["common/static_section.c#handler"]
    assert added[0] < _sh_info(out, ".symtab")  # a local: everything after it moved up one
    kept = [s for i, s in enumerate(after) if i not in added]
    assert len(kept) == len(before)
    renamed = {before[i][0]: new for i, new in result.plan.renames.items()}
    for (name, raw, ext), (name2, raw2, ext2) in zip(before, kept, strict=True):
        assert name2 == renamed.get(name, name)
        assert raw2 == raw
        # The extended index travels with its symbol (the sections did not move: same names, same order).
        assert ext2 == ext
        assert (raw == SHN_XINDEX) == (ext != 0)
    for i in added:
        assert after[i][1:] == (0, 0)  # SHN_UNDEF, no extended index
    moved = {(result.payload.elf.sections[d.section].name, d.offset, d.rtype) for d in result.plan.retargets}
    _assert_relocations_equivalent(src, out, moved)

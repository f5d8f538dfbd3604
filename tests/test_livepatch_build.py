"""lp-rewrite dropped into livepatch-build: post-link hook, pre-link local aliases, prelink.

A miniature of livepatch-build's last steps (scripts/lpbuild_mini.py, from the
sources in testdata/lpbuild/) is built for real: a small hypervisor linked
into xen-syms, create-diff-object-shaped objects for a patch to two of its
files plus a new file, ``ld -r --build-id=sha1``, livepatch-build's ``strip
-w -N`` and the two ``objcopy --add-section`` depends notes, and for
``--prelink`` create-diff-object ``--resolve`` plus prelink. lp-rewrite runs at
each point it supports, mostly through scripts/livepatch-build-post, and
every result is checked:

* against the independent oracle (tests/oracle.py) on the payload the same
  steps give *without* the rewrite: exactly the relocations the rule names
  moved, each now designating the original (by name, or by its xen-syms
  address for SHN_ABS aliases), every other relocation resolving as before,
  and exact per-section counts derived from the sources;
* by ``lp-rewrite verify``, the Xen-semantics load of both payloads;
* by ``lp-rewrite check --xen-syms``, where the miniature hypervisor is built
  with CET-IBT (x86: only its cf_check functions start with ENDBR64).

The per-section counts follow from testdata/lpbuild/patch/: a_handlers[]
and c_handlers[] each store one replaced function; a_init() takes foo's and
gfoo's addresses (x86: one lea each; Arm: adrp+add / movw+movt pairs);
b_poll() calls gfoo and passes it as an argument; c_run() calls gfoo.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Protocol

import pytest
from elftools.elf.elffile import ELFFile

from lp_rewrite import Policy, rewrite
from lp_rewrite.absolute import AbsoluteRequest, resolve_addresses
from lp_rewrite.check import CheckOptions, check_payload
from lp_rewrite.check.findings import Finding, PayloadReport
from lp_rewrite.check.xen import XenImage
from lp_rewrite.errors import InputError, UsageError
from lp_rewrite.xensyms import XenSymbol, XenSymbols
from tests.conftest import ARCHES, COMMITTED, MANIFEST, ROOT, run_cli
from tests.elf_sections import elf_section, elf_symtab
from tests.oracle import Payload as Oracle

# scripts/ is not a package: lpbuild_mini is importable only with it on
# sys.path, at run time, so mypy sees a plain module (its attributes Any) and
# Mini below spells out the part of lpbuild_mini.Miniature the tests use.
sys.path.insert(0, str(ROOT / "scripts"))
try:
    mini_build: ModuleType = importlib.import_module("lpbuild_mini")
finally:
    sys.path.pop(0)

HOOK = ROOT / "scripts" / "livepatch-build-post"


class Mini(Protocol):
    """scripts/lpbuild_mini.py's Miniature, as the tests use it."""

    arch: str
    work: Path
    xen_syms: Path
    objects: list[Path]
    patched: list[Path]


EXPECTED = {
    "x86_64": {
        ".data.rel.ro.local.a_handlers": 1,
        ".data.rel.ro.local.c_handlers": 1,
        ".text.a_init": 2,
        ".text.b_poll": 2,
        ".text.c_run": 1,
    },
    "aarch64": {
        ".data.rel.ro.local.a_handlers": 1,
        ".data.rel.ro.local.c_handlers": 1,
        ".text.a_init": 4,
        ".text.b_poll": 3,
        ".text.c_run": 1,
    },
    "arm": {".rodata.a_handlers": 1, ".rodata.c_handlers": 1, ".text.a_init": 4, ".text.b_poll": 3, ".text.c_run": 1},
}
ORIGINALS = {"common/a.c#foo", "gfoo"}  # the replaced functions something points at
STEPS = ("link", "strip", "depends")


def _need(arch: str) -> None:
    if not mini_build.toolchain_available(arch):
        pytest.skip(f"{mini_build.PREFIX[arch]}gcc/binutils missing")


@pytest.fixture(scope="module")
def minis(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Mini]:
    """One built miniature per (arch, resolve), shared read-only by the tests."""
    cache: dict[tuple[str, bool], Mini] = {}

    def get(arch: str, resolve: bool = False) -> Mini:
        _need(arch)
        key = (arch, resolve)
        if key not in cache:
            cache[key] = mini_build.build(arch, tmp_path_factory.mktemp(f"mini-{arch}-{int(resolve)}"), resolve=resolve)
        return cache[key]

    return get


def _own_objects(mini: Mini, dest: Path) -> list[Path]:
    """A private copy of livepatch-build's output/ directory."""
    shutil.copytree(mini.work / "output", dest / "output")
    return [dest / "output" / p.relative_to(mini.work / "output") for p in mini.objects]


def _hook(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LP_REWRITE=f"{sys.executable} -m lp_rewrite")
    env.pop("LP_REWRITE_DEBUG", None)
    return subprocess.run(["sh", str(HOOK), *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def _hook_ok(*args: str | os.PathLike[str]) -> None:
    proc = _hook(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout == ""  # quiet by default: build logs stay clean


def _tail(mini: Mini, out: Path, *, at: str | None = None, **kw: object) -> Path:
    """livepatch-build's create_patch() tail, with the hook after step ``at``."""

    def after(step: str, payload: Path) -> None:
        if step == at:
            _hook_ok(payload)

    payload: Path = mini_build.livepatch_build_tail(mini, out, after=after, **kw)
    return payload


def _symbols(path: Path) -> list[tuple[str, str, str, object, int]]:
    with open(path, "rb") as f:
        return [
            (s.name, s["st_info"]["bind"], s["st_info"]["type"], s["st_shndx"], s["st_value"])
            for s in elf_symtab(ELFFile(f)).iter_symbols()
        ]


def _assert_retargeted(reference: Path, rewritten: Path, arch: str, absolute: dict[str, int] | None = None) -> None:
    """The rewriter tests' relocation-level expectations, payload against payload."""
    ref, new = Oracle(reference), Oracle(rewritten)
    expected = ref.expected_retargets()
    assert dict(Counter(sec for sec, _off, _t in expected)) == EXPECTED[arch]
    assert new.expected_retargets() == set(), "a reference to a replacement's entry is left"
    originals = ref.replacements()
    assert set(originals.values()) >= ORIGINALS
    before = {(r.section, r.offset, r.rtype): r for r in ref.relocations()}
    after = {(r.section, r.offset, r.rtype): r for r in new.relocations()}
    assert len(before) == len(ref.relocations()) and before.keys() == after.keys()
    for key, x in before.items():
        y = after[key]
        if key not in expected:
            assert y.resolved == x.resolved, f"{key} changed"
            continue
        _kind, section, value = x.resolved
        original = originals[(section, value + x.bias)]
        if absolute is None:
            assert y.resolved == ("undef", original, y.addend) and y.addend + y.bias == 0, (key, y)
        else:
            assert y.resolved[0] == "abs" and y.resolved[1] + y.bias == absolute[original], (key, y)


def _verify(reference: Path, rewritten: Path, xen_syms: Path | None = None) -> None:
    """lp-rewrite verify, the Xen-semantics proof, on top of the oracle checks."""
    assert importlib.util.find_spec("lp_rewrite.certificate") is not None, "lp-rewrite verify is missing"
    extra: list[str | os.PathLike[str]] = ["--xen-syms", xen_syms] if xen_syms is not None else []
    proc = run_cli("verify", *extra, reference, rewritten)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verified" in proc.stdout


def _with_build_id_of(reference: Path, other: Path, arch: str) -> Path:
    """``reference`` carrying ``other``'s build-id note, which is all a relink changes.

    Rewriting objects before ``ld -r`` changes the linker's input, so the
    payload gets a new build-id (the post-link rewrite keeps the old one);
    the verifier compares every loaded byte, the note's included.
    """
    note = other.with_suffix(".build-id")
    objcopy = mini_build.PREFIX[arch] + "objcopy"
    mini_build.run([objcopy, "--dump-section", f".note.gnu.build-id={note}", str(other)])
    out = reference.with_name("reference-relinked.livepatch")
    mini_build.run([objcopy, "--update-section", f".note.gnu.build-id={note}", str(reference), str(out)])
    return out


def _build_id(path: Path) -> bytes:
    with open(path, "rb") as f:
        return bytes(elf_section(ELFFile(f), ".note.gnu.build-id").data())


def _xen_addresses(mini: Mini) -> dict[str, int]:
    """Where xen-syms puts each original, by lookup.c's rules (not lp_rewrite's)."""
    xen = mini_build.XenSymsLookup(mini.xen_syms)
    return {name: xen.by_xen_name(name).value for name in ORIGINALS | {"a_init", "b_poll"}}


# -- the miniature itself ----------------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("resolve", [False, True], ids=["old_addr-0", "resolve"])
def test_objects_have_create_diff_object_shape(arch: str, resolve: bool, minis: Callable[..., Mini]) -> None:
    mini = minis(arch, resolve)
    xen = mini_build.XenSymsLookup(mini.xen_syms)
    a_obj, b_obj = mini.patched
    syms = _symbols(a_obj)
    assert syms[1][:3] == ("common/a.c", "STB_LOCAL", "STT_FILE")  # the FILE symbol first
    assert _symbols(b_obj)[1][:3] == ("common/b.c", "STB_LOCAL", "STT_FILE")
    # Then local functions, other locals, globals (kpatch_reorder_symbols).
    first_global = next(i for i, s in enumerate(syms) if i and s[1] != "STB_LOCAL")
    rank = [0 if s[2] == "STT_FILE" else 1 if s[2] == "STT_FUNC" else 2 for s in syms[1:first_global]]
    assert rank == sorted(rank)
    assert all(s[1] != "STB_LOCAL" for s in syms[first_global:])
    by_name = {s[0]: s for s in syms}
    assert by_name["common/a.c#foo"][1:3] == ("STB_LOCAL", "STT_FUNC") and by_name["common/a.c#foo"][3] != "SHN_UNDEF"
    # Unchanged statics stay in Xen: undefined, renamed, binding and type kept
    # (on Arm global: ld -r there takes no undefined local, and no create-diff-object exists).
    bind = "STB_LOCAL" if arch == "x86_64" else "STB_GLOBAL"
    assert by_name["common/a.c#bar"][1:4] == (bind, "STT_FUNC", "SHN_UNDEF")
    assert by_name["common/a.c#a_count"][1:4] == (bind, "STT_OBJECT", "SHN_UNDEF")
    with open(a_obj, "rb") as f:
        elf = ELFFile(f)
        funcs, strings = elf_section(elf, ".livepatch.funcs"), elf_section(elf, ".livepatch.strings")
        ptr, entsize = (8, 104) if elf.elfclass == 64 else (4, 92)
        assert funcs["sh_entsize"] == entsize and funcs["sh_flags"] == 0x2  # SHF_ALLOC only
        assert strings["sh_entsize"] == 1 and strings.data() == b"common/a.c#foo\0a_init\0"
        data = funcs.data()
    oracle = Oracle(a_obj)
    relocs = oracle.relocations()
    fields = {r.offset: r for r in relocs if r.section == ".livepatch.funcs"}
    assert sorted(fields) == [0, ptr, entsize, entsize + ptr]  # name and new_addr only
    ptr_fmt = "<Q" if ptr == 8 else "<I"
    for base, name, string_at in ((0, "common/a.c#foo", 0), (entsize, "a_init", len("common/a.c#foo") + 1)):
        name_ref, new_ref = fields[base], fields[base + ptr]
        # name: the .livepatch.strings section symbol plus the string's offset.
        assert name_ref.resolved == ("def", ".livepatch.strings", string_at)
        assert oracle.symtab.get_symbol(name_ref.symbol)["st_info"]["type"] == "STT_SECTION"
        # new_addr: the replacement function's own symbol, addend 0.
        new = oracle.symtab.get_symbol(new_ref.symbol)
        assert new.name == name and new["st_info"]["type"] == "STT_FUNC" and new_ref.addend == 0
        original = xen.by_xen_name(name)
        assert struct.unpack_from(ptr_fmt, data, base + 2 * ptr)[0] == (original.value if resolve else 0)
        assert struct.unpack_from("<II", data, base + 3 * ptr) == (new["st_size"], original.size)
        assert data[base + 3 * ptr + 8] == 2  # version
    # No relocation names a function's section symbol any more (kpatch_replace_sections_syms).
    section_refs = {
        r.resolved[1] for r in relocs if oracle.symtab.get_symbol(r.symbol)["st_info"]["type"] == "STT_SECTION"
    }
    assert not section_refs & {".text.foo", ".text.a_init"}


# -- 1. post-link: the hook on the linked payload ------------------------------


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("step", STEPS)
def test_post_link_hook_after_each_step(arch: str, step: str, minis: Callable[..., Mini], tmp_path: Path) -> None:
    """After ld -r (before strip and notes), after strip, or last: the same rewrite."""
    mini = minis(arch)
    reference = _tail(mini, tmp_path / "plain")
    rewritten = _tail(mini, tmp_path / "hooked", at=step)
    _assert_retargeted(reference, rewritten, arch)
    syms = _symbols(rewritten)
    assert not [s for s in syms if s[0].startswith("livepatch_load_data_")]  # strip -w -N did its part
    for original in ORIGINALS:
        (alias,) = [s for s in syms if s[0] == original]
        assert alias[1:4] == ("STB_GLOBAL", "STT_FUNC", "SHN_UNDEF")
        assert any(s[0] == original + ".lp_new" and s[3] != "SHN_UNDEF" for s in syms)
    _verify(reference, rewritten)
    # Idempotent: the hook again (as a rerun build would) changes nothing.
    before = rewritten.read_bytes()
    _hook_ok(rewritten)
    assert rewritten.read_bytes() == before
    assert os.stat(rewritten).st_mode & 0o777 == 0o755  # livepatch-build's chmod +x survives


@pytest.fixture
def output_dir(minis: Callable[..., Mini], tmp_path: Path) -> Path:
    """What `livepatch-build -o DIR` leaves: xen-syms, output/*.o, NAME.livepatch."""
    mini = minis("x86_64")
    out = tmp_path / "out"
    _own_objects(mini, out)
    shutil.copy(mini.xen_syms, out / "xen-syms")
    mini_build.livepatch_build_tail(mini, out, "fix")
    return out


def test_wrapper_on_the_output_directory(output_dir: Path, minis: Callable[..., Mini], tmp_path: Path) -> None:
    """`livepatch-build ... -o DIR && livepatch-build-post DIR`: no change to livepatch-build."""
    hooks_only = output_dir / "hooks_only.livepatch"
    shutil.copy(COMMITTED / "x86_64" / "no_funcs.livepatch", hooks_only)
    untouched = {p: p.read_bytes() for p in [hooks_only, output_dir / "xen-syms", *output_dir.rglob("*.o")]}
    reference = mini_build.livepatch_build_tail(minis("x86_64"), tmp_path / "ref", "fix")
    _hook_ok(output_dir)
    _assert_retargeted(reference, output_dir / "fix.livepatch", "x86_64")
    assert {p: p.read_bytes() for p in untouched} == untouched  # objects, xen-syms, hooks-only payload
    done = (output_dir / "fix.livepatch").read_bytes()
    _hook_ok(output_dir)
    assert (output_dir / "fix.livepatch").read_bytes() == done
    # --verify proves each output before it replaces the input.
    proved = tmp_path / "proved"
    proved.mkdir()
    shutil.copy(reference, proved / "fix.livepatch")
    _hook_ok("--verify", "--xen-syms", output_dir / "xen-syms", proved)
    assert (proved / "fix.livepatch").read_bytes() == done
    verbose = _hook("-v", output_dir)
    assert verbose.returncode == 0 and "hooks_only.livepatch: no .livepatch.funcs" in verbose.stdout
    assert "nothing to retarget" in verbose.stdout


def _readme_line(intro: str, page: str = "README.md") -> str:
    """The one-line snippet of the ```sh block that follows ``intro`` in README.md (or a docs/ page)."""
    readme = (ROOT / page).read_text()
    block = readme[readme.index(intro) :].split("```sh\n", 1)[1].split("```", 1)[0]
    (line,) = [ln for ln in block.splitlines() if ln.strip()]
    return line.strip()


CREATE_PATCH_LINE = "Or one line in `livepatch-build`'s `create_patch()`"
PRE_LINK_LINE = "Pre-link instead (x86-64)"


def _run_in_create_patch(line: str, cwd: Path, xensyms: Path) -> subprocess.CompletedProcess[str]:
    """``line`` where create_patch() runs it: bash, in the output directory, with its variables and die()."""
    env = dict(os.environ, LP_REWRITE=f"{sys.executable} -m lp_rewrite", PATH=f"{HOOK.parent}:{os.environ['PATH']}")
    env.pop("LP_REWRITE_DEBUG", None)
    script = f'die() {{ echo "ERROR: $1." >&2; exit 1; }}\nPATCHNAME=fix\nXENSYMS={xensyms}\n{line}\n'
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_one_line_change_in_create_patch(output_dir: Path, minis: Callable[..., Mini], tmp_path: Path) -> None:
    """README's line, verbatim, on both kinds of build: name-resolved aliases, or SHN_ABS after --prelink."""
    line = _readme_line(CREATE_PATCH_LINE)
    assert '--xen-syms "$XENSYMS"' in line and '"${PATCHNAME}.livepatch"' in line
    proc = _run_in_create_patch(line, output_dir, output_dir / "xen-syms")
    assert proc.returncode == 0, proc.stderr
    assert Oracle(output_dir / "fix.livepatch").expected_retargets() == set()
    assert {s[0] for s in _symbols(output_dir / "fix.livepatch") if s[3] == "SHN_UNDEF"} >= ORIGINALS
    # A --prelink build: the same line makes SHN_ABS aliases, cross-checked against $XENSYMS.
    mini = minis("x86_64", resolve=True)
    prelinked = mini_build.livepatch_build_tail(mini, tmp_path / "prelinked", "fix", prelinked=True)
    proc = _run_in_create_patch(line, prelinked.parent, mini.xen_syms)
    assert proc.returncode == 0, proc.stderr
    _no_undefined(prelinked)
    addresses = _xen_addresses(mini)
    assert {s[0]: s[4] for s in _symbols(prelinked) if s[0] in ORIGINALS} == {o: addresses[o] for o in ORIGINALS}
    # Against the xen-syms of another build, the line fails the build and leaves the payload as it was.
    again = mini_build.livepatch_build_tail(mini, tmp_path / "again", "fix", prelinked=True)
    before = again.read_bytes()
    other = mini_build.build_xen_syms("x86_64", tmp_path / "other", base=mini_build.XEN_BASE["x86_64"] + 0x10000)
    proc = _run_in_create_patch(line, again.parent, other)
    assert proc.returncode == 1 and proc.stderr.splitlines()[-1] == "ERROR: lp-rewrite failed."
    assert "another build" in proc.stderr and again.read_bytes() == before


def test_pre_link_line_in_create_patch(minis: Callable[..., Mini], tmp_path: Path) -> None:
    """README's pre-link line, verbatim, in the output directory before `ld -r`."""
    line = _readme_line(PRE_LINK_LINE, "docs/livepatch-build.md")
    assert "--local-aliases" in line and " output " in line
    mini = minis("x86_64")
    objects = _own_objects(mini, tmp_path)
    proc = _run_in_create_patch(line, tmp_path, mini.xen_syms)
    assert proc.returncode == 0, proc.stderr
    final = mini_build.livepatch_build_tail(mini, tmp_path / "final", "fix", objects=objects)
    reference = mini_build.livepatch_build_tail(mini, tmp_path / "ref", "fix")
    _assert_retargeted(reference, final, "x86_64")


def test_hook_fails_the_build_with_the_tools_message(output_dir: Path, tmp_path: Path) -> None:
    bad = output_dir / "bad.livepatch"
    shutil.copy(COMMITTED / "x86_64" / "unsupported_reloc.livepatch", bad)
    before = bad.read_bytes()
    proc = _hook(output_dir)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("lp-rewrite: error: ") and MANIFEST["unsupported_reloc"]["error"] in line
    assert bad.read_bytes() == before
    # Not a payload at all: readelf cannot read it, so the tool says why.
    junk = tmp_path / "junk.livepatch"
    junk.write_text("not an object\n")
    proc = _hook(junk)
    assert proc.returncode == 2 and proc.stderr.startswith("lp-rewrite: error: ") and "not an ELF" in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, text in (
        ((tmp_path / "missing",), "no such file or directory"),
        ((empty,), "no *.livepatch in it"),
        (("--local-aliases", empty), "no *.o below it"),
        (("--bogus", output_dir), "unknown option --bogus"),
        ((), "no payload or directory given"),
    ):
        proc = _hook(*args)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("livepatch-build-post: error: ") and text in proc.stderr


BUGGY_TOOL = """\
# lp-rewrite with a bug that its own self-check shares (the identify step swaps
# the first two originals): only the verify certificate, which identifies the
# replacements on its own, can see that the aliases name the wrong functions.
import lp_rewrite.identify as identify_module
import lp_rewrite.pipeline as pipeline
import lp_rewrite.selfcheck as self_check
from lp_rewrite.cli import main

real = identify_module.identify


def swapped(payload, **options):
    table = real(payload, **options)
    a, b = table.replacements[0], table.replacements[1]
    table.replacements[0:2] = [a._replace(original=b.original), b._replace(original=a.original)]
    return table


pipeline.identify = self_check.identify = swapped
main()
"""


def test_hook_verify_failure_fails_the_build(output_dir: Path, tmp_path: Path) -> None:
    """--verify: an output the certificate rejects exits 1 through the hook, and nothing is replaced."""
    buggy = tmp_path / "buggy_lp_rewrite.py"
    buggy.write_text(BUGGY_TOOL)
    second = output_dir / "zz-second.livepatch"
    shutil.copy(output_dir / "fix.livepatch", second)
    before = {p: p.read_bytes() for p in output_dir.glob("*.livepatch")}
    env = dict(os.environ, LP_REWRITE=f"{sys.executable} {buggy}")
    env.pop("LP_REWRITE_DEBUG", None)
    proc = subprocess.run(
        ["sh", str(HOOK), "--verify", "--xen-syms", str(output_dir / "xen-syms"), str(output_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"lp-rewrite: error: {output_dir / 'fix.livepatch'}: not a verified rewrite: ")
    assert {p: p.read_bytes() for p in output_dir.glob("*.livepatch")} == before  # the second was not reached
    assert sorted(p.name for p in output_dir.iterdir() if p.name.startswith(".")) == []  # no temporary left
    # Without --verify the same bug goes through: the certificate is what caught it.
    proc = subprocess.run(["sh", str(HOOK), str(second)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and second.read_bytes() != before[second]


def test_hook_is_posix_shell() -> None:
    for shell in ("sh", "dash", "bash"):
        if shutil.which(shell):
            proc = subprocess.run([shell, "-n", str(HOOK)], capture_output=True, text=True)
            assert proc.returncode == 0, (shell, proc.stderr)
    assert HOOK.read_text().startswith("#!/bin/sh\n") and os.access(HOOK, os.X_OK)
    help_text = subprocess.run(["sh", str(HOOK), "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "--local-aliases" in help_text.stdout


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_hook_is_shellcheck_clean() -> None:
    proc = subprocess.run(["shellcheck", "-s", "sh", str(HOOK)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


# -- 2. pre-link: --local-aliases per object, then ld -r -----------------------


def test_pre_link_local_aliases_survive_ld_r(minis: Callable[..., Mini], tmp_path: Path) -> None:
    mini = minis("x86_64")
    objects = _own_objects(mini, tmp_path)
    new_file = objects[-1]  # common/c.o: no .livepatch.funcs
    untouched = new_file.read_bytes()
    _hook_ok("--local-aliases", tmp_path / "output")
    assert new_file.read_bytes() == untouched
    a_syms = _symbols(objects[0])
    i = next(i for i, s in enumerate(a_syms) if s[0] == "common/a.c#foo" and s[3] == "SHN_UNDEF")
    assert a_syms[i][1] == "STB_LOCAL"
    assert next(s[0] for s in reversed(a_syms[:i]) if s[2] == "STT_FILE") == "common/a.c"  # in its FILE group
    # ld -r of several rewritten objects: every alias stays distinct and unresolved.
    linked = mini_build.ld_r("x86_64", tmp_path / "linked.o", objects)
    syms = _symbols(linked)
    for original, bind in (("common/a.c#foo", "STB_LOCAL"), ("gfoo", "STB_GLOBAL")):
        (alias,) = [s for s in syms if s[0] == original]  # common/c.c's gfoo merged into it
        assert alias[1:4] == (bind, "STT_FUNC", "SHN_UNDEF")
        assert any(s[0] == original + ".lp_new" and s[3] != "SHN_UNDEF" for s in syms)
    reference_linked = mini_build.ld_r("x86_64", tmp_path / "reference.o", mini.objects)
    _assert_retargeted(reference_linked, linked, "x86_64")
    assert not _hook("--local-aliases", tmp_path / "output").returncode  # idempotent
    # The rest of create_patch(): the payload verifies against the unrewritten one.
    final = mini_build.livepatch_build_tail(mini, tmp_path / "final", "fix", objects=objects)
    reference = mini_build.livepatch_build_tail(mini, tmp_path / "ref", "fix")
    _assert_retargeted(reference, final, "x86_64")
    assert _build_id(final) != _build_id(reference)  # a relink of new input: a new build-id
    _verify(_with_build_id_of(reference, final, "x86_64"), final)
    # prelink resolves each local alias in the FILE scope it sits in.
    prelinked = mini_build.prelink(linked, tmp_path / "prelinked.o", mini_build.XenSymsLookup(mini.xen_syms))
    addresses = _xen_addresses(mini)
    for original in ORIGINALS:
        (alias,) = [s for s in _symbols(prelinked) if s[0] == original]
        assert alias[3:] == ("SHN_ABS", addresses[original])


@pytest.mark.parametrize("arch", ["aarch64", "arm"])
def test_pre_link_is_refused_on_arm(arch: str, minis: Callable[..., Mini], tmp_path: Path) -> None:
    """GNU ld -r on Arm rejects undefined locals: the tool says so and changes nothing."""
    mini = minis(arch)
    objects = _own_objects(mini, tmp_path)
    before = [p.read_bytes() for p in objects]
    proc = _hook("--local-aliases", tmp_path / "output")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("lp-rewrite: error: --local-aliases: ")
    assert f"GNU ld -r on {arch} rejects undefined local symbols" in line and "common/a.c#foo" in line
    assert "rewrite the linked payload instead" in line
    assert [p.read_bytes() for p in objects] == before
    # Why: the object the option would produce does not link there.
    forced = tmp_path / "forced.o"
    rewrite(objects[0], forced, policy=Policy(local_aliases=True, linker_check=False))
    link = subprocess.run(
        [mini_build.PREFIX[arch] + "ld", "-r", "-o", str(tmp_path / "l.o"), str(forced)], capture_output=True, text=True
    )
    assert link.returncode != 0 and "undefined reference to `common/a.c#foo'" in link.stderr
    # Only a file-scoped original needs a local alias: b.o's are global, and go through.
    _hook_ok("--local-aliases", objects[1])
    assert [s[1:4] for s in _symbols(objects[1]) if s[0] == "gfoo"] == [("STB_GLOBAL", "STT_FUNC", "SHN_UNDEF")]
    # What works there for the whole payload: post-link (test_post_link_hook_after_each_step).


# -- 3. prelinked payloads: SHN_ABS aliases ------------------------------------


def _no_undefined(path: Path) -> None:
    assert [s[0] for s in _symbols(path)[1:] if s[3] == "SHN_UNDEF"] == []


@pytest.mark.parametrize("step", ["link", "depends"])
def test_prelinked_payload_gets_absolute_aliases(step: str, minis: Callable[..., Mini], tmp_path: Path) -> None:
    """--prelink: old_addr literals switch the tool to SHN_ABS aliases by themselves."""
    mini = minis("x86_64", resolve=True)
    addresses = _xen_addresses(mini)
    reference = _tail(mini, tmp_path / "plain", prelinked=True)
    _no_undefined(reference)
    rewritten = _tail(mini, tmp_path / "hooked", at=step, prelinked=True)
    _assert_retargeted(reference, rewritten, "x86_64", absolute=addresses)
    _no_undefined(rewritten)  # still nothing left for Xen to resolve by name
    for original in ORIGINALS:
        (alias,) = [s for s in _symbols(rewritten) if s[0] == original]
        assert alias[1:] == ("STB_GLOBAL", "STT_FUNC", "SHN_ABS", addresses[original])
    _verify(reference, rewritten, mini.xen_syms)
    # --absolute with xen-syms on the same payload: the literals check out, same result.
    explicit = tmp_path / "explicit.livepatch"
    shutil.copy(reference, explicit)
    _hook_ok("--absolute", "--xen-syms", mini.xen_syms, explicit)
    _assert_retargeted(reference, explicit, "x86_64", absolute=addresses)
    if step == "depends":  # rewritten at the very same point: byte for byte
        assert explicit.read_bytes() == rewritten.read_bytes()


@pytest.mark.parametrize("arch", ARCHES)
def test_literal_old_addr_switches_to_absolute_aliases(arch: str, minis: Callable[..., Mini], tmp_path: Path) -> None:
    """A literal old_addr (create-diff-object --resolve) makes SHN_ABS aliases on every architecture."""
    mini = minis(arch, resolve=True)
    addresses = _xen_addresses(mini)
    reference = mini_build.livepatch_build_tail(mini, tmp_path / "ref", "fix")
    rewritten = mini_build.livepatch_build_tail(mini, tmp_path / "p", "fix")
    _hook_ok(rewritten)  # no option: the literals alone switch the mode
    _assert_retargeted(reference, rewritten, arch, absolute=addresses)
    for original in ORIGINALS:
        (alias,) = [s for s in _symbols(rewritten) if s[0] == original]
        assert alias[1:] == ("STB_GLOBAL", "STT_FUNC", "SHN_ABS", addresses[original])
    _verify(reference, rewritten, mini.xen_syms)
    # With --xen-syms the literals are cross-checked, and agree: the same bytes.
    checked = mini_build.livepatch_build_tail(mini, tmp_path / "c", "fix")
    _hook_ok("--xen-syms", mini.xen_syms, checked)
    assert checked.read_bytes() == rewritten.read_bytes()


def _by_rule(report: PayloadReport, rule: str) -> list[Finding]:
    return [f for f in report.findings if f.rule.id == rule and f.suppressed is None]


def test_check_on_prelinked_payloads(minis: Callable[..., Mini], tmp_path: Path) -> None:
    """check --xen-syms on a --prelink build: LP007 through SHN_ABS symbols, LP013 against another build.

    The x86 miniature hypervisor is built with CET-IBT: foo and bar are
    cf_check (it registers them as callbacks), gfoo is only ever called, so it
    has no ENDBR64, and the payload's stored pointers to gfoo would fault.
    """
    mini = minis("x86_64", resolve=True)
    xen = XenImage.load(mini.xen_syms)
    addresses = _xen_addresses(mini)
    endbr = bytes.fromhex("f30f1efa")
    assert xen.ibt and xen.code(addresses["common/a.c#foo"], 4) == endbr and xen.code(addresses["gfoo"], 4) != endbr
    raw = _tail(mini, tmp_path / "plain", prelinked=True)
    rewritten = _tail(mini, tmp_path / "hooked", at="depends", prelinked=True)
    _no_undefined(raw)
    before = check_payload(raw, CheckOptions(xen=xen))
    assert {f.symbol for f in _by_rule(before, "LP007")} == {"gfoo"}
    assert _by_rule(before, "LP001") and not _by_rule(before, "LP013")
    after = check_payload(rewritten, CheckOptions(xen=xen))
    found = _by_rule(after, "LP007")
    assert {f.symbol for f in found} == {"gfoo"} and not _by_rule(after, "LP001")
    assert all("absolute" in f.message for f in found)
    places = {(f.section, f.offset) for f in found}
    assert places == {(f.section, f.offset) for f in _by_rule(before, "LP007")}
    # From the sources: a_init stores gfoo in hv_callback, b_poll passes it to hv_poll, c_handlers holds it.
    assert sorted((sec for sec, _off in places), key=str) == [
        ".data.rel.ro.local.c_handlers",
        ".text.a_init",
        ".text.b_poll",
    ]
    assert not _by_rule(after, "LP013")
    # The same payloads against a hypervisor linked 64 KiB further up: every address is wrong.
    other = mini_build.build_xen_syms("x86_64", tmp_path / "other", base=mini_build.XEN_BASE["x86_64"] + 0x10000)
    shifted = check_payload(rewritten, CheckOptions(xen=XenImage.load(other)))
    wrong = {f.symbol: f for f in _by_rule(shifted, "LP013")}
    assert ORIGINALS | {"common/a.c#bar", "common/b.c#helper", "printk", "register_callback", "a_init"} <= set(wrong)
    assert wrong["a_init"].section == ".livepatch.funcs"  # a literal old_addr with no symbol behind it
    moved = addresses["gfoo"]
    assert f"{moved:#x}" in wrong["gfoo"].message and f"{moved + 0x10000:#x}" in wrong["gfoo"].message


def test_literal_cross_checked_against_xen_syms(minis: Callable[..., Mini], tmp_path: Path) -> None:
    """A payload prelinked against another build is refused, naming both addresses."""
    mini = minis("x86_64", resolve=True)
    payload = mini_build.livepatch_build_tail(mini, tmp_path / "p", prelinked=True)
    before = payload.read_bytes()
    shifted = mini_build.XEN_BASE["x86_64"] + 0x10000
    other = mini_build.build_xen_syms("x86_64", tmp_path / "other", base=shifted)
    proc = _hook("--xen-syms", other, payload)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    ours = _xen_addresses(mini)["common/a.c#foo"]
    assert f"old_addr is {ours:#x}" in line and f"at {ours + 0x10000:#x}" in line and "another build" in line
    assert payload.read_bytes() == before


@pytest.mark.parametrize("arch", ARCHES)
def test_absolute_on_request_needs_xen_syms(arch: str, minis: Callable[..., Mini], tmp_path: Path) -> None:
    """--absolute on a payload with old_addr 0: addresses come from xen-syms (any architecture)."""
    mini = minis(arch)
    reference = mini_build.livepatch_build_tail(mini, tmp_path / "ref", "fix")
    payload = mini_build.livepatch_build_tail(mini, tmp_path / "p", "fix")
    proc = _hook("--absolute", payload)
    assert proc.returncode == 2 and "give --xen-syms FILE" in proc.stderr
    assert payload.read_bytes() == reference.read_bytes()
    _hook_ok("--absolute", "--xen-syms", mini.xen_syms, payload)
    _assert_retargeted(reference, payload, arch, absolute=_xen_addresses(mini))
    _verify(reference, payload, mini.xen_syms)


def test_ambiguous_static_is_refused_naming_both(minis: Callable[..., Mini], tmp_path: Path) -> None:
    """common/dup.c#twin is two functions in xen-syms: no absolute address can be chosen."""
    mini = minis("x86_64")
    dup = mini_build.build_dup_object(mini, tmp_path / "output" / "common" / "dup.o")
    payload = mini_build.livepatch_build_tail(mini, tmp_path, "dup", objects=[dup])
    before = payload.read_bytes()
    twins = [s.value for s in mini_build.XenSymsLookup(mini.xen_syms).symbols if s.name == "twin"]
    assert len(twins) == 2
    proc = _hook("--absolute", "--xen-syms", mini.xen_syms, payload)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "'common/dup.c#twin' is ambiguous" in line and "FILE 'common/dup.c'" in line
    assert all(f"{t:#x}" in line for t in twins), line
    assert payload.read_bytes() == before
    # Name resolution at load is the default; it leaves the choice to Xen's table.
    _hook_ok(payload)
    assert [s[3] for s in _symbols(payload) if s[0] == "common/dup.c#twin"] == ["SHN_UNDEF"]


@pytest.mark.parametrize("which", [0, 1])
def test_ambiguous_static_with_a_literal_is_accepted(which: int, minis: Callable[..., Mini], tmp_path: Path) -> None:
    """A literal old_addr that is one of the twins says which one is meant: the alias takes it."""
    mini = minis("x86_64")
    twins = sorted(s.value for s in mini_build.XenSymsLookup(mini.xen_syms).symbols if s.name == "twin")
    dup = mini_build.build_dup_object(mini, tmp_path / "output" / "common" / "dup.o", resolve=True)
    payload = mini_build.livepatch_build_tail(mini, tmp_path, "dup", objects=[dup])
    _set_old_addr(payload, 0, twins[which])
    for args in (("--xen-syms", mini.xen_syms), ("--absolute", "--xen-syms", mini.xen_syms)):
        copy = tmp_path / f"copy{len(args)}.livepatch"
        shutil.copy(payload, copy)
        _hook_ok(*args, copy)
        (alias,) = [s for s in _symbols(copy) if s[0] == "common/dup.c#twin" and s[3] != "SHN_UNDEF"]
        assert alias[3:] == ("SHN_ABS", twins[which])
    # check agrees: a literal that is a twin is neither ambiguous (LP005) nor wrong (LP013).
    report = check_payload(copy, CheckOptions(xen=XenImage.load(mini.xen_syms)))
    assert not [f for f in report.findings if f.rule.id in ("LP005", "LP013")], report.findings
    # A literal that is neither twin is refused, naming both.
    _set_old_addr(payload, 0, twins[0] + 4)
    proc = _hook("--xen-syms", mini.xen_syms, payload)
    assert proc.returncode == 2 and all(f"{t:#x}" in proc.stderr for t in twins) and "another build" in proc.stderr


def _set_old_addr(payload: Path, entry: int, value: int) -> None:
    """Write a literal into a .livepatch.funcs entry's old_addr (a field with no relocation)."""
    data = bytearray(payload.read_bytes())
    with open(payload, "rb") as f:
        elf = ELFFile(f)
        funcs = elf_section(elf, ".livepatch.funcs")
        ptr, entsize = (8, 104) if elf.elfclass == 64 else (4, 92)
        at = funcs["sh_offset"] + entry * entsize + 2 * ptr
    struct.pack_into("<Q" if ptr == 8 else "<I", data, at, value)
    payload.write_bytes(bytes(data))


def test_pre_link_with_resolve_then_prelink(minis: Callable[..., Mini], tmp_path: Path) -> None:
    """--prelink builds rewritten per object: local SHN_ABS aliases, which ld -r and prelink keep."""
    mini = minis("x86_64", resolve=True)
    objects = _own_objects(mini, tmp_path)
    _hook_ok("--local-aliases", "--xen-syms", mini.xen_syms, tmp_path / "output")
    addresses = _xen_addresses(mini)
    (alias,) = [s for s in _symbols(objects[0]) if s[0] == "common/a.c#foo" and s[3] == "SHN_ABS"]
    assert alias[1:] == ("STB_LOCAL", "STT_FUNC", "SHN_ABS", addresses["common/a.c#foo"])
    final = mini_build.livepatch_build_tail(mini, tmp_path / "final", objects=objects, prelinked=True)
    reference = mini_build.livepatch_build_tail(mini, tmp_path / "ref", prelinked=True)
    _no_undefined(final)
    _assert_retargeted(reference, final, "x86_64", absolute=addresses)
    _verify(_with_build_id_of(reference, final, "x86_64"), final, mini.xen_syms)


def test_summary_and_json_name_the_absolute_address(minis: Callable[..., Mini], tmp_path: Path) -> None:
    mini = minis("x86_64", resolve=True)
    payload = mini_build.livepatch_build_tail(mini, tmp_path, prelinked=True)
    proc = run_cli("rewrite", "--format", "json", payload, "-o", tmp_path / "out.livepatch")
    assert proc.returncode == 0, proc.stderr
    addresses = _xen_addresses(mini)
    aliases = {a["name"]: a for a in json.loads(proc.stdout)["aliases"]}
    assert {n: a["absolute"] for n, a in aliases.items()} == {n: addresses[n] for n in ORIGINALS}
    text = run_cli("rewrite", payload, "-o", tmp_path / "again.livepatch").stdout
    assert f"alias gfoo (added, absolute {addresses['gfoo']:#x}" in text


# -- lp_rewrite.absolute on its own (no toolchain) -----------------------------


def _table(*symbols: tuple[str, int]) -> XenSymbols:
    table = XenSymbols(source="xen-syms")
    for name, address in symbols:
        table._add(XenSymbol(name, address, 16, True, ".text"))
    return table


def test_absolute_addresses_from_a_table(monkeypatch: pytest.MonkeyPatch) -> None:
    table = _table(("f", 0x1000), ("a.c#s", 0x2000), ("a.c#s", 0x2000), ("b.c#t", 0x3000), ("b.c#t", 0x3100))
    monkeypatch.setattr(XenSymbols, "from_xen_syms", classmethod(lambda cls, path: table))
    xen = Path("xen-syms")
    # The same address twice (an alias in xen-syms) is no ambiguity.
    got = resolve_addresses([AbsoluteRequest("f", 0, 0), AbsoluteRequest("a.c#s", 0x2000, 1)], xen)
    assert got == {"f": 0x1000, "a.c#s": 0x2000}
    with pytest.raises(InputError, match=r"'b\.c#t' is ambiguous .* at 0x3000 in \.text .* at 0x3100 in \.text"):
        resolve_addresses([AbsoluteRequest("b.c#t", 0, 2)], xen)
    # ...unless a literal old_addr says which of them it is.
    assert resolve_addresses([AbsoluteRequest("b.c#t", 0x3100, 2)], xen) == {"b.c#t": 0x3100}
    with pytest.raises(InputError, match=r"old_addr is 0x3200, but xen-syms has 'b\.c#t' at 0x3000 .* and 0x3100"):
        resolve_addresses([AbsoluteRequest("b.c#t", 0x3200, 2)], xen)
    with pytest.raises(InputError, match="'nope' is not in xen-syms's symbol table"):
        resolve_addresses([AbsoluteRequest("nope", 0, 3)], xen)
    with pytest.raises(InputError, match="old_addr is 0x1004, but xen-syms has 'f' at 0x1000"):
        resolve_addresses([AbsoluteRequest("f", 0x1004, 4)], xen)
    # Without xen-syms: literals as they are; two literals for one name conflict; none is an error.
    assert resolve_addresses([AbsoluteRequest("g", 0x5000, 0)], None) == {"g": 0x5000}
    with pytest.raises(InputError, match="entries 0 and 1 give 'g' two addresses"):
        resolve_addresses([AbsoluteRequest("g", 0x5000, 0), AbsoluteRequest("g", 0x6000, 1)], None)
    with pytest.raises(UsageError, match=r"entry 2 \(h\) has no literal old_addr; give --xen-syms FILE"):
        resolve_addresses([AbsoluteRequest("g", 0x5000, 0), AbsoluteRequest("h", 0, 2)], None)

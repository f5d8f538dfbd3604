"""Nothing to rewrite is not an error (issue 12 §1).

A valid payload that replaces no function (no ``.livepatch.funcs``: hooks
only, like Xen's ``xen_action_hooks_nofunc``; only NOP entries) or whose
references to replaced functions all stay (``hello_world``) comes out of
``rewrite`` byte-identical with exit 0 and a summary saying why; ``--in-place``
does not touch the file; ``verify`` certifies the pair as unchanged; ``check``
keeps its own verdict. A payload Xen refuses ("Nothing to patch") is still
refused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import ARCHES, COMMITTED, assert_one_line_error, run_cli

# fixture -> what the summary must give as the reason
WHY = {
    "no_funcs": "no .livepatch.funcs section: a hooks-only payload replaces no function",
    "action_hooks_nofunc": "no .livepatch.funcs section: a hooks-only payload replaces no function",
    "nop_only": "its 2 .livepatch.funcs entries are NOP entries, no new_addr",
    "hello_world": "every reference to a replaced function's entry must stay: ",
}
CASES = [pytest.param(name, arch, id=f"{name}-{arch}") for name in WHY for arch in ARCHES]


@pytest.mark.parametrize(("name", "arch"), CASES)
def test_rewrite_copies_byte_identical_and_says_why(name: str, arch: str, tmp_path: Path) -> None:
    src = COMMITTED / arch / f"{name}.livepatch"
    out = tmp_path / "out.livepatch"
    proc = run_cli("rewrite", src, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == src.read_bytes()
    (line,) = proc.stdout.splitlines()
    assert f"nothing to retarget ({WHY[name]}" in line and "the payload is unchanged" in line, line
    assert f"{out} is a byte-identical copy" in line
    doc = json.loads(run_cli("rewrite", src, "-o", out, "--format", "json").stdout)
    assert doc["changed"] is False and doc["why_unchanged"].startswith(WHY[name])
    assert doc["retargeted"] == {} and doc["aliases"] == [] and doc["renamed"] == {}


@pytest.mark.parametrize(("name", "arch"), CASES)
def test_in_place_leaves_the_file_untouched(name: str, arch: str, tmp_path: Path) -> None:
    work = tmp_path / "dir"
    work.mkdir()
    copy = work / f"{name}.livepatch"
    shutil.copy(COMMITTED / arch / f"{name}.livepatch", copy)
    os.utime(copy, ns=(1_000_000_000, 1_000_000_000))  # a time no write could leave behind
    before = copy.stat()
    proc = run_cli("rewrite", copy, "--in-place")
    assert proc.returncode == 0, proc.stderr
    assert f"nothing to retarget ({WHY[name]}" in proc.stdout
    after = copy.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert copy.read_bytes() == (COMMITTED / arch / f"{name}.livepatch").read_bytes()
    assert [p.name for p in work.iterdir()] == [copy.name]  # no temporary file, no backup


@pytest.mark.parametrize(("name", "arch"), CASES)
def test_verify_certifies_the_pair_as_unchanged(name: str, arch: str, tmp_path: Path) -> None:
    src = COMMITTED / arch / f"{name}.livepatch"
    out = tmp_path / "out.livepatch"
    assert run_cli("rewrite", src, "-o", out, "-q").returncode == 0
    proc = run_cli("verify", src, out)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert f"is {src} unchanged: nothing to retarget ({WHY[name]}" in first, first
    assert first.endswith("the files are byte-identical")
    doc = json.loads(run_cli("verify", "--format", "json", src, out).stdout)
    assert doc["verified"] is True and doc["retargeted"] == [] and doc["identical_files"] is True
    assert doc["nothing_to_retarget"].startswith(WHY[name])
    # rewrite --verify certifies it the same way before the copy is renamed into place.
    proc = run_cli("rewrite", src, "-o", tmp_path / "again.livepatch", "--verify")
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1].startswith("verified: "), proc.stdout


@pytest.mark.parametrize("arch", ARCHES)
def test_verify_still_fails_a_changed_copy(arch: str, tmp_path: Path) -> None:
    """Nothing to retarget does not mean anything goes: a loaded byte that differs fails the proof."""
    src = COMMITTED / arch / "action_hooks_nofunc.livepatch"
    data = bytearray(src.read_bytes())
    at = data.find(b"reverted")  # a printk format string in .rodata
    assert at > 0
    data[at] ^= 0x20
    bad = tmp_path / "bad.livepatch"
    bad.write_bytes(bytes(data))
    proc = run_cli("verify", src, bad)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "not a verified rewrite" in proc.stderr and ".rodata" in proc.stderr


@pytest.mark.parametrize("arch", ARCHES)
def test_check_keeps_its_own_verdict(arch: str) -> None:
    """check is unchanged: hooks-only and NOP-only payloads check clean, the hooks they run included."""
    for name in ("no_funcs", "action_hooks_nofunc", "nop_only"):
        proc = run_cli("check", COMMITTED / arch / f"{name}.livepatch", "--format", "json")
        assert proc.returncode == 0, proc.stdout
        (rep,) = json.loads(proc.stdout)["payloads"]
        assert rep["findings"] == [] and rep["error"] is None


def test_nothing_to_patch_is_still_refused(tmp_path: Path) -> None:
    """Neither .livepatch.funcs nor a hook section: Xen refuses it, so does rewrite (no output)."""
    src = tmp_path / "unhooked.livepatch"
    data = (COMMITTED / "x86_64" / "action_hooks_nofunc.livepatch").read_bytes()
    for hook in (b"preapply", b"apply", b"revert", b"postrevert"):
        name = b".livepatch.hooks." + hook + b"\0"
        assert name in data
        data = data.replace(name, name[:-2] + b"X\0")
    src.write_bytes(data)
    line = assert_one_line_error(run_cli("rewrite", src, "-o", tmp_path / "out"))
    assert "neither .livepatch.funcs nor a .livepatch.hooks.* section" in line and "Nothing to patch" in line
    assert not (tmp_path / "out").exists()
    before = src.stat().st_mtime_ns
    assert_one_line_error(run_cli("rewrite", src, "--in-place"))
    assert src.read_bytes() == data and src.stat().st_mtime_ns == before

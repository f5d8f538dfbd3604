"""Determinism: same input and options, byte-identical output, whatever the hash seed.

Every committed fixture of every architecture (plus the extended-numbering
and ``.symtab_shndx`` variants of a few), under several option sets, is
rewritten through the command line in a fresh interpreter per
``PYTHONHASHSEED`` (0, 1, a large one, and ``random``). The output files and
everything printed (text and JSON) must be identical across the runs, and a
second run on each output must change nothing. A few cases also go through
the real entry point (``python -m lp_rewrite``) under different seeds.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import COMMITTED, ROOT, load_script, run_cli

# Every input under these; the text summary and the JSON decision list are compared too.
OPTION_SETS: dict[str, list[str]] = {
    "default": [],
    "json-verbose": ["--format", "json", "-v"],
}
# These on a few fixtures per architecture (the option changes the plan, not the input handling).
MORE_OPTIONS: dict[str, list[str]] = {
    "local-aliases": ["--local-aliases"],
    "no-default-keep": ["--no-default-keep"],
    "keep-and-template": ["--keep-section", ".data*", "--rename-template", "{name}__v2"],
}
OPTION_FIXTURES = ("mutual", "static_section", "special_sections", "nonzero_offset")
SEEDS = ("0", "1", "3141592653", "random")

# Runs in a fresh interpreter: rewrites every case through the command line
# (in-process), then rewrites each output again; prints a JSON digest of all.
DRIVER = r"""
import hashlib, json, os, sys
from pathlib import Path
from typer.testing import CliRunner
from lp_rewrite.cli import app

cases = json.loads(sys.argv[1])
os.chdir(sys.argv[2])  # relative output names: what is printed is the same in every run
runner = CliRunner()
digest = {}
for case_id, (src, options) in sorted(cases.items()):
    out = case_id + ".out"
    first = runner.invoke(app, ["rewrite", src, "-o", out, *options])
    record = {"code": first.exit_code, "stdout": first.stdout, "stderr": first.stderr}
    if first.exit_code == 0:
        data = Path(out).read_bytes()
        record["sha256"] = hashlib.sha256(data).hexdigest()
        again = runner.invoke(app, ["rewrite", out, "-o", out + ".again", *options])
        record["again_code"] = again.exit_code
        record["again_identical"] = Path(out + ".again").read_bytes() == data
        record["again_says_unchanged"] = "nothing to retarget" in again.stdout or '"changed": false' in again.stdout
    digest[case_id] = record
print(json.dumps(digest, sort_keys=True))
"""


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, list[str]]]:
    fuzz = load_script("fuzz")
    variants = tmp_path_factory.mktemp("variants")
    inputs: dict[str, Path] = {}
    for path in sorted(COMMITTED.glob("*/*.livepatch")):
        inputs[f"{path.parent.name}-{path.stem}"] = path
    for arch in ("x86_64", "aarch64", "arm"):
        data = (COMMITTED / arch / "mutual.livepatch").read_bytes()
        for name, make in (("extnum", fuzz.extended_numbering), ("shndx", fuzz.with_symtab_shndx)):
            p = variants / f"{arch}-mutual-{name}.livepatch"
            p.write_bytes(make(data))
            inputs[p.stem] = p
    out: dict[str, tuple[str, list[str]]] = {}
    for stem, path in inputs.items():
        options = OPTION_SETS | (MORE_OPTIONS if stem.split("-", 1)[1] in OPTION_FIXTURES else {})
        for opt_name, opts in options.items():
            out[f"{stem}.{opt_name}"] = (str(path), opts)
    return out


def _run_drivers(cases: dict[str, tuple[str, list[str]]], tmp_path: Path) -> dict[str, dict[str, Any]]:
    """One fresh interpreter per seed, all at once."""
    procs = {}
    for seed in SEEDS:
        env = dict(os.environ)
        env["PYTHONHASHSEED"] = seed
        env.pop("LP_REWRITE_DEBUG", None)
        workdir = tmp_path / f"seed-{seed}"
        workdir.mkdir()
        procs[seed] = subprocess.Popen(
            [sys.executable, "-c", DRIVER, json.dumps(cases), str(workdir)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    runs = {}
    for seed, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        runs[seed] = json.loads(out)
    return runs


def test_output_is_identical_across_hash_seeds(cases: dict[str, tuple[str, list[str]]], tmp_path: Path) -> None:
    runs = _run_drivers(cases, tmp_path)
    reference = runs[SEEDS[0]]
    assert set(reference) == set(cases)
    rewritten = 0
    for case_id, record in reference.items():
        assert record["code"] in (0, 2), (case_id, record)
        for seed in SEEDS[1:]:
            assert runs[seed][case_id] == record, f"{case_id}: differs between PYTHONHASHSEED=0 and {seed}"
        if record["code"] == 0:
            rewritten += 1
            assert record["again_code"] == 0 and record["again_identical"], f"{case_id}: second run changed it"
            assert record["again_says_unchanged"], case_id
        else:
            # Refusals are deterministic too, and one line.
            assert len(record["stderr"].strip().splitlines()) == 1, record["stderr"]
    # Most cases rewrite; the refused ones are the error fixtures and Arm/AArch64 local aliases.
    assert rewritten >= len(cases) * 3 // 4
    # The outputs themselves are byte-identical files, not just equal digests of equal runs:
    for case_id, record in reference.items():
        if record["code"] == 0:
            outputs = {(tmp_path / f"seed-{s}" / f"{case_id}.out").read_bytes() for s in SEEDS}
            assert len(outputs) == 1
            assert hashlib.sha256(outputs.pop()).hexdigest() == record["sha256"]


@pytest.mark.parametrize("name", ["x86_64/mutual", "arm/static_section", "aarch64/keyhandler"])
def test_real_entry_point_under_different_seeds(name: str, tmp_path: Path) -> None:
    src = COMMITTED / f"{name}.livepatch"
    outputs = []
    for seed in ("0", "77", "random"):
        out = tmp_path / f"{seed}.livepatch"
        proc = run_cli("rewrite", src, "-o", out, "--format", "json", "-v", env={"PYTHONHASHSEED": seed})
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        doc.pop("output")
        outputs.append((out.read_bytes(), doc))
    assert all(o == outputs[0] for o in outputs[1:])
    # A second in-place run writes nothing: same file (inode), same mtime, and no backup even when asked for.
    done = tmp_path / "0.livepatch"
    past = done.stat().st_mtime_ns - 10**9  # a second back: a rewrite now could not keep it by chance
    os.utime(done, ns=(past, past))
    before = done.stat()
    for extra in ([], ["--backup", ".orig"]):
        again = run_cli("rewrite", done, "--in-place", *extra, env={"PYTHONHASHSEED": "5"})
        assert again.returncode == 0 and "nothing to retarget" in again.stdout, again.stderr
        after = done.stat()
        assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
        assert done.read_bytes() == outputs[0][0]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            f"{seed}.livepatch" for seed in ("0", "77", "random")
        )

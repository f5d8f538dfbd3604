"""The code base stays ruff-clean, mypy --strict clean and shellcheck-clean."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_ruff() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "lp_rewrite", "tests", "scripts"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict() -> None:
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_e2e_scripts_are_shellcheck_clean() -> None:
    """scripts/e2e/ runs as root on CI machines; shellcheck (scripts/test.sh installs it) finds what bash -n misses."""
    scripts = sorted(str(p) for p in (ROOT / "scripts" / "e2e").rglob("*") if p.is_file() and p.suffix != ".md")
    proc = subprocess.run(["shellcheck", "-x", *scripts], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

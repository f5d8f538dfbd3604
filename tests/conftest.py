"""Shared test plumbing: fixture sets, toolchains, the CLI runner, strict mode.

Every fixture test runs twice: on the objects committed in testdata/build and
on a *fresh* build made by scripts/build_fixtures.py with this machine's
compilers, so that frozen objects cannot hide a regression.

Set LP_REWRITE_NO_SKIP=1 (CI does) to turn every skip into a failure: a
missing toolchain must not silently shrink the suite.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
# scripts/ (the build scripts' toolchain facts, the fuzzer's package) is importable by the tests;
# appended, so that nothing there shadows an installed module.
if str(ROOT / "scripts") not in sys.path:
    sys.path.append(str(ROOT / "scripts"))

import toolchain  # noqa: E402 - scripts/toolchain.py, importable from here on

TESTDATA = ROOT / "testdata"
COMMITTED = TESTDATA / "build"
ARCHES = toolchain.ARCHES
BINUTILS = toolchain.PREFIX
FIXTURE_SETS = ("committed", "fresh")


def load_manifest() -> dict[str, dict[str, Any]]:
    with open(TESTDATA / "fixtures.toml", "rb") as f:
        return tomllib.load(f)["fixture"]  # type: ignore[no-any-return]


MANIFEST = load_manifest()


@dataclass(frozen=True)
class Case:
    fixture_set: str
    name: str
    arch: str

    @property
    def id(self) -> str:
        return f"{self.fixture_set}-{self.name}-{self.arch}"

    @property
    def spec(self) -> dict[str, Any]:
        return MANIFEST[self.name]

    @property
    def expected(self) -> dict[str, int]:
        return dict(self.spec.get("retarget", {}).get(self.arch, {}))


def cases(*, errors: bool = False, sets: tuple[str, ...] = FIXTURE_SETS) -> list[Case]:
    """(set, fixture, arch) combinations; ``errors`` selects the refused ones."""
    out = []
    for s in sets:
        for name, spec in MANIFEST.items():
            if ("error" in spec) != errors:
                continue
            for arch in spec.get("arches", ARCHES):
                out.append(Case(s, name, arch))
    return out


def case_params(**kw: Any) -> list[Any]:
    return [pytest.param(c, id=c.id) for c in cases(**kw)]


def have_binutils(arch: str) -> bool:
    return toolchain.have(arch, "readelf", "ld")


def load_script(name: str) -> ModuleType:
    """Import scripts/<name>.py (the build scripts are tools, not a package)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def build_fresh(tmp_path_factory: pytest.TempPathFactory, script: str) -> Path | None:
    """Run scripts/<script>.py --out TMP with this machine's compilers.

    None when a cross compiler is missing (callers skip; CI forbids skips).
    """
    fixtures = load_script("build_fixtures")
    if not all(fixtures.toolchain_available(a) for a in ARCHES):
        return None
    out = tmp_path_factory.mktemp(f"fresh-{script}")
    assert load_script(script).main(["--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def fresh_dir(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """A fresh build of every fixture, or None when a compiler is missing."""
    return build_fresh(tmp_path_factory, "build_fixtures")


@pytest.fixture
def payload_path(request: pytest.FixtureRequest, fresh_dir: Path | None) -> Path:
    """Path of the case's payload in its fixture set (the test's `case` param)."""
    case: Case = request.node.callspec.params["case"]
    if case.fixture_set == "committed":
        base = COMMITTED
    else:
        if fresh_dir is None:
            pytest.skip("cross compilers missing: cannot rebuild the fixtures (see scripts/test.sh)")
        base = fresh_dir
    path = base / case.arch / f"{case.name}.livepatch"
    assert path.exists(), f"{path} was not built"
    return path


def run_cli(*args: str | os.PathLike[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m lp_rewrite ARGS` as a user would."""
    full_env = dict(os.environ)
    full_env.pop("LP_REWRITE_DEBUG", None)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "lp_rewrite", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=300,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lp-rewrite: error: ")
    return lines[0]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and os.environ.get("LP_REWRITE_NO_SKIP") == "1" and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, but LP_REWRITE_NO_SKIP=1 forbids skips: {report.longrepr}"


# Lines for the session's closing summary, by title (tests/test_e2e.py: the
# hypervisor versions and wall times). The terminal reporter prints them
# whatever output capture hides, so CI logs always show them.
SUMMARY = pytest.StashKey[dict[str, list[str]]]()


def summary_lines(config: pytest.Config, title: str) -> list[str]:
    """The list of lines printed under ``title`` when the session ends (append to it)."""
    return config.stash.setdefault(SUMMARY, {}).setdefault(title, [])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    for title, lines in config.stash.get(SUMMARY, {}).items():
        if lines:
            terminalreporter.write_sep("-", title)
            for line in lines:
                terminalreporter.write_line(line)

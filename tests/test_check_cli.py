"""`lp-rewrite check` as CI runs it: exit codes, text/JSON/SARIF, batches, progress.

Every SARIF log written here is validated against the official OASIS
SARIF 2.1.0 schema shipped in testdata/sarif (see its README).
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs: types-jsonschema is not a dev dependency
import pytest
from elftools.elf.elffile import ELFFile

from lp_rewrite import rewrite
from lp_rewrite.check.findings import RULES
from tests.conftest import ARCHES, COMMITTED, ROOT, assert_one_line_error, run_cli

SCHEMA = json.loads((ROOT / "testdata" / "sarif" / "sarif-schema-2.1.0.json").read_text())
XEN = ROOT / "testdata" / "check"


def validate_sarif(text: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(text)
    jsonschema.Draft4Validator(SCHEMA, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER).validate(doc)
    return doc


def clean_payload(tmp_path: Path, arch: str = "x86_64", name: str = "global_refs") -> Path:
    out = tmp_path / f"{name}.{arch}.livepatch"
    rewrite(COMMITTED / arch / f"{name}.livepatch", out)
    return out


def test_exit_codes(tmp_path: Path) -> None:
    clean = clean_payload(tmp_path)
    ok = run_cli("check", clean)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.rstrip().splitlines()[-1].endswith("-> PASS (--fail-on error)")
    bad = run_cli("check", COMMITTED / "x86_64" / "global_refs.livepatch")
    assert bad.returncode == 1 and "LP001" in bad.stdout
    # A version-1 payload fails (Xen >= 4.14 refuses it); a team targeting 4.7-4.13 allows it.
    v1 = clean_payload(tmp_path, name="version1")
    refused = run_cli("check", v1)
    assert refused.returncode == 1 and "LP010" in refused.stdout
    allowed = run_cli("check", "--allow", "LP010:version-1", v1)
    assert allowed.returncode == 0, allowed.stdout
    assert (
        allowed.stdout.rstrip()
        .splitlines()[-1]
        .endswith("0 error(s), 0 warning(s), 0 note(s), 1 allowed -> PASS (--fail-on error)")
    )
    # Bad input: one line, exit 2, no report.
    junk = tmp_path / "junk.livepatch"
    junk.write_text("not a payload")
    assert "not an ELF file" in assert_one_line_error(run_cli("check", junk))
    assert "No such file" in assert_one_line_error(run_cli("check", tmp_path / "missing.livepatch"))


def test_fail_on_threshold() -> None:
    """--fail-on counts active findings at or above the level; allowed ones never count."""
    from lp_rewrite.check.batch import BatchResult
    from lp_rewrite.check.findings import PayloadReport, Severity, make

    def result(*levels: Severity, allowed: bool = False) -> BatchResult:
        findings = [make("LP002", "x", severity=level) for level in levels]
        for f in findings:
            f.suppressed = "allowed by --allow" if allowed else None
        return BatchResult([PayloadReport("p.livepatch", "x86_64", findings)], 0.0)

    codes = {
        level: [r.exit_code(level) for r in (result(), result(Severity.NOTE), result(Severity.WARNING))]
        for level in Severity
    }
    assert codes == {Severity.ERROR: [0, 0, 0], Severity.WARNING: [0, 0, 1], Severity.NOTE: [0, 1, 1]}
    assert result(Severity.ERROR).exit_code(Severity.ERROR) == 1
    assert result(Severity.ERROR, allowed=True).exit_code(Severity.NOTE) == 0


def test_incomplete_analysis_is_bad_input(tmp_path: Path) -> None:
    """An LP012 in a readable payload: the whole report, a line on stderr, exit 2 (README: exit codes)."""
    from tests.test_check_rules import _undecodable_fixup

    payload = _undecodable_fixup(tmp_path / "undecodable.livepatch")
    text = run_cli("check", payload)
    assert text.returncode == 2
    assert "LP012" in text.stdout and text.stdout.rstrip().endswith("-> FAIL (bad input) (--fail-on error)")
    assert "1 not fully checked" in text.stdout.splitlines()[-1]
    (line,) = text.stderr.splitlines()
    assert line.startswith(f"lp-rewrite: error: {payload}: the relocation decisions could not be made: .fixup+0x8")
    sarif = run_cli("check", "--format", "sarif", payload)
    assert sarif.returncode == 2
    invocation = validate_sarif(sarif.stdout)["runs"][0]["invocations"][0]
    assert invocation["executionSuccessful"] is False and ".fixup+0x8" in str(invocation["toolExecutionNotifications"])
    # In a batch the other payloads are still checked; the exit stays 2.
    clean = clean_payload(tmp_path)
    batch = run_cli("check", clean, payload)
    assert batch.returncode == 2 and "no findings" not in batch.stdout
    assert batch.stdout.splitlines()[-1].startswith("lp-rewrite check: 2 payload(s)")
    # Reviewed and allowed, it no longer makes the check incomplete.
    reviewed = run_cli("check", "--allow", "LP012:*", payload)
    assert reviewed.returncode == 0 and reviewed.stderr == "", reviewed.stdout


def test_usage_errors(tmp_path: Path) -> None:
    payload = clean_payload(tmp_path)
    assert "--allow-file" in assert_one_line_error(run_cli("check", payload, "--allow-file", tmp_path / "nope"))
    assert "names no symbol" in assert_one_line_error(run_cli("check", payload, "--allow", "LP002:"))
    notelf = tmp_path / "xen-syms"
    notelf.write_text("x")
    assert "not an ELF file" in assert_one_line_error(run_cli("check", payload, "--xen-syms", notelf))
    line = assert_one_line_error(run_cli("check", payload, "--xen-syms", XEN / "aarch64" / "xen-syms"))
    assert "an x86_64 payload" in line and "is aarch64" in line
    assert "--format" in run_cli("check", payload, "--format", "xml").stderr
    empty = tmp_path / "empty-build"
    empty.mkdir()
    assert "no *.livepatch files" in assert_one_line_error(run_cli("check", empty))


def test_text_report_is_a_table_with_one_summary(tmp_path: Path) -> None:
    proc = run_cli("check", COMMITTED / "x86_64" / "check_escape.livepatch")
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0].endswith("(x86_64): 1 finding(s), 1 allowed")
    assert lines[1].split() == ["rule", "severity", "where", "symbol"]
    assert lines[2].split() == ["LP002", "error", ".text.lp_load+0x3", "fresh_cb"]
    assert any("allowed" in ln.split()[1:2] for ln in lines if ln.startswith("  LP002"))
    assert [ln for ln in lines if ln.startswith("lp-rewrite check:")] == [lines[-1]]
    assert proc.stderr == ""


def test_json_report(tmp_path: Path) -> None:
    proc = run_cli("check", "--format", "json", COMMITTED / "arm" / "payload_only.livepatch")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert [r["id"] for r in doc["rules"]] == [r.id for r in RULES]
    (payload,) = doc["payloads"]
    assert payload["arch"] == "arm" and payload["error"] is None
    rules = sorted(f["rule"] for f in payload["findings"])
    assert rules == ["LP002", "LP002"]
    assert doc["summary"]["error"] == 2 and doc["summary"]["failed"] is True
    assert proc.stderr.startswith("lp-rewrite check: 1 payload(s)")


def _region_bytes(path: Path, section: str, offset: int) -> int:
    with open(path, "rb") as f:
        sec = ELFFile(f).get_section_by_name(section)
        assert sec is not None, f"no {section}"
        return int(sec["sh_offset"]) + offset


@pytest.mark.parametrize("arch", ARCHES)
def test_sarif_is_valid_and_points_at_the_bytes(arch: str) -> None:
    payloads = [COMMITTED / arch / n for n in ("check_xen_refs.livepatch", "check_escape.livepatch")]
    proc = run_cli("check", "--format", "sarif", "--xen-syms", XEN / arch / "xen-syms", *payloads)
    assert proc.returncode == 1, proc.stderr
    doc = validate_sarif(proc.stdout)
    run = doc["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == [r.id for r in RULES]
    assert all(r["help"]["text"] and r["defaultConfiguration"]["level"] for r in rules)
    artifacts = [a["location"]["uri"] for a in run["artifacts"]]
    assert artifacts == [
        f"testdata/build/{arch}/check_xen_refs.livepatch",
        f"testdata/build/{arch}/check_escape.livepatch",
    ]
    assert {a["location"]["uriBaseId"] for a in run["artifacts"]} == {"SRCROOT"}
    seen = set()
    for res in run["results"]:
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
        seen.add(res["ruleId"])
        phys = res["locations"][0]["physicalLocation"]
        assert run["artifacts"][phys["artifactLocation"]["index"]]["location"]["uri"] == phys["artifactLocation"]["uri"]
        where = res["locations"][0].get("logicalLocations", [{}])[0].get("name", "")
        if res["ruleId"] in ("LP001", "LP004", "LP007") and where.startswith(".text"):
            # region = section file offset + offset in the section, read independently.
            path = ROOT / phys["artifactLocation"]["uri"]
            section, _plus, off = where.rpartition("+")
            assert phys["region"]["byteOffset"] == _region_bytes(path, section, int(off, 16))
            assert phys["region"]["byteLength"] == 4
    assert {"LP001", "LP002", "LP004", "LP005", "LP006"} <= seen
    assert ("LP007" in seen) == (arch == "x86_64")  # CET-IBT is x86's
    # The symbol's logical location says what it is where the checker knows:
    # replaced and payload functions are functions; an undefined name has no kind.
    kinds = {
        (res["ruleId"], "undefined symbol" in res["message"]["text"], loc.get("kind"))
        for res in run["results"]
        for loc in res["locations"][0].get("logicalLocations", [])[1:]
    }
    assert {("LP001", False, "function"), ("LP002", False, "function"), ("LP006", False, "function")} <= kinds
    assert {("LP004", True, None), ("LP004", False, "function")} <= kinds  # an undefined name; an original
    assert {kind for rule, undefined, kind in kinds if undefined} == {None}
    suppressed = [r for r in run["results"] if "suppressions" in r]
    assert len(suppressed) == 1 and "reviewed_cb" in suppressed[0]["suppressions"][0]["justification"] + str(
        suppressed[0]["locations"]
    )


def test_batch_directory_summary_and_sarif_output_file(tmp_path: Path) -> None:
    report = tmp_path / "out" / "check.sarif"
    report.parent.mkdir()
    proc = run_cli("check", "--format", "sarif", "--output", report, COMMITTED)
    total = len(list(COMMITTED.glob("*/*.livepatch")))
    assert proc.returncode == 1
    assert proc.stdout == ""
    (summary,) = proc.stderr.splitlines()
    assert summary.startswith(f"lp-rewrite check: {total} payload(s)") and summary.endswith("-> FAIL (--fail-on error)")
    doc = validate_sarif(report.read_text())
    assert len(doc["runs"][0]["artifacts"]) == total
    assert stat.S_IMODE(report.stat().st_mode) & 0o044 == 0o044  # readable like any report
    assert sorted(p.name for p in report.parent.iterdir()) == ["check.sarif"]


def test_batch_goes_on_past_unreadable_files(tmp_path: Path) -> None:
    good = clean_payload(tmp_path)
    bad = tmp_path / "broken.livepatch"
    bad.write_bytes(b"\x7fELF" + bytes(60))
    escape = COMMITTED / "aarch64" / "payload_only.livepatch"
    proc = run_cli("check", "--format", "sarif", bad, good, escape)
    assert proc.returncode == 2
    err = proc.stderr.splitlines()
    assert err[0].startswith(f"lp-rewrite: error: {bad}: ") and err[-1].startswith("lp-rewrite check: 3 payload(s)")
    assert "1 not checked" in err[-1]
    doc = validate_sarif(proc.stdout)
    results = doc["runs"][0]["results"]
    assert [
        r["ruleId"] for r in results if r["locations"][0]["physicalLocation"]["artifactLocation"]["index"] == 0
    ] == ["LP012"]
    assert sum(r["ruleId"] == "LP002" for r in results) == 2  # the batch went on
    assert doc["runs"][0]["invocations"][0]["executionSuccessful"] is False
    text = run_cli("check", bad, good)
    assert text.returncode == 2 and f"{bad}: not checked:" in text.stdout


def _run_on_pty(args: list[str], env: dict[str, str]) -> str:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lp_rewrite", *args], stdout=subprocess.DEVNULL, stderr=slave, cwd=ROOT, env=env
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


def test_progress_bar_only_on_a_terminal_outside_ci() -> None:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    drawn = _run_on_pty(["check", str(COMMITTED)], env)
    assert "\r[" in drawn and "/" in drawn
    assert drawn.count("lp-rewrite check:") == 0  # text summary goes to stdout
    quiet = _run_on_pty(["check", str(COMMITTED)], {**env, "CI": "true"})
    assert "\r[" not in quiet
    piped = run_cli("check", "--format", "json", COMMITTED, env={"CI": ""})
    assert "\r" not in piped.stderr  # stderr not a terminal: no bar


def test_a_batch_of_a_thousand_in_one_process() -> None:
    """1,000 fixtures in one call, in-process (its rate is scripts/bench.py's to measure)."""
    from lp_rewrite.check.batch import run
    from lp_rewrite.check.run import CheckOptions

    files = sorted(COMMITTED.glob("*/*.livepatch"))
    paths = (files * (1000 // len(files) + 1))[:1000]
    result = run(paths, CheckOptions(), progress=False)
    assert len(result.reports) == 1000 and result.unreadable == 0
    # Each report is the one a single check gives: nothing is shared wrongly between payloads.
    single = {p: run([p], CheckOptions(), progress=False).reports[0] for p in files}
    for path, report in zip(paths, result.reports, strict=True):
        assert [f.rule for f in report.findings] == [f.rule for f in single[path].findings], path


def test_every_rule_is_documented_in_the_readme() -> None:
    readme = (ROOT / "docs" / "check.md").read_text()  # the README's CI gate section, moved
    section = readme[readme.index("# CI gate: lp-rewrite check") :]
    for r in RULES:
        assert f"`{r.id}`" in section and r.name in section, r.id
    assert "github/codeql-action/upload-sarif" in section and "artifacts:" in section


def test_ci_snippets_in_the_readme() -> None:
    """The GitHub job can check out a private repository, has a Python, and installs a project root."""
    readme = (ROOT / "docs" / "check.md").read_text()
    section = readme[readme.index("# CI gate: lp-rewrite check") :]
    github = section[section.index("GitHub Actions") :].split("```yaml\n", 1)[1].split("```", 1)[0]
    gitlab = section[section.index("GitLab CI") :].split("```yaml\n", 1)[1].split("```", 1)[0]
    permissions = github[github.index("permissions:") : github.index("steps:")]
    for grant in ("contents: read", "actions: read", "security-events: write"):
        assert grant in permissions, grant
    assert github.index("actions/checkout") < github.index("actions/setup-python") < github.index("pip install")
    for job in (github, gitlab):
        (install,) = [ln for ln in job.splitlines() if "pip install" in ln]
        # The package directory has no pyproject.toml: install the project root (here, by git URL).
        assert "./lp_rewrite" not in install and "git+" in install
    assert not (ROOT / "lp_rewrite" / "pyproject.toml").exists() and (ROOT / "pyproject.toml").exists()


def test_hooks_only_payload_passes_on_every_arch() -> None:
    for arch in ARCHES:
        proc = run_cli("check", COMMITTED / arch / "no_funcs.livepatch")
        assert proc.returncode == 0, proc.stdout
        assert "no findings" in proc.stdout


def test_input_is_never_modified(tmp_path: Path) -> None:
    copy = tmp_path / "p.livepatch"
    shutil.copy(COMMITTED / "x86_64" / "global_refs.livepatch", copy)
    before = copy.read_bytes()
    run_cli("check", "--format", "sarif", "-o", tmp_path / "r.sarif", copy)
    assert copy.read_bytes() == before

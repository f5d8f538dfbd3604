"""`lp-rewrite check --jobs N`: a batch checked in worker processes gives the same report.

Same reports, in the same order, with the same lines on stderr, as one
process; a worker that dies fails the batch in one line; Ctrl-C leaves no
worker behind. (The throughput is scripts/bench.py's to measure.)
"""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lp_rewrite.check import batch, workers
from lp_rewrite.check.batch import available_cpus
from lp_rewrite.check.findings import PayloadReport
from lp_rewrite.check.run import CheckOptions
from lp_rewrite.errors import LpRewriteError
from tests.conftest import COMMITTED, ROOT, TESTDATA, assert_one_line_error, run_cli

XEN = TESTDATA / "check"


def mixed_batch(tmp_path: Path) -> list[Path]:
    """Every committed payload (clean ones and ones with findings), and files that are not payloads."""
    junk = tmp_path / "junk.livepatch"
    junk.write_text("not a payload")
    fifo = tmp_path / "fifo.livepatch"
    os.mkfifo(fifo)
    payloads = sorted(TESTDATA.rglob("*.livepatch"))
    return [junk, *payloads, tmp_path / "missing.livepatch", fifo, *payloads[:5]]


@pytest.fixture(autouse=True)
def four_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process, as many workers as asked (up to 4) on any machine: the tests are about workers."""
    monkeypatch.setattr(batch, "available_cpus", lambda: 4)


def run_batch(paths: list[Path], jobs: int) -> tuple[batch.BatchResult, str]:
    stream = io.StringIO()
    result = batch.run(paths, CheckOptions(), progress=False, stream=stream, jobs=jobs)
    return result, stream.getvalue()


def test_workers_give_the_same_reports_and_lines_as_one_process(tmp_path: Path) -> None:
    paths = mixed_batch(tmp_path)
    one, one_lines = run_batch(paths, 1)
    many, many_lines = run_batch(paths, 3)
    assert many.reports == one.reports and many_lines == one_lines
    # The batch holds what a gate must report: findings, and files it could not read (in their place).
    assert sum(len(r.findings) for r in one.reports if r.error is None) > 100
    assert [r.path for r in one.reports if r.error is not None] == [str(p) for p in (paths[0], paths[-7], paths[-6])]
    assert one_lines.count("lp-rewrite: error: ") == 3


def test_the_payloads_are_checked_in_the_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Forked workers inherit the patched module: each report names the process that made it.
    monkeypatch.setattr(workers, "report_or_reason", lambda path, options: PayloadReport(str(os.getpid())))
    result, _ = run_batch(sorted(COMMITTED.glob("*/*.livepatch")), 2)
    pids = {int(r.path) for r in result.reports}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_one_payload_or_one_job_uses_no_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_workers(*args: object) -> None:
        raise AssertionError("a worker pool was started")

    monkeypatch.setattr(workers, "checked_in_workers", no_workers)
    files = sorted(COMMITTED.glob("*/*.livepatch"))
    assert len(run_batch(files[:1], 4)[0].reports) == 1
    assert len(run_batch(files, 1)[0].reports) == len(files)


def children() -> list[int]:
    """This process's child processes (a worker left unreaped would be one)."""
    return [int(pid) for pid in Path(f"/proc/self/task/{os.getpid()}/children").read_text().split()]


def test_a_worker_that_dies_fails_the_batch_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    files = sorted(COMMITTED.glob("*/*.livepatch"))

    def killed(path: Path, options: CheckOptions) -> PayloadReport:
        if path == files[3]:
            os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does
        return PayloadReport(os.fspath(path))

    monkeypatch.setattr(workers, "report_or_reason", killed)
    with pytest.raises(LpRewriteError, match=r"^a check worker process was killed by SIGKILL .*rerun with --jobs 1$"):
        run_batch(files, 2)
    assert children() == []  # the other worker is stopped and reaped


def test_a_bug_in_a_worker_is_the_internal_error_one_process_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    files = sorted(COMMITTED.glob("*/*.livepatch"))

    def buggy(path: Path, options: CheckOptions) -> PayloadReport:
        if path == files[-2]:
            raise ValueError("boom")
        return PayloadReport(os.fspath(path))

    monkeypatch.setattr(workers, "report_or_reason", buggy)
    with pytest.raises(RuntimeError, match=r"^ValueError: boom \(in a check worker\)") as caught:
        run_batch(files, 2)
    assert "in buggy" in "".join(caught.value.__notes__)  # the worker's traceback, for LP_REWRITE_DEBUG
    assert children() == []


def slow_after(first: int) -> Callable[[Path, CheckOptions], PayloadReport]:
    """A check that answers at once for files named p0..p{first-1}, an error report for 'junk',
    and takes a minute for the rest: a worker on those is stopped only by a kill."""

    def check(path: Path, options: CheckOptions) -> PayloadReport:
        if path.name == "junk":
            return PayloadReport(str(path), error="not a payload")
        if int(path.name[1:]) >= first:
            time.sleep(60)
        return PayloadReport(str(path))

    return check


def test_a_batch_cut_short_kills_its_workers_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The consumer stops (an exception in the command): closing the batch kills and reaps the workers."""
    monkeypatch.setattr(workers, "report_or_reason", slow_after(16))  # the first range: 16 files
    files = [Path(f"p{k}") for k in range(200)]
    checked = workers.checked_in_workers(files, CheckOptions(), 2)
    try:
        assert next(checked).path == "p0" and len(children()) == 2  # the other worker sleeps in p16
    finally:
        started = time.monotonic()
        checked.close()
    assert children() == [] and time.monotonic() - started < 10  # killed, not waited for


def test_a_batch_that_fails_while_it_reports_kills_its_workers_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal or a broken stderr while a line is written: run() closes the batch on the way out."""

    class Interrupting(io.StringIO):
        def write(self, text: str) -> int:
            raise KeyboardInterrupt

    monkeypatch.setattr(workers, "report_or_reason", slow_after(16))  # the first range: junk, p1..p15
    files = [Path("junk"), *(Path(f"p{k}") for k in range(1, 200))]  # junk's error line is the first write
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt) as caught:
        batch.run(files, CheckOptions(), progress=False, stream=Interrupting(), jobs=2)
    assert children() == [] and time.monotonic() - started < 10  # while the traceback still holds run()'s frame
    del caught


def test_the_cli_report_is_the_same_with_jobs(tmp_path: Path) -> None:
    reports = {}
    for jobs in ("1", "2", "0"):
        proc = run_cli("check", "--jobs", jobs, "--format", "json", COMMITTED)
        assert proc.returncode == 1, proc.stderr  # the committed inputs are not rewritten yet: LP001
        doc = json.loads(proc.stdout)
        del doc["summary"]["seconds"]
        reports[jobs] = doc
    assert reports["1"] == reports["2"] == reports["0"]
    assert "LP001" in json.dumps(reports["1"])


@pytest.mark.parametrize("arch", ["x86_64", "aarch64", "arm"])
def test_workers_share_the_loaded_xen_syms(arch: str) -> None:
    """Workers check against the command's --xen-syms: their findings are those of one process."""
    reports = []
    for jobs in ("1", "2"):
        proc = run_cli("check", "--jobs", jobs, "--xen-syms", XEN / arch / "xen-syms", "--format", "json", XEN / arch)
        assert proc.returncode == 1, proc.stderr
        doc = json.loads(proc.stdout)
        del doc["summary"]["seconds"]
        reports.append(doc)
    assert reports[0] == reports[1]
    rules = {f["rule"] for r in reports[0]["payloads"] for f in r["findings"]}
    assert {"LP004", "LP018"} <= rules  # findings only the hypervisor's symbol table can give


def test_a_negative_job_count_is_a_usage_error() -> None:
    line = assert_one_line_error(run_cli("check", "--jobs", "-1", COMMITTED))
    assert "--jobs -1" in line


def read_to_eof(fd: int, seconds: float) -> bytes:
    """Everything until every writer has closed the pipe (a worker left behind would hold it open)."""
    out = b""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([fd], [], [], left)[0], "a worker outlived the command"
        chunk = os.read(fd, 65536)
        if not chunk:
            return out
        out += chunk


@pytest.mark.parametrize(
    ("jobs", "sig", "to_group", "status", "line"),
    [
        ("1", signal.SIGINT, True, 130, "interrupted (SIGINT)"),  # Ctrl-C on a terminal: the whole group
        ("2", signal.SIGINT, True, 130, "interrupted (SIGINT)"),
        ("2", signal.SIGTERM, False, 143, "interrupted (SIGTERM)"),  # a cancelled CI job
        ("2", signal.SIGTERM, True, 143, "interrupted (SIGTERM)"),  # timeout(1), systemd: the whole group
        ("2", signal.SIGHUP, False, 129, "interrupted (SIGHUP)"),
        ("2", signal.SIGHUP, True, 129, "interrupted (SIGHUP)"),  # a terminal hung up
        ("2", signal.SIGKILL, False, -signal.SIGKILL, None),  # no word from the command, but no worker left
    ],
)
def test_a_signal_stops_the_command_and_its_workers(
    tmp_path: Path, jobs: str, sig: signal.Signals, to_group: bool, status: int, line: str | None
) -> None:
    one = tmp_path / "one"  # linked here, not the committed file: its link count is not ours to raise
    shutil.copy(COMMITTED / "x86_64" / "global_refs.livepatch", one)
    batch_dir = tmp_path / "batch"
    batch_dir.mkdir()
    for i in range(4000):  # enough work that the signal lands mid-batch
        os.link(one, batch_dir / f"p{i:04d}.livepatch")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lp_rewrite", "check", "--jobs", jobs, "--progress", "--format", "json", batch_dir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        start_new_session=True,
    )
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    assert os.read(fd, 1) + os.read(fd, 1) == b"\r["  # the first payloads are checked: the workers run
    (os.killpg if to_group else os.kill)(proc.pid, sig)
    rest = read_to_eof(fd, 30).decode()
    assert proc.wait(timeout=60) == status
    assert "Traceback" not in rest
    if line is not None:
        # The bar is erased (blanks, then a carriage return) before the one line, which starts a line.
        assert rest.endswith(f"\rlp-rewrite: error: {line}\n"), rest[-200:]
        assert rest.count("lp-rewrite: ") == 1


def test_one_job_pays_nothing_for_workers() -> None:
    """The workers' module (and its selectors, pickle, ctypes) is imported only when a batch runs in workers."""
    driver = (
        "import json, sys\n"
        "from lp_rewrite.cli import main\n"
        "sys.argv = ['lp-rewrite', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print(json.dumps([code, sorted(sys.modules)]), file=sys.stderr)\n"
    )
    files = [str(p) for p in sorted(COMMITTED.glob("x86_64/*.livepatch"))[:3]]
    for jobs, loaded in (("1", False), ("2", True)):
        proc = subprocess.run(
            [sys.executable, "-c", driver, "check", "--jobs", jobs, "--format", "json", *files],
            capture_output=True,
            text=True,
            timeout=120,
        )
        code, modules = json.loads(proc.stderr.strip().splitlines()[-1])
        assert code == 1 and json.loads(proc.stdout)["summary"]["payloads"] == 3, proc.stderr
        assert ("lp_rewrite.check.workers" in modules) is (loaded and available_cpus() > 1), jobs

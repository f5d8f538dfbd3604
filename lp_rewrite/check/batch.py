"""Checking many payloads in one process, with a progress bar and one summary.

A directory argument stands for every ``*.livepatch`` below it (sorted). A
file that cannot be read as a payload does not stop the batch: it becomes
an LP012 finding in the report, its one-line reason goes to stderr, and the
command exits 2 once everything else has been checked and reported (bad
input outranks findings). Checking a single payload is the same code with
one file; only the CLI turns that file's read error into the usual
one-line exit 2 before any report is written.

A payload that was read but that a rule could not analyse in part carries
an LP012 finding too, and exits 2 as well (with its line on stderr): the
report is then incomplete, so neither PASS nor an ordinary FAIL would be
true, and ``rewrite`` refuses the same payload as bad input. An LP012
that ``--allow`` accepts no longer counts.

The progress bar is drawn on stderr only when stderr is a terminal and the
``CI`` environment variable is unset (so CI logs get none), at most ten
times a second, and erased before the report is written.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from lp_rewrite.check.findings import UNREADABLE, Finding, PayloadReport, Severity, counts, make
from lp_rewrite.check.run import CheckOptions, report_or_reason
from lp_rewrite.errors import UsageError
from lp_rewrite.textsafe import shown

PAYLOAD_SUFFIX = ".livepatch"


@dataclass
class BatchResult:
    reports: list[PayloadReport]
    elapsed: float

    @property
    def unreadable(self) -> int:
        return sum(1 for r in self.reports if r.error is not None)

    @property
    def incomplete(self) -> int:
        """Payloads that were read, but that some rule could not analyse (an active LP012)."""
        return sum(1 for r in self.reports if r.error is None and incomplete_parts(r))

    def failed(self, fail_on: Severity) -> bool:
        return any(r.failing(fail_on) for r in self.reports)

    def exit_code(self, fail_on: Severity) -> int:
        if self.unreadable or self.incomplete:
            return 2
        return 1 if self.failed(fail_on) else 0

    def summary_line(self, fail_on: Severity) -> str:
        c = counts(f for r in self.reports for f in r.findings if r.error is None)
        n = len(self.reports)
        parts = [f"{c['error']} error(s)", f"{c['warning']} warning(s)", f"{c['note']} note(s)"]
        parts.append(f"{c['allowed']} allowed")
        if self.unreadable:
            parts.append(f"{self.unreadable} not checked")
        if self.incomplete:
            parts.append(f"{self.incomplete} not fully checked")
        verdict = {0: "PASS", 1: "FAIL", 2: "FAIL (bad input)"}[self.exit_code(fail_on)]
        return (
            f"lp-rewrite check: {n} payload(s) in {self.elapsed:.2f}s: {', '.join(parts)} "
            f"-> {verdict} (--fail-on {fail_on.value})"
        )


def incomplete_parts(report: PayloadReport) -> list[Finding]:
    """The active LP012 findings of a payload that was read: what no rule could analyse."""
    return [f for f in report.active() if f.rule.id == UNREADABLE]


def note_incomplete(report: PayloadReport, stream: TextIO) -> None:
    """One stderr line per part of a payload that could not be analysed (as for unreadable files)."""
    for f in incomplete_parts(report):
        stream.write(f"lp-rewrite: error: {shown(report.path)}: {shown(f.message)}\n")


def expand(paths: Iterable[str | os.PathLike[str]], unreadable: list[str] | None = None) -> list[Path]:
    """Files as given; directories replaced by every ``*.livepatch`` below them that is not a directory.

    A FIFO, device or dangling link named ``*.livepatch`` is listed too (reading it then fails with
    its reason). A directory the walk cannot read is appended to ``unreadable`` as a one-line reason
    (or, without that list, refused): what the gate cannot see must not pass silently.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found, errors = _walk(p)
            if errors and unreadable is None:
                raise UsageError(errors[0])
            unreadable_here = sorted(errors)
            if not found and not unreadable_here:
                # An empty build directory must not pass the gate silently.
                raise UsageError(f"{p}: no *{PAYLOAD_SUFFIX} files below this directory")
            out.extend(found)
            if unreadable is not None:
                unreadable.extend(unreadable_here)
        else:
            out.append(p)
    return out


def _walk(top: Path) -> tuple[list[Path], list[str]]:
    """The non-directories named ``*.livepatch`` below ``top`` (sorted), and why a directory could not be listed."""
    errors: list[str] = []

    def note(exc: OSError) -> None:
        errors.append(f"{exc.filename}: cannot list the directory: {exc.strerror or exc}")

    found = sorted(
        Path(where, name)
        for where, dirs, files in os.walk(top, onerror=note)
        for name in [*files, *dirs]
        if name.endswith(PAYLOAD_SUFFIX) and not os.path.isdir(os.path.join(where, name))
    )
    return found, errors


class Progress:
    """A one-line bar on a terminal; nothing anywhere else."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.last = 0.0
        self.width = 0

    @staticmethod
    def wanted(stream: TextIO) -> bool:
        return stream.isatty() and not os.environ.get("CI")

    def update(self, done: int, label: str) -> None:
        now = time.monotonic()
        if now - self.last < 0.1 and done < self.total:
            return
        self.last = now
        filled = 30 * done // max(self.total, 1)
        line = f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} {shown(label)[-40:]}"
        self.width = max(self.width, len(line))
        self.stream.write(line.ljust(self.width))
        self.stream.flush()

    def close(self) -> None:
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def run(
    paths: Sequence[str | os.PathLike[str]],
    options: CheckOptions,
    *,
    progress: bool | None = None,
    stream: TextIO | None = None,
    jobs: int = 1,
) -> BatchResult:
    """Check every payload; unreadable ones become LP012 findings (and a line on ``stream``).

    With ``jobs`` above 1 the payloads are checked in that many forked
    worker processes (0: one per CPU; never more than the CPUs); the
    reports, their order and every line on ``stream`` are the same as with one.
    """
    stream = stream or sys.stderr
    walk_errors: list[str] = []
    files = expand(paths, walk_errors)
    bar = Progress(len(files), stream) if (Progress.wanted(stream) if progress is None else progress) else None
    start = time.perf_counter()
    reports = []
    for message in walk_errors:  # a directory the walk could not read: LP012, exit 2, never a silent PASS
        stream.write(f"lp-rewrite: error: {shown(message)}\n")
        where = message.split(": cannot list", 1)[0]
        reports.append(PayloadReport(where, error=message, findings=[make(UNREADABLE, message)]))
    jobs = min(jobs or available_cpus(), available_cpus())  # checking is CPU-bound
    if min(jobs, len(files)) > 1:
        from lp_rewrite.check.workers import checked_in_workers  # its modules only when it is used

        checked = checked_in_workers(files, options, jobs)
    else:
        checked = (report_or_reason(path, options) for path in files)
    # Closed on the way out, however: the workers stop now, not when a traceback is freed;
    # the bar is erased, so that a one-line error starts its line.
    try:
        with contextlib.closing(checked):
            for n, report in enumerate(checked, 1):
                if bar is not None and (report.error is not None or incomplete_parts(report)):
                    bar.close()  # the line below must not be drawn over
                if report.error is not None:
                    stream.write(f"lp-rewrite: error: {shown(report.error)}\n")
                else:
                    note_incomplete(report, stream)
                reports.append(report)
                if bar is not None:
                    bar.update(n, report.path)
    finally:
        if bar is not None:
            bar.close()
    return BatchResult(reports, time.perf_counter() - start)

"""``lp-rewrite check``: the CI gate (findings as a table, JSON or SARIF)."""

# No `from __future__ import annotations`: typer would eval() every string
# annotation of every command on each start (~10 ms of a build hook's budget).

import enum
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from lp_rewrite.cli.shared import KeepOpt, NoDefaultKeepOpt, app, make_policy, one_line_errors


class CheckFormat(enum.StrEnum):
    text = "text"
    json = "json"
    sarif = "sarif"


class FailOn(enum.StrEnum):
    error = "error"
    warning = "warning"
    note = "note"


@app.command()
@one_line_errors
def check(
    payloads: Annotated[
        list[Path],
        typer.Argument(
            help="Payloads to check; a directory means every *.livepatch below it.", show_default=False, readable=False
        ),
    ],
    xen_syms: Annotated[
        Path | None,
        typer.Option(
            "--xen-syms",
            metavar="FILE",
            readable=False,
            help="The hypervisor's unstripped xen-syms: also check symbol resolution, trampoline room and "
            "CET-IBT landing pads.",
        ),
    ] = None,
    fmt: Annotated[CheckFormat, typer.Option("--format", help="Report format.")] = CheckFormat.text,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", readable=False, help="Write the report here (atomically) instead of stdout."),
    ] = None,
    fail_on: Annotated[
        FailOn, typer.Option("--fail-on", help="Exit 1 when a finding at or above this severity is not allowed.")
    ] = FailOn.error,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow",
            metavar="[RULE:]SYMBOL",
            help="A reviewed exception (repeatable); RULE defaults to LP002 (escaping-new-function).",
        ),
    ] = None,
    allow_file: Annotated[
        list[Path] | None,
        typer.Option(
            "--allow-file",
            metavar="FILE",
            readable=False,
            help="Reviewed exceptions, one [RULE:]SYMBOL [reason] a line.",
        ),
    ] = None,
    keep_section: KeepOpt = None,
    no_default_keep: NoDefaultKeepOpt = False,
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="Progress bar (default: on a terminal, never under CI)."),
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            "-j",
            "--jobs",
            metavar="N",
            help="Check a batch in N worker processes (0, or more than the CPUs: one per CPU); the report is the same.",
        ),
    ] = 1,
) -> None:
    """Check payloads for what would go wrong on the hypervisor; exit 1 on findings, 2 on bad input.

    Bad input: a file that is not a readable payload, or one that a rule could not analyse in
    part (LP012); the report is then written all the same, and says which.
    """
    from lp_rewrite.check import batch, render, sarif
    from lp_rewrite.check.allow import AllowList
    from lp_rewrite.check.findings import Severity
    from lp_rewrite.check.run import CheckOptions, check_payload
    from lp_rewrite.check.xen import XenImage
    from lp_rewrite.errors import UsageError
    from lp_rewrite.report import dumps
    from lp_rewrite.write import write_atomic

    if jobs < 0:
        raise UsageError(f"--jobs {jobs}: give a number of worker processes, or 0 for one per CPU")
    allowed = AllowList.build(allow or (), allow_file or ())
    xen = XenImage.load(xen_syms) if xen_syms is not None else None
    options = CheckOptions(make_policy(keep_section, no_default_keep, False, None), xen, allowed)
    if len(payloads) == 1 and not payloads[0].is_dir():
        # One payload: unreadable input is the usual one-line error and exit 2.
        start = time.perf_counter()
        report = check_payload(payloads[0], options)
        result = batch.BatchResult([report], time.perf_counter() - start)
        batch.note_incomplete(report, sys.stderr)
    else:
        result = batch.run(payloads, options, progress=progress, jobs=jobs)
    threshold = Severity(fail_on.value)
    if fmt is CheckFormat.sarif:
        text = dumps(sarif.sarif_log(result))
    elif fmt is CheckFormat.json:
        text = render.json_report(result, threshold)
    else:
        text = render.text(result, threshold)
    if output is not None:
        write_atomic(output, (text + "\n").encode(), before_rename=_readable)
    else:
        typer.echo(text)
    if output is not None or fmt is not CheckFormat.text:
        typer.echo(result.summary_line(threshold), err=True)
    sys.stdout.flush()
    raise typer.Exit(result.exit_code(threshold))


def _readable(tmp: Path) -> None:
    """A report is an ordinary file: mode 0666 less the umask, not mkstemp's 0600."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)

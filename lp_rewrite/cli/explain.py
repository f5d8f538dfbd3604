"""``lp-rewrite explain``: every relocation's decision and reason code."""

# No `from __future__ import annotations`: typer would eval() every string
# annotation of every command on each start (~10 ms of a build hook's budget).

from pathlib import Path
from typing import Annotated

import typer

from lp_rewrite.cli.shared import (
    Format,
    FormatOpt,
    KeepOpt,
    LimitsOpt,
    LocalOpt,
    NoDefaultKeepOpt,
    TemplateOpt,
    app,
    make_policy,
    one_line_errors,
)


@app.command()
@one_line_errors
def explain(
    payload: Annotated[
        Path, typer.Argument(help="The livepatch payload to explain.", show_default=False, readable=False)
    ],
    keep_section: KeepOpt = None,
    no_default_keep: NoDefaultKeepOpt = False,
    local_aliases: LocalOpt = False,
    rename_template: TemplateOpt = None,
    ignore_xen_limits: LimitsOpt = False,
    relevant: Annotated[
        bool,
        typer.Option(
            "--relevant",
            help="Only relocations that can reach a replacement's section (the text default; JSON too with it).",
        ),
    ] = False,
    show_all: Annotated[
        bool, typer.Option("--all", help="Every relocation, in text too (JSON lists every one by default).")
    ] = False,
    fmt: FormatOpt = Format.text,
) -> None:
    """Print the decisions that matter, with their reason codes (--all: every relocation's)."""
    from lp_rewrite import __version__, report
    from lp_rewrite.decide import Reason
    from lp_rewrite.errors import UsageError
    from lp_rewrite.pipeline import analyse
    from lp_rewrite.textsafe import shown

    policy = make_policy(keep_section, no_default_keep, local_aliases, rename_template, ignore_limits=ignore_xen_limits)
    if relevant and show_all:
        raise UsageError("give either --relevant or --all, not both")
    # Text shows the rows that matter unless --all; JSON, for machines, every row unless --relevant.
    everything = show_all or (fmt is Format.json and not relevant)
    a = analyse(payload, policy, everything=everything)
    if fmt is Format.json:
        typer.echo(
            report.dumps(
                {
                    "tool": "lp-rewrite explain",
                    "version": __version__,
                    "payload": a.payload.name,
                    "arch": a.payload.arch.name,
                    "replacements": report.replacement_records(a.payload, a.funcs),
                    "relocations": a.decisions.total,
                    "decisions": [report.decision_record(a.payload, a.funcs, d) for d in a.decisions],
                }
            )
        )
        return
    typer.echo(f"{shown(a.payload.name)}: {a.payload.arch.name}, {len(a.funcs.replacements)} replaced function(s)")
    if a.funcs.replacements:
        typer.echo(report.replacements_table(a.payload, a.funcs))
    typer.echo("")
    typer.echo(report.decisions_table(a.payload, a.funcs, a.decisions))
    rest = a.decisions.total - len(a.decisions.items)
    if rest:
        typer.echo(
            f"... and {rest} more relocation(s) that cannot reach a replaced function "
            f"({Reason.KEEP_NOT_REPLACED.value}): --all lists every one"
        )
    typer.echo("")
    typer.echo(report.reason_legend(d.reason for d in a.decisions))

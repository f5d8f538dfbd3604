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
        bool, typer.Option("--relevant", help="Only relocations that reach a replacement's section.")
    ] = False,
    fmt: FormatOpt = Format.text,
) -> None:
    """Print the decision for every relocation, with its reason code."""
    from lp_rewrite import report
    from lp_rewrite.pipeline import analyse
    from lp_rewrite.textsafe import shown

    policy = make_policy(keep_section, no_default_keep, local_aliases, rename_template, ignore_limits=ignore_xen_limits)
    a = analyse(payload, policy, everything=not relevant)
    if fmt is Format.json:
        typer.echo(
            report.dumps(
                {
                    "payload": a.payload.name,
                    "arch": a.payload.arch.name,
                    "replacements": report.replacement_records(a.payload, a.funcs),
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
    typer.echo("")
    typer.echo(report.reason_legend(d.reason for d in a.decisions))

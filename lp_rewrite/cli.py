"""The ``lp-rewrite`` command line.

Errors are one line on stderr: exit 2 for bad input or options, 1 for a
failed proof, 70 for an internal error (set LP_REWRITE_DEBUG=1 for the
traceback). Heavy modules are imported inside the commands that need them.
"""

from __future__ import annotations

import enum
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from lp_rewrite.errors import LpRewriteError, UsageError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Rewrite Xen livepatch payloads so stored pointers to replaced functions survive revert and unload.",
)

EXIT_INTERNAL = 70
F = TypeVar("F", bound=Callable[..., Any])


class Format(enum.StrEnum):
    text = "text"
    json = "json"


def _fail(msg: str, code: int) -> typer.Exit:
    typer.echo(f"lp-rewrite: error: {msg}", err=True)
    return typer.Exit(code)


def one_line_errors(fn: F) -> F:
    """Turn every failure into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except LpRewriteError as exc:
            raise _fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise _fail("interrupted", 130) from None
        except Exception as exc:
            if os.environ.get("LP_REWRITE_DEBUG"):
                raise
            where = f"{type(exc).__name__}: {exc}"
            raise _fail(f"internal error ({where}); rerun with LP_REWRITE_DEBUG=1 for details", EXIT_INTERNAL) from None

    return wrapper  # type: ignore[return-value]


KeepOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--keep-section",
        metavar="PATTERN",
        help="Also keep references in sections matching PATTERN (shell glob, repeatable).",
    ),
]
NoDefaultKeepOpt = Annotated[
    bool,
    typer.Option(
        "--no-default-keep",
        help="Drop the default keep list (.altinstructions, .alt_call_sites, .ex_table, .bug_frames.*, "
        "unwind tables); .livepatch.funcs is always kept.",
    ),
]
LocalOpt = Annotated[
    bool,
    typer.Option(
        "--local-aliases",
        help="Make aliases of file-scoped originals (path/file.c#foo) STB_LOCAL, for objects that still "
        "go through ld -r and prelink.",
    ),
]
TemplateOpt = Annotated[
    str | None,
    typer.Option(
        "--rename-template", metavar="TEMPLATE", help="New name of a replacement symbol; {name} is its old name."
    ),
]
FormatOpt = Annotated[Format, typer.Option("--format", help="Output format.")]


def _policy(keep: list[str] | None, no_default_keep: bool, local: bool, template: str | None) -> Any:
    from lp_rewrite.policy import DEFAULT_RENAME_TEMPLATE, Policy

    return Policy(
        keep_sections=tuple(keep or ()),
        default_keep=not no_default_keep,
        local_aliases=local,
        rename_template=template or DEFAULT_RENAME_TEMPLATE,
    )


@app.command()
@one_line_errors
def rewrite(
    payload: Annotated[Path, typer.Argument(help="The livepatch payload to rewrite.", show_default=False)],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Where to write the result.")] = None,
    in_place: Annotated[bool, typer.Option("--in-place", help="Replace the input file.")] = False,
    backup: Annotated[
        str | None,
        typer.Option("--backup", metavar="SUFFIX", help="With --in-place: keep the original as PAYLOAD+SUFFIX."),
    ] = None,
    keep_section: KeepOpt = None,
    no_default_keep: NoDefaultKeepOpt = False,
    local_aliases: LocalOpt = False,
    rename_template: TemplateOpt = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Print every decision.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing on success.")] = False,
    fmt: FormatOpt = Format.text,
) -> None:
    """Retarget references to replaced functions to the originals."""
    from lp_rewrite import report
    from lp_rewrite.pipeline import rewrite as run

    if output is None and not in_place:
        raise UsageError("say where the result goes: -o OUTPUT or --in-place")
    if output is not None and output.exists() and payload.exists() and output.samefile(payload):
        raise UsageError(f"{output} is the input file; use --in-place to rewrite it")
    policy = _policy(keep_section, no_default_keep, local_aliases, rename_template)
    result = run(payload, output, in_place=in_place, policy=policy, backup_suffix=backup)
    if fmt is Format.json:
        typer.echo(report.dumps(summary_record(result, verbose)))
        return
    if quiet:
        return
    typer.echo(summary_text(result))
    if verbose:
        typer.echo(report.decisions_table(result.payload, result.funcs, result.decisions))


def summary_record(result: Any, with_decisions: bool) -> dict[str, Any]:
    from lp_rewrite import report

    rec: dict[str, Any] = {
        "payload": result.payload.name,
        "arch": result.payload.arch.name,
        "output": str(result.written) if result.written else None,
        "changed": result.changed,
        "replacements": report.replacement_records(result.payload, result.funcs),
        "aliases": [
            {"name": a.name, "index": a.index, "reused": a.existing is not None} for a in result.plan.aliases.values()
        ],
        "renamed": {result.payload.elf.symbols.name(i): new for i, new in sorted(result.plan.renames.items())},
        "retargeted": dict(sorted(result.retargets_per_section().items())),
        "counts": {r.value: n for r, n in sorted(result.decisions.counts.items(), key=lambda kv: kv[0].value)},
    }
    if with_decisions:
        rec["decisions"] = [report.decision_record(result.payload, result.funcs, d) for d in result.decisions]
    return rec


def summary_text(result: Any) -> str:
    p = result.payload
    nrep = len(result.funcs.replacements)
    if not result.changed:
        where = (
            f"; {result.written} is a byte-identical copy" if result.written and result.written != Path(p.name) else ""
        )
        return (
            f"{p.name}: {p.arch.name}, {nrep} replaced function(s): nothing to retarget, "
            f"the payload is unchanged{where}"
        )
    per = result.retargets_per_section()
    lines = [
        f"{p.name}: {p.arch.name}, {nrep} replaced function(s), "
        f"{len(result.plan.retargets)} relocation(s) retargeted -> {result.written}",
    ]
    for alias in result.plan.aliases.values():
        how = "reused" if alias.existing is not None else "added"
        lines.append(f"  alias {alias.name} ({how}, symbol {alias.index})")
    syms = p.elf.symbols
    for i, new in sorted(result.plan.renames.items()):
        lines.append(f"  renamed {syms.name(i)} -> {new}")
    for sec, n in sorted(per.items()):
        lines.append(f"  {n:5d}  {sec}")
    return "\n".join(lines)


@app.command()
@one_line_errors
def explain(
    payload: Annotated[Path, typer.Argument(help="The livepatch payload to explain.", show_default=False)],
    keep_section: KeepOpt = None,
    no_default_keep: NoDefaultKeepOpt = False,
    local_aliases: LocalOpt = False,
    rename_template: TemplateOpt = None,
    relevant: Annotated[
        bool, typer.Option("--relevant", help="Only relocations that reach a replacement's section.")
    ] = False,
    fmt: FormatOpt = Format.text,
) -> None:
    """Print the decision for every relocation, with its reason code."""
    from lp_rewrite import report
    from lp_rewrite.pipeline import analyse

    policy = _policy(keep_section, no_default_keep, local_aliases, rename_template)
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
    typer.echo(f"{a.payload.name}: {a.payload.arch.name}, {len(a.funcs.replacements)} replaced function(s)")
    if a.funcs.replacements:
        typer.echo(report.replacements_table(a.payload, a.funcs))
    typer.echo("")
    typer.echo(report.decisions_table(a.payload, a.funcs, a.decisions))
    typer.echo("")
    typer.echo(report.reason_legend(d.reason for d in a.decisions))


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # e.g. `lp-rewrite explain x | head`
        sys.stderr.close()
        sys.exit(0)

"""``lp-rewrite rewrite``: retarget, write atomically, summarise."""

# No `from __future__ import annotations`: typer would eval() every string
# annotation of every command on each start (~10 ms of a build hook's budget).

from pathlib import Path
from typing import Annotated, Any

import typer

from lp_rewrite.cli.shared import (
    AbsoluteOpt,
    AlignNotesOpt,
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
from lp_rewrite.elf.consts import SHN_ABS
from lp_rewrite.errors import InputError, UsageError


@app.command()
@one_line_errors
def rewrite(
    payload: Annotated[
        Path, typer.Argument(help="The livepatch payload to rewrite.", show_default=False, readable=False)
    ],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", readable=False, help="Where to write the result.")
    ] = None,
    in_place: Annotated[bool, typer.Option("--in-place", help="Replace the input file.")] = False,
    backup: Annotated[
        str | None,
        typer.Option("--backup", metavar="SUFFIX", help="With --in-place: keep the original as PAYLOAD+SUFFIX."),
    ] = None,
    keep_section: KeepOpt = None,
    no_default_keep: NoDefaultKeepOpt = False,
    local_aliases: LocalOpt = False,
    rename_template: TemplateOpt = None,
    ignore_xen_limits: LimitsOpt = False,
    absolute: AbsoluteOpt = False,
    align_notes: AlignNotesOpt = False,
    xen_syms: Annotated[
        Path | None,
        typer.Option(
            "--xen-syms",
            metavar="FILE",
            readable=False,
            help="The hypervisor's xen-syms: looks up absolute aliases and cross-checks literal old_addr values; "
            "with --verify, the symbol table both payloads are loaded against.",
        ),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Prove the output with the verify certificate (both loaded the way Xen loads them, against "
            "--xen-syms or a synthetic table) before it is renamed into place.",
        ),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="Print every relocation's decision (as explain does).")
    ] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing on success.")] = False,
    fmt: FormatOpt = Format.text,
) -> None:
    """Retarget references to replaced functions to the originals."""
    from lp_rewrite.pipeline import rewrite as run

    if output is None and not in_place:
        raise UsageError("say where the result goes: -o OUTPUT or --in-place")
    if output is not None and output.exists() and payload.exists() and output.samefile(payload):
        raise UsageError(f"{output} is the input file; use --in-place to rewrite it")
    if xen_syms is not None and not xen_syms.is_file():
        raise InputError(f"--xen-syms {xen_syms}: no such file")
    policy = make_policy(
        keep_section,
        no_default_keep,
        local_aliases,
        rename_template,
        ignore_limits=ignore_xen_limits,
        absolute=absolute,
        xen_syms=xen_syms,
        align_notes=align_notes,
    )
    certify = None
    if verify:
        from lp_rewrite.cli.verify import CertificateHook

        certify = CertificateHook(policy, xen_syms, str(output or payload))
    result = run(
        payload,
        output,
        in_place=in_place,
        policy=policy,
        backup_suffix=backup,
        before_rename=certify,
        everything=verbose,  # -v prints every relocation's decision, as explain does
    )
    proof = certify.certificate if certify is not None else None
    # The report module is imported only where it is used: a quiet run (a build hook's) needs none of it.
    if fmt is Format.json:
        from lp_rewrite import report

        typer.echo(report.dumps(summary_record(result, verbose) | ({"certificate": proof.record()} if proof else {})))
        return
    if quiet:
        return
    if verbose:
        from lp_rewrite import __version__

        typer.echo(f"lp-rewrite {__version__}")
    typer.echo(summary_text(result, everything=verbose))
    if proof is not None:
        typer.echo(proof.text().splitlines()[-1])
    if verbose:
        from lp_rewrite import report

        typer.echo(report.decisions_table(result.payload, result.funcs, result.decisions))


def summary_record(result: Any, with_decisions: bool) -> dict[str, Any]:
    from lp_rewrite import __version__, report

    rec: dict[str, Any] = {
        "tool": "lp-rewrite rewrite",
        "version": __version__,
        "payload": result.payload.name,
        "arch": result.payload.arch.name,
        "output": str(result.written) if result.written else None,
        "changed": result.changed,
        "why_unchanged": result.why_unchanged,
        "replacements": report.replacement_records(result.payload, result.funcs),
        "aliases": [
            {"name": a.name, "index": a.index, "reused": a.existing is not None}
            | ({"absolute": a.value} if a.shndx == SHN_ABS else {})
            for a in result.plan.aliases.values()
        ],
        "renamed": {result.payload.elf.symbols.name(i): new for i, new in sorted(result.plan.renames.items())},
        "aligned_notes": {result.payload.elf.sections.name(i): a for i, a in sorted(result.plan.addralign.items())},
        "retargeted": dict(sorted(result.retargets_per_section().items())),
        "counts": {r.value: n for r, n in sorted(result.decisions.counts.items(), key=lambda kv: kv[0].value)},
    }
    if with_decisions:
        rec["decisions"] = [report.decision_record(result.payload, result.funcs, d) for d in result.decisions]
    return rec


# Lines of each kind (aliases, renames, sections) the default summary shows; -v shows every one.
SUMMARY_EXAMPLES = 5


def _bounded(lines: list[str], noun: str, limit: int | None) -> list[str]:
    """``lines``, or the first ``limit`` of them and a line counting the rest."""
    if limit is None or len(lines) <= limit:
        return lines
    return [*lines[:limit], f"  ... and {len(lines) - limit} more {noun} (-v for all)"]


def summary_text(result: Any, everything: bool = False) -> str:
    """The summary: counts, then a few examples of each kind of edit (``everything``: every one)."""
    from lp_rewrite.textsafe import shown  # imported here: a quiet run prints no summary

    limit = None if everything else SUMMARY_EXAMPLES
    p = result.payload
    nrep = len(result.funcs.replacements)
    if not result.changed:
        where = (
            f"; {result.written} is a byte-identical copy" if result.written and result.written != Path(p.name) else ""
        )
        return shown(  # one line: every name in it is shown escaped (lp_rewrite.textsafe)
            f"{p.name}: {p.arch.name}, {nrep} replaced function(s): nothing to retarget "
            f"({result.why_unchanged}), the payload is unchanged{where}"
        )
    per = result.retargets_per_section()
    aliases = list(result.plan.aliases.values())
    lines = [
        f"{p.name}: {p.arch.name}, {nrep} replaced function(s), "
        f"{len(result.plan.retargets)} relocation(s) retargeted in {len(per)} section(s), "
        f"{len(aliases)} alias(es), {len(result.plan.renames)} symbol(s) renamed -> {result.written}",
    ]
    alias_lines = []
    for alias in aliases:
        how = "reused" if alias.existing is not None else "added"
        if alias.shndx == SHN_ABS:
            how += f", absolute {alias.value:#x}"
        alias_lines.append(f"  alias {alias.name} ({how}, symbol {alias.index})")
    lines += _bounded(alias_lines, "alias(es)", limit)
    syms = p.elf.symbols
    renames = [f"  renamed {syms.name(i)} -> {new}" for i, new in sorted(result.plan.renames.items())]
    lines += _bounded(renames, "renamed symbol(s)", limit)
    # By name with -v; else the sections with the most retargets first.
    order = sorted(per.items()) if everything else sorted(per.items(), key=lambda kv: (-kv[1], kv[0]))
    lines += _bounded([f"  {n:5d}  {sec}" for sec, n in order], "section(s)", limit)
    secs = p.elf.sections
    for i, align in sorted(result.plan.addralign.items()):
        lines.append(f"  aligned {secs.name(i)}: sh_addralign {secs.addralign[i]} -> {align} (--align-notes)")
    return "\n".join(map(shown, lines))  # each line's names shown escaped

"""``lp-rewrite verify``: the certificate that a rewritten payload is the original, retargeted.

Both payloads are loaded the way Xen loads them, at the same address against
the same symbol table, and every loaded byte is compared (see
:mod:`lp_rewrite.certificate`). Exit 0 with the certificate, 1 naming the
first difference, 2 when the original itself cannot be loaded or analysed.
"""

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
from lp_rewrite.errors import UsageError, VerificationError

XenSymsOpt = Annotated[
    Path | None,
    typer.Option(
        "--xen-syms",
        metavar="FILE",
        readable=False,
        help="Resolve symbols against this xen-syms (globals by name, statics as path/file.c#name); "
        "default: a synthetic table giving every name its own address.",
    ),
]
BaseOpt = Annotated[
    str | None,
    typer.Option("--base", metavar="ADDR", help="Load the payloads at ADDR (page-aligned; default: after the table)."),
]


def symbol_table(xen_syms: Path | None) -> Any:
    """The table the certificate resolves against (None: synthetic, built from the payloads)."""
    if xen_syms is None:
        return None
    from lp_rewrite.xensyms import XenSymbols

    return XenSymbols.from_xen_syms(xen_syms)


class CertificateHook:
    """``rewrite --verify``: certify the written file before it is renamed into place."""

    def __init__(self, policy: Any, xen_syms: Path | None, label: str) -> None:
        self.policy = policy
        self.xen_syms = xen_syms
        self.label = label  # the destination's name (the file checked is its temporary twin)
        self.certificate: Any = None

    def __call__(self, original: Any, written: Path) -> None:
        from lp_rewrite.certificate import certify

        self.certificate = certify(
            original,
            written.read_bytes(),
            table=symbol_table(self.xen_syms),
            policy=self.policy,
            rewritten_name=self.label,
        )


def parse_base(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text, 0)
    except ValueError:
        raise UsageError(f"--base {text!r} is not a number") from None
    if value < 0 or value % 4096:
        raise UsageError(f"--base {value:#x} is not a page-aligned address")
    return value


@app.command()
@one_line_errors
def verify(
    original: Annotated[Path, typer.Argument(help="The payload as built.", show_default=False, readable=False)],
    rewritten: Annotated[
        Path, typer.Argument(help="The rewritten payload to prove.", show_default=False, readable=False)
    ],
    xen_syms: XenSymsOpt = None,
    base: BaseOpt = None,
    keep_section: KeepOpt = None,
    no_default_keep: NoDefaultKeepOpt = False,
    local_aliases: LocalOpt = False,
    rename_template: TemplateOpt = None,
    absolute: AbsoluteOpt = False,
    align_notes: AlignNotesOpt = False,
    ignore_xen_limits: LimitsOpt = False,
    fmt: FormatOpt = Format.text,
) -> None:
    """Prove REWRITTEN loads exactly like ORIGINAL except for the required retargets.

    Pass the options REWRITTEN was made with: the keep list decides which sites
    must be retargeted, and a payload Xen refuses both before and after the
    rewrite is proven by being byte for byte the rewrite of ORIGINAL.
    """
    from lp_rewrite import __version__, report
    from lp_rewrite.certificate import certify

    tool = {"tool": "lp-rewrite verify", "version": __version__}
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
    table = symbol_table(xen_syms)
    try:
        cert = certify(original, rewritten, table=table, base=parse_base(base), policy=policy)
    except VerificationError as exc:
        if fmt is Format.json:
            typer.echo(
                report.dumps(
                    tool
                    | {"verified": False, "original": str(original), "rewritten": str(rewritten), "error": str(exc)}
                )
            )
            raise typer.Exit(exc.exit_code) from None
        raise
    if fmt is Format.json:
        typer.echo(report.dumps(tool | cert.record()))
    else:
        typer.echo(cert.text())

"""The ``lp-rewrite`` command line: the Typer app and what every command shares.

Errors are one line on stderr: exit 2 for bad input or options, 1 for a
failed proof, 70 for an internal error (set LP_REWRITE_DEBUG=1 for the
traceback). Heavy modules are imported inside the commands that need them.
"""

# No `from __future__ import annotations`: typer would eval() every string
# annotation of every command on each start (~10 ms of a build hook's budget).

import atexit
import contextlib
import enum
import functools
import gc
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from lp_rewrite.errors import LpRewriteError

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


def one_line(msg: str) -> str:
    """``msg`` safe for a terminal, on one line: names in a payload may hold a newline or an
    escape sequence (:func:`lp_rewrite.textsafe.shown`, the escaping every renderer uses)."""
    from lp_rewrite.textsafe import shown

    return shown(msg)


def _os_error(exc: OSError) -> str:
    """An OS error as its file and reason (the file may be gone, or changing, under the tool)."""
    where = f"{exc.filename}: " if exc.filename is not None else ""
    return f"{where}{exc.strerror or exc}"


def _fail(msg: str, code: int) -> typer.Exit:
    typer.echo(f"lp-rewrite: error: {one_line(msg)}", err=True)
    return typer.Exit(code)


def _tolerant_streams() -> None:
    """Names in a payload are bytes, decoded with surrogateescape so that they
    round-trip; one that is not UTF-8 must print escaped, not fail the command."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(Exception):
                reconfigure(errors="backslashreplace")


def one_line_errors(fn: F) -> F:
    """Turn every failure into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _tolerant_streams()
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except LpRewriteError as exc:
            raise _fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt as exc:
            # SIGINT, or SIGTERM/SIGHUP caught while writing (write.Interrupted): 128 + signal.
            signum = getattr(exc, "signum", 2)
            raise _fail(f"interrupted ({str(exc) or 'SIGINT'})", 128 + signum) from None
        except OSError as exc:  # the system refused, or a file changed under the tool: never a bug (exit 70)
            raise _fail(_os_error(exc), 2) from None
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
        "unwind tables); .livepatch.funcs and the .livepatch.hooks.* sections are always kept.",
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


LimitsOpt = Annotated[
    bool,
    typer.Option(
        "--ignore-xen-limits",
        help="Process objects beyond what Xen's loader accepts (1024 sections): intermediate objects, stress tests.",
    ),
]


AbsoluteOpt = Annotated[
    bool,
    typer.Option(
        "--absolute",
        help="Make every alias SHN_ABS, holding the original's address (prelinked payloads; automatic "
        "where old_addr holds a literal). Needs --xen-syms unless every old_addr is a literal.",
    ),
]


AlignNotesOpt = Annotated[
    bool,
    typer.Option(
        "--align-notes",
        help="Raise sh_addralign of the notes Xen reads (.livepatch.depends, .livepatch.xen_depends, "
        ".note.gnu.build-id) to 4, contents unchanged: objcopy --add-section makes them 1, and 32-bit Arm "
        "Xen faults reading a misaligned one (check rule LP016).",
    ),
]


def make_policy(
    keep: list[str] | None,
    no_default_keep: bool,
    local: bool,
    template: str | None,
    *,
    ignore_limits: bool = False,
    absolute: bool = False,
    xen_syms: Path | None = None,
    align_notes: bool = False,
) -> Any:
    """The Policy of the rewrite options (every command that rewrites, or judges a rewrite, takes them)."""
    from lp_rewrite.policy import DEFAULT_RENAME_TEMPLATE, Policy

    return Policy(
        keep_sections=tuple(keep or ()),
        default_keep=not no_default_keep,
        local_aliases=local,
        rename_template=template or DEFAULT_RENAME_TEMPLATE,
        xen_limits=not ignore_limits,
        absolute=absolute,
        xen_syms=xen_syms,
        align_notes=align_notes,
    )


# Each command's module. Typer builds a click command for every registered
# one on each start, so a run imports (registers) only the command it runs.
COMMANDS = {
    "rewrite": "lp_rewrite.cli.rewrite",
    "explain": "lp_rewrite.cli.explain",
    "check": "lp_rewrite.cli.check",
    "verify": "lp_rewrite.cli.verify",
}


def _print_version(value: bool) -> None:
    if value:
        from lp_rewrite import __version__

        typer.echo(f"lp-rewrite {__version__}")
        raise typer.Exit()


@app.callback()
def _commands(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit."),
    ] = False,
) -> None:
    # A group even when one command is registered: typer would otherwise run
    # a lone command without its name.
    pass


def register(names: Iterable[str] | None = None) -> typer.Typer:
    """Register these commands (all when None) on the app, and return it."""
    import importlib

    for name in COMMANDS if names is None else names:
        importlib.import_module(COMMANDS[name])
    return app


def _click_exceptions() -> Any:
    """click's exception module, wherever this typer takes click from (0.28 vendors it as typer._click)."""
    import importlib

    try:
        return importlib.import_module("typer._click.exceptions")
    except ImportError:
        return importlib.import_module("click.exceptions")


def _skip_the_final_collections() -> None:
    """At interpreter exit, after the command: move every object to the permanent generation.

    The collector's passes at shutdown then skip the heap (typer's modules and ours,
    ~20k objects: about 15 ms of a realistic rewrite's start-to-exit). Objects are
    still freed and the standard streams flushed; only cyclic garbage is left to the
    OS, and the command has written and closed its files by then.
    """
    gc.freeze()


def main() -> None:
    # At exit only (atexit), so a program that calls main() in-process keeps its collector.
    atexit.unregister(_skip_the_final_collections)  # once, however often main() runs
    atexit.register(_skip_the_final_collections)
    args = sys.argv[1:]
    if args != ["--version"]:  # eager: it prints and exits before a command is looked up, so it needs none
        register(args[:1] if args[:1] and args[0] in COMMANDS else None)  # --help, typos: every command
    clicks = _click_exceptions()
    no_args = getattr(clicks, "NoArgsIsHelpError", ())
    try:
        code = app(standalone_mode=False)
    except BrokenPipeError:  # e.g. `lp-rewrite explain x | head`
        sys.stderr.close()
        sys.exit(0)
    except no_args as exc:  # bare `lp-rewrite`: the help, as before
        exc.show()
        sys.exit(exc.exit_code)
    except clicks.ClickException as exc:
        # Unknown option, missing argument, bad choice: one line and exit 2, like every other
        # bad input (click would print a box of usage and help, before the tool could say anything).
        _tolerant_streams()
        ctx = getattr(exc, "ctx", None)
        where = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        typer.echo(f"lp-rewrite: error: {one_line(exc.format_message())}{where}", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("lp-rewrite: error: aborted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)

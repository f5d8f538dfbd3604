"""The contract under test: one input through ``explain``, ``check``, ``rewrite`` and the certificate, in-process."""

from __future__ import annotations

import contextlib
import io
import re
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any


class Hang(BaseException):
    """Raised by the CPU-time watchdog (a BaseException: no `except Exception` may swallow it)."""


@dataclass
class Outcome:
    # "ok" (exit 0), "refused" (exit 2) or "crash" (anything else, a certificate
    # disagreeing with an accepted rewrite included).
    kind: str
    site: str = ""
    detail: str = ""
    # For "ok": CERTIFIED, XEN_REFUSES (the certificate refused the original as
    # Xen's loader would) or "" (no certificate: --no-certify, or none in this tree).
    proof: str = ""


CERTIFIED = "certified"
XEN_REFUSES = "xen-refuses"


class Target:
    """The pipeline under test, imported once (optionally under atheris' instrumentation)."""

    POLICY_SPECS: tuple[dict[str, Any], ...] = (
        {},
        {"local_aliases": True},
        {"local_aliases": True, "linker_check": False},
        {"default_keep": False},
        {"keep_sections": (".text*", ".data*")},
        {"rename_template": "__new_{name}"},
        {"xen_limits": False},  # --ignore-xen-limits
    )

    def __init__(self, modules: dict[str, ModuleType], certify: bool = True) -> None:
        self.pipeline = modules["lp_rewrite.pipeline"]
        self.report = modules["lp_rewrite.report"]
        self.cli_rewrite = modules["lp_rewrite.cli.rewrite"]
        self.errors = modules["lp_rewrite.errors"]
        self.one_line = modules["lp_rewrite.cli.shared"].one_line  # how the command line prints an error
        policy = modules["lp_rewrite.policy"].Policy
        self.policies = []
        for spec in self.POLICY_SPECS:
            with contextlib.suppress(TypeError):  # an option this tree does not have
                self.policies.append(policy(**spec))
        certificate = modules.get("lp_rewrite.certificate")
        self.certify = certificate.certify if certificate is not None and certify else None
        gate: tuple[str, ...] = ("lp_rewrite.check.run", "lp_rewrite.check.render", "lp_rewrite.check.batch")
        gate += ("lp_rewrite.check.sarif", "lp_rewrite.check.findings")
        self.gate = [modules[n] for n in gate] if all(n in modules for n in gate) else None

    @staticmethod
    def import_modules() -> dict[str, ModuleType]:
        import importlib
        import pkgutil

        # What Target uses; the pipeline brings every stage with it (reader, ELF layer, self-check), so that
        # a module's name here does not follow the package's layout. The arch modules load lazily: all of them.
        names = [
            "lp_rewrite.errors",
            "lp_rewrite.policy",
            "lp_rewrite.pipeline",
            "lp_rewrite.report",
            "lp_rewrite.cli.shared",
            "lp_rewrite.cli.rewrite",
            "lp_rewrite.arch",
        ]
        arch = importlib.import_module("lp_rewrite.arch")
        names += sorted(f"lp_rewrite.arch.{m.name}" for m in pkgutil.iter_modules(arch.__path__))
        modules = {n: importlib.import_module(n) for n in names}
        # The `verify` certificate (the Xen-semantics loader) and the `check` gate, where the tree has them.
        for optional in ("lp_rewrite.certificate", "lp_rewrite.check.run", "lp_rewrite.check.render"):
            with contextlib.suppress(ImportError):
                modules[optional] = importlib.import_module(optional)
        with contextlib.suppress(ImportError):
            for name in ("lp_rewrite.check.batch", "lp_rewrite.check.sarif", "lp_rewrite.check.findings"):
                modules[name] = importlib.import_module(name)
        return modules

    def _explain(self, data: bytes, policy: Any) -> None:
        a = self.pipeline.analyse(data, policy, everything=True)
        report = self.report
        report.dumps(
            {
                "replacements": report.replacement_records(a.payload, a.funcs),
                "decisions": [report.decision_record(a.payload, a.funcs, d) for d in a.decisions],
            }
        )
        report.replacements_table(a.payload, a.funcs)
        report.decisions_table(a.payload, a.funcs, a.decisions)
        report.reason_legend(d.reason for d in a.decisions)

    def _check(self, data: bytes, policy: Any) -> None:
        """`check` (the CI gate): findings are its normal exit 1; only a refusal or a crash matters here."""
        assert self.gate is not None
        run, render, batch, sarif, findings = self.gate
        result = batch.BatchResult([run.check_payload(data, run.CheckOptions(policy))], 0.0)
        threshold = findings.Severity.ERROR
        render.text(result, threshold)
        render.json_report(result, threshold)
        self.report.dumps(sarif.sarif_log(result))
        result.exit_code(threshold)

    def _rewrite(self, data: bytes, policy: Any) -> Any:
        result = self.pipeline.rewrite(data, policy=policy)
        if not result.changed and result.output != data:
            return "unchanged payload is not byte-identical"
        self.cli_rewrite.summary_text(result)
        self.cli_rewrite.summary_record(result, True)
        unreadable = independent_reader_refuses(result.output)
        if unreadable and unreadable != independent_reader_refuses(data):
            return f"pyelftools cannot read the output, but reads the input: {unreadable.partition(':')[0]}"
        again = self.pipeline.rewrite(result.output, policy=policy)
        if again.changed or again.output != result.output:
            return "second run is not a no-op"
        return result

    def _guard(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Outcome | None, Any]:
        """(None, value) when ``fn`` returns; else the outcome of what it raised."""
        try:
            return None, fn(*args, **kwargs)
        except self.errors.LpRewriteError as exc:
            msg = self.one_line(str(exc))
            if exc.exit_code != 2:
                return _crash(exc, f"exit {exc.exit_code}"), None
            if not msg.strip() or "\n" in msg or "\r" in msg:
                return Outcome("crash", "multi-line or empty message", repr(msg)), None
            return Outcome("refused", detail=msg), None
        except Hang as exc:
            return _crash(exc, "hang"), None
        except MemoryError as exc:
            return _crash(exc, "memory"), None
        except RecursionError as exc:
            return _crash(exc, "recursion"), None
        except Exception as exc:
            return _crash(exc, "exception"), None

    def run(self, data: bytes) -> Outcome:
        policy = self.policies[zlib.crc32(data) % len(self.policies)]
        explained, _ = self._guard(self._explain, data, policy)
        if explained is not None and explained.kind == "crash":
            return explained
        if self.gate is not None:
            checked, _ = self._guard(self._check, data, policy)
            if checked is not None and checked.kind == "crash":
                return checked
        rewritten, result = self._guard(self._rewrite, data, policy)
        if rewritten is not None:
            return rewritten
        if isinstance(result, str):
            return Outcome("crash", result)
        if self.certify is None:
            return Outcome("ok")
        return self._certified(data, result.output, policy)

    def _certified(self, data: bytes, output: bytes, policy: Any) -> Outcome:
        """`rewrite --verify`: every accepted rewrite (changed or not) must be certified."""
        assert self.certify is not None
        certified, _ = self._guard(self.certify, data, output, policy=policy)
        if certified is None:
            return Outcome("ok", proof=CERTIFIED)
        if certified.kind == "refused":
            # Exit 2 means the ORIGINAL does not load (then `rewrite --verify` exits 2):
            # certifying the original against itself must refuse it with the same message.
            alone, _ = self._guard(self.certify, data, data, policy=policy)
            if alone is None or alone.kind != "refused" or alone.detail != certified.detail:
                why = f"certify(original, output) refused: {certified.detail}\ncertify(original, original): "
                why += "accepted" if alone is None else f"{alone.kind} {alone.site} {alone.detail}"
                return Outcome("crash", "certificate: refuses the output, not the original", why)
            return Outcome("ok", proof=XEN_REFUSES)
        if certified.site.startswith("exit 1: VerificationError"):
            # One site per shape of message: the same disagreement on other bytes counts once.
            message = certified.detail.strip().splitlines()[-1]
            shape = re.sub(_VARYING, "#", message.partition("rewrite: ")[2])
            where = certified.site.split(" at ")[1]
            site = f"certificate disagrees at {where}: {shape[:90]}".encode("utf-8", "backslashreplace").decode()
            return Outcome("crash", site, certified.detail)
        return certified


def independent_reader_refuses(output: bytes) -> str:
    """Why pyelftools (a second, independent ELF reader) cannot build every non-empty section of ``output``,
    or '' (tests/test_fuzz.py holds accepted rewrites to this too).

    An accepted rewrite must be as whole to any reader as its input was
    (whose contents we carry over, e.g. a damaged .ARM.attributes that Xen
    never reads).
    """
    from elftools.common.exceptions import ELFError
    from elftools.construct import ConstructError
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(io.BytesIO(output))
        for i in range(elf.num_sections()):
            # Not an empty one: pyelftools parses some types (.ARM.attributes)
            # from the offset without looking at the size, reading the next section.
            if elf._get_section_header(i)["sh_size"]:
                elf.get_section(i)
    except (ELFError, ConstructError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


# What varies between two instances of one disagreement: numbers, hex bytes, names, asides.
_VARYING = re.compile(r"0x[0-9a-f]+|\b[0-9a-f]{4,}\b|\d+|'[^']*'|\([^)]*\)")


def _crash(exc: BaseException, what: str) -> Outcome:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/lp_rewrite/" in f.filename]
    top = (ours or frames)[-1] if frames else None
    where = f"{Path(top.filename).name}:{top.lineno} {top.name}" if top else "?"
    return Outcome("crash", f"{what}: {type(exc).__name__} at {where}", "".join(traceback.format_exception(exc)))

"""``check`` reports as a readable table or as JSON.

Text lists, per payload with anything to say, one row per finding (rule,
severity, place, symbol, message) and ends with the one summary line. JSON
carries the same records plus the rule table, for tools that do not read
SARIF.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

from lp_rewrite import __version__
from lp_rewrite.check.batch import BatchResult
from lp_rewrite.check.findings import RULES, PayloadReport, Severity, counts
from lp_rewrite.report import dumps
from lp_rewrite.textsafe import shown

_HEADER = ("rule", "severity", "where", "symbol")


def _table(report: PayloadReport) -> str:
    """Aligned rule/severity/where/symbol rows, each followed by its wrapped message (names shown escaped)."""
    rows = [
        (f.rule.id, "allowed" if f.suppressed else f.severity.value, shown(f.where), shown(f.symbol or "-"))
        for f in report.findings
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(_HEADER)]
    lines = ["  " + "  ".join(h.ljust(w) for h, w in zip(_HEADER, widths, strict=True)).rstrip()]
    for row, f in zip(rows, report.findings, strict=True):
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        message = shown(f.message + (f" [{f.suppressed}]" if f.suppressed else ""))
        lines += textwrap.wrap(message, _WRAP, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


_WRAP = 110


def text(result: BatchResult, fail_on: Severity) -> str:
    blocks = []
    for rep in result.reports:
        if rep.error is not None:
            reason = rep.error.removeprefix(f"{rep.path}: ")
            blocks.append(f"{shown(rep.path)}: not checked: {shown(reason)}")
            continue
        if not rep.findings:
            if len(result.reports) == 1:
                blocks.append(f"{shown(rep.path)} ({rep.arch or 'not read'}): no findings")
            continue
        active = len(rep.active())
        head = f"{shown(rep.path)} ({rep.arch or 'not read'}): {active} finding(s)"
        if active != len(rep.findings):
            head += f", {len(rep.findings) - active} allowed"
        blocks.append(head + "\n" + _table(rep))
    blocks.append(result.summary_line(fail_on))
    return "\n\n".join(blocks)


def rule_records() -> list[dict[str, Any]]:
    return [
        {"id": r.id, "name": r.name, "severity": r.severity.value, "summary": r.summary, "help": r.help} for r in RULES
    ]


def json_report(result: BatchResult, fail_on: Severity) -> str:
    payloads: Sequence[PayloadReport] = result.reports
    doc = {
        "tool": "lp-rewrite check",
        "version": __version__,
        "fail_on": fail_on.value,
        "rules": rule_records(),
        "payloads": [
            {
                "path": rep.path,
                "arch": rep.arch,
                "error": rep.error,
                "findings": [f.record() for f in rep.findings],
            }
            for rep in payloads
        ],
        "summary": {
            "payloads": len(payloads),
            "unreadable": result.unreadable,
            **counts(f for rep in payloads for f in rep.findings),
            "failed": result.failed(fail_on),
            "seconds": round(result.elapsed, 3),
        },
    }
    return dumps(doc)

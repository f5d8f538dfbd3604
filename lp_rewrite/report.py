"""Render the decision list: a readable table, or JSON for machines.

Both forms come from :class:`lp_rewrite.decide.Decision` objects, so what
``explain`` shows, what ``rewrite -v`` prints and what JSON carries can never
disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from lp_rewrite.decide import Decision, Reason
from lp_rewrite.identify import FuncsTable
from lp_rewrite.read import Payload, symbol_label
from lp_rewrite.textsafe import for_json, shown


def _target(payload: Payload, funcs: FuncsTable, d: Decision) -> str:
    if d.target_section is None or d.target_offset is None:
        return symbol_label(payload, d.symbol) + (f"{d.addend:+#x}" if d.addend else "")
    sec = payload.elf.sections[d.target_section].name
    text = f"{sec}+{d.target_offset:#x}"
    if d.replacement is not None:
        rep = funcs.replacements[d.replacement]
        where = "entry" if d.target_offset == rep.offset else f"body+{d.target_offset - rep.offset:#x}"
        text += f" ({rep.original} {where})"
    return text


def decision_record(payload: Payload, funcs: FuncsTable, d: Decision) -> dict[str, Any]:
    elf = payload.elf
    rec: dict[str, Any] = {
        "section": elf.sections[d.section].name,
        "offset": d.offset,
        "reloc_section": elf.sections[d.reloc_section].name,
        "index": d.index,
        "type": payload.arch.type_name(d.rtype),
        "symbol": symbol_label(payload, d.symbol),
        "symbol_index": d.symbol,
        "addend": d.addend,
        "target": _target(payload, funcs, d),
        "decision": "retarget" if d.retarget else "keep",
        "reason": d.reason.value,
    }
    if d.replacement is not None:
        rec["original"] = funcs.replacements[d.replacement].original
    return rec


def replacement_records(payload: Payload, funcs: FuncsTable) -> list[dict[str, Any]]:
    elf = payload.elf
    return [
        {
            "entry": r.entry,
            "original": r.original,
            "replacement": f"{elf.sections[r.section].name}+{r.offset:#x}",
            "symbol": symbol_label(payload, r.new_symbol),
            "size": r.size,
        }
        for r in funcs.replacements
    ]


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """A plain aligned text table (no colour: it is read in logs too); cells are shown escaped."""
    rows = [[shown(c) for c in row] for row in rows]
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def decisions_table(payload: Payload, funcs: FuncsTable, decisions: Iterable[Decision]) -> str:
    header = ("section", "offset", "type", "symbol", "target", "decision", "reason")
    rows = []
    for d in decisions:
        r = decision_record(payload, funcs, d)
        rows.append((r["section"], f"{d.offset:#x}", r["type"], r["symbol"], r["target"], r["decision"], r["reason"]))
    return table(rows, header)


def replacements_table(payload: Payload, funcs: FuncsTable) -> str:
    rows = [
        (str(r["entry"]), r["original"], r["replacement"], r["symbol"], str(r["size"]))
        for r in replacement_records(payload, funcs)
    ]
    return table(rows, ("entry", "original", "replacement", "symbol", "size"))


def reason_legend(reasons: Iterable[Reason]) -> str:
    return "\n".join(f"  {r.value:22} {r.description}" for r in sorted(set(reasons), key=lambda r: r.value))


def dumps(obj: Any) -> str:
    import json  # only JSON output needs it: kept off the start-up path of every other run

    # Valid UTF-8 whatever the names hold (see lp_rewrite.textsafe).
    return json.dumps(for_json(obj), indent=2, sort_keys=False)

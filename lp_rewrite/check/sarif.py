"""SARIF 2.1.0 output (the OASIS schema; tests validate every log against it).

One run, the rules of :mod:`lp_rewrite.check.findings` as
``tool.driver.rules`` (stable ids, names, help text, default level), one
artifact per payload and one result per finding. Payloads are binary, so a
region is a byte range: ``byteOffset`` = the section's ``sh_offset`` plus
the offset in the section, ``byteLength`` = the relocated field. The
section+offset and the symbol are also given as a logical location.
Artifact URIs are relative to ``%SRCROOT%`` (the working directory, which
is the repository root in CI) when the payload lies below it, else absolute
``file://`` URIs. Allowed findings carry a ``suppressions`` entry, which
code-scanning services show as dismissed rather than open.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lp_rewrite import __version__
from lp_rewrite.check.batch import BatchResult, incomplete_parts
from lp_rewrite.check.findings import RULES, Finding, PayloadReport

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
_BASE = "SRCROOT"


def _artifact_location(path: str, root: Path) -> dict[str, Any]:
    p = Path(path)
    absolute = p if p.is_absolute() else (Path.cwd() / p)
    try:
        rel = absolute.resolve().relative_to(root.resolve())
    except ValueError:
        return {"uri": absolute.resolve().as_uri()}
    return {"uri": quote(rel.as_posix()), "uriBaseId": _BASE}


def _rules() -> list[dict[str, Any]]:
    return [
        {
            "id": r.id,
            "name": r.name,
            "shortDescription": {"text": r.summary},
            "fullDescription": {"text": r.help},
            "help": {"text": r.help, "markdown": f"**{r.id} {r.name}**\n\n{r.help}"},
            "defaultConfiguration": {"level": r.severity.value},
            "properties": {"tags": ["livepatch", "xen"] + (["needs-xen-syms"] if r.needs_xen_syms else [])},
        }
        for r in RULES
    ]


def _fingerprint(report: PayloadReport, f: Finding) -> str:
    key = "\0".join([os.path.basename(report.path), f.rule.id, f.section or "", f.symbol or "", f.message])
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _result(report: PayloadReport, index: int, f: Finding, location: dict[str, Any], rule_index: int) -> dict[str, Any]:
    physical: dict[str, Any] = {"artifactLocation": {**location, "index": index}}
    if f.file_offset is not None:
        region: dict[str, Any] = {"byteOffset": f.file_offset}
        if f.length:
            region["byteLength"] = f.length
        physical["region"] = region
    loc: dict[str, Any] = {"physicalLocation": physical}
    logical = []
    if f.section is not None:
        logical.append({"name": f.where, "kind": "member"})
    if f.symbol:
        logical.append({"name": f.symbol} | ({"kind": f.symbol_kind} if f.symbol_kind else {}))
    if logical:
        loc["logicalLocations"] = logical
    result: dict[str, Any] = {
        "ruleId": f.rule.id,
        "ruleIndex": rule_index,
        "level": f.severity.value,
        "message": {"text": f.message},
        "locations": [loc],
        "partialFingerprints": {"lpRewriteFinding/v1": _fingerprint(report, f)},
    }
    if f.suppressed is not None:
        result["suppressions"] = [{"kind": "external", "justification": f.suppressed}]
    return result


def sarif_log(result: BatchResult, root: Path | None = None) -> dict[str, Any]:
    root = root or Path.cwd()
    rule_index = {r.id: i for i, r in enumerate(RULES)}
    artifacts = []
    results = []
    notifications = []
    for index, rep in enumerate(result.reports):
        location = _artifact_location(rep.path, root)
        artifact: dict[str, Any] = {"location": location, "roles": ["analysisTarget"]}
        if rep.size is not None:
            artifact["length"] = rep.size
        artifacts.append(artifact)
        for f in rep.findings:
            results.append(_result(rep, index, f, location, rule_index[f.rule.id]))
        if rep.error is not None:
            notifications.append({"level": "error", "message": {"text": f"{rep.path}: {rep.error}"}})
        else:  # a part no rule could analyse: the run did not check everything either
            notifications += [
                {"level": "error", "message": {"text": f"{rep.path}: {f.message}"}} for f in incomplete_parts(rep)
            ]
    invocation: dict[str, Any] = {"executionSuccessful": not notifications}
    if notifications:
        invocation["toolExecutionNotifications"] = notifications
    return {
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "lp-rewrite",
                        "version": __version__,
                        "semanticVersion": __version__,
                        "rules": _rules(),
                    }
                },
                "originalUriBaseIds": {_BASE: {"uri": root.resolve().as_uri() + "/"}},
                "invocations": [invocation],
                "artifacts": artifacts,
                "results": results,
                "columnKind": "unicodeCodePoints",
            }
        ],
    }

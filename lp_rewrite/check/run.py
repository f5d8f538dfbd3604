"""Check one payload: read it, run every rule family, apply the allow list.

Only a file that cannot be read as a payload at all raises (InputError, the
command's exit 2); everything the loader would refuse later, and anything a
rule cannot analyse, becomes a finding, so a CI gate never stops on a
traceback. A rule module that meets an InputError contributes one LP012
finding naming what could not be analysed, and the other rules still run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from lp_rewrite.check import branches, escape, hidden, notes, relocs, structure, trampoline
from lp_rewrite.check import xen as xen_rules
from lp_rewrite.check.allow import ALLOW_SECTION, AllowList
from lp_rewrite.check.context import Context
from lp_rewrite.check.findings import UNREADABLE, Finding, PayloadReport, make
from lp_rewrite.check.xen import XenImage
from lp_rewrite.decide import Decisions, decide
from lp_rewrite.errors import InputError, LpRewriteError
from lp_rewrite.inputs import MAX_INPUT_SIZE, TooLarge
from lp_rewrite.policy import Policy
from lp_rewrite.read import Payload, read_file, read_payload


@dataclass(frozen=True)
class CheckOptions:
    """What one run checks against (shared by every payload of a batch)."""

    policy: Policy = field(default_factory=Policy)  # the keep list the payload was rewritten with
    xen: XenImage | None = None
    allow: AllowList = field(default_factory=AllowList)


def _guarded(name: str, rule: Callable[[], list[Finding]]) -> list[Finding]:
    try:
        return rule()
    except InputError as exc:
        return [make(UNREADABLE, f"the {name} rules could not analyse this payload: {exc}")]


def check_payload(
    source: str | os.PathLike[str] | bytes, options: CheckOptions | None = None, *, name: str | None = None
) -> PayloadReport:
    """Every finding in one payload (raises InputError when it is not a readable payload)."""
    options = options or CheckOptions()
    if isinstance(source, bytes):
        data, label = source, name or "<bytes>"
    else:
        label = name or os.fspath(source)
        try:
            data = read_file(source, MAX_INPUT_SIZE)
        except TooLarge as exc:
            # Xen refuses the upload on its size; the file is not read (a sparse 8 GiB file costs a stat).
            return PayloadReport(label, findings=[structure.size_limit(exc.size, unread=MAX_INPUT_SIZE)], size=exc.size)
    limits = structure.limits(data)
    try:
        payload = read_payload(data, label)
    except InputError:
        if not limits:
            raise
        # Xen stops at its limits before reading further, and so does the report.
        return PayloadReport(label, findings=limits, size=len(data))
    report = check_loaded(payload, options)
    report.findings[:0] = limits
    return report


def report_or_reason(path: str | os.PathLike[str], options: CheckOptions) -> PayloadReport:
    """One payload's report; a file that cannot be read as a payload is an LP012 report with the reason."""
    try:
        return check_payload(path, options, name=os.fspath(path))
    except LpRewriteError as exc:
        message = str(exc)
        return PayloadReport(os.fspath(path), error=message, findings=[make(UNREADABLE, message)])


def check_loaded(payload: Payload, options: CheckOptions) -> PayloadReport:
    report = PayloadReport(payload.name, payload.arch.name, size=len(payload.data))
    xen = options.xen
    findings, funcs = structure.check(payload)
    ctx = Context(payload, options.policy, funcs)
    if xen is not None:
        xen_rules.check_arch(ctx, xen)
    decisions: Decisions | None = None
    if funcs is not None:
        try:
            decisions = decide(payload, funcs, options.policy)
        except InputError as exc:
            findings.append(make(UNREADABLE, f"the relocation decisions could not be made: {exc}"))
    findings += _guarded("not-rewritten", lambda: relocs.not_rewritten(ctx, decisions))
    findings += _guarded("unsupported-relocation", lambda: relocs.unsupported(ctx))
    findings += _guarded("misapplied-relocation", lambda: relocs.misapplied(ctx))
    findings += _guarded("branch encoding", lambda: branches.check(ctx, xen))
    findings += _guarded("escaping-new-function", lambda: escape.check(ctx))
    findings += _guarded("hidden-reference", lambda: hidden.check(ctx))
    findings += _guarded("trampoline", lambda: trampoline.check(ctx, xen))
    findings += _guarded("note alignment", lambda: notes.misaligned_notes(ctx))
    if xen is not None:
        findings += _guarded("symbol", lambda: xen_rules.check_names(ctx, xen))
        findings += _guarded("IBT", lambda: xen_rules.check_ibt(ctx, xen, decisions))
        findings += _guarded("address", lambda: xen_rules.check_addresses(ctx, xen))
        findings += _guarded("init-symbol", lambda: xen_rules.check_init(ctx, xen))
    allow = _allow_list(ctx, options.allow)
    for f in findings:
        entry = allow.match(f)
        if entry is not None:
            f.suppressed = entry.describe()
    # A verdict on the others once the allow list has spoken: a signed payload that still needs a rewrite.
    for f in _guarded("signature", lambda: notes.signed_before_rewrite(payload, findings)):
        entry = allow.match(f)
        f.suppressed = entry.describe() if entry is not None else None
        findings.append(f)
    findings.sort(key=lambda f: (f.rule.id, f.file_offset if f.file_offset is not None else -1, f.message))
    report.findings = findings
    return report


def _allow_list(ctx: Context, base: AllowList) -> AllowList:
    """``base`` and the entries of every .lp_rewrite.allow section of the payload, in section order."""
    elf = ctx.elf
    out = base
    for sec in elf.sections.find_all([ALLOW_SECTION]):
        if elf.sections.has_file_data(sec):
            out = out.with_payload_section(bytes(elf.section_data(sec)), os.path.basename(ctx.payload.name))
    return out

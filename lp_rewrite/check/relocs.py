"""Rules LP001 (not rewritten), LP003 (unsupported relocation), LP015 (misapplied relocation).

LP001 is the rewriter's own decision list read the other way round: every
decision with reason ``retarget`` is a reference the payload still binds to
its copy of a replaced function. A rewritten payload has none, unless it was
rewritten with a different keep list, which is why ``check`` takes the same
``--keep-section``/``--no-default-keep`` options as ``rewrite``.
"""

from __future__ import annotations

from lp_rewrite.arch import Classification, Kind
from lp_rewrite.check.context import Context
from lp_rewrite.check.findings import Finding, Place, make
from lp_rewrite.decide import Decision, Decisions, Reason
from lp_rewrite.read import (
    MisappliedRelocation,
    UnsupportedRelocation,
    misapplied_relocations,
    unsupported_relocations,
)

_WHAT = {
    Kind.CALL: "calls the payload's copy of {orig} directly instead of the original: code that still runs after "
    "revert (a hook, a stored callback) keeps running the reverted copy",
    Kind.ADDRESS: "takes the address of the payload's copy of {orig}: a pointer handed to the hypervisor keeps "
    "pointing into the payload after revert and into freed memory after unload",
    Kind.POINTER: "stores the address of the payload's copy of {orig}: the hypervisor keeps pointing into the "
    "payload after revert, and calls into freed memory after unload",
    Kind.OFFSET: "holds a PC-relative reference to the payload's copy of {orig}, which stays bound to the "
    "copy after revert",
    Kind.MEMORY: "reads memory at the payload's copy of {orig} instead of the original",
    Kind.PAGE: "is half of an address of the payload's copy of {orig}: a pointer built from it dangles after unload",
}


def classified(ctx: Context, d: Decision) -> Classification:
    """A decision's relocation, classified as the other rules classify references (its type is one Xen applies)."""
    ref = ctx.reference(d.reloc_section, d.index)
    assert ref is not None, "only relocations of a type Xen applies are retargeted or kept out of reach"
    return ref.reloc


def not_rewritten(ctx: Context, decisions: Decisions | None) -> list[Finding]:
    if decisions is None or ctx.funcs is None:
        return []
    out = []
    for d in decisions.retargets:
        rep = ctx.funcs.replacements[d.replacement] if d.replacement is not None else None
        orig = rep.original if rep else "a replaced function"
        rt = classified(ctx, d)
        what = _WHAT.get(rt.kind, _WHAT[Kind.POINTER]).format(orig=orig)
        keep = ""
        if ctx.policy.keep_sections or not ctx.policy.default_keep:
            keep = " with the keep options given here"
        out.append(
            make(
                "LP001",
                f"{ctx.where(d.section, d.offset)}: {rt.name} {what}. The payload was not rewritten (or with "
                f"another keep list): run `lp-rewrite rewrite`{keep}",
                ctx.place(d.section, d.offset, ctx.arch.place_width(d.rtype)),
                symbol=orig,
            )
        )
    out += _out_of_reach(ctx, decisions)
    return out


def _out_of_reach(ctx: Context, decisions: Decisions) -> list[Finding]:
    """Entry references whose field cannot reach the hypervisor: no rewrite can move them.

    A branch (b.cond, tbz) only runs while payload code does, so it may keep
    the copy; an address taken this way (AArch64 ADR) escapes like any other.
    """
    out = []
    funcs = ctx.funcs
    assert funcs is not None
    for d in decisions.items.select(Reason.KEEP_OUT_OF_REACH):  # a Decision made only for these
        if d.replacement is None:
            continue
        rt = classified(ctx, d)
        if rt.kind is Kind.CALL:
            continue
        orig = funcs.replacements[d.replacement].original
        what = _WHAT.get(rt.kind, _WHAT[Kind.POINTER]).format(orig=orig)
        out.append(
            make(
                "LP001",
                f"{ctx.where(d.section, d.offset)}: {rt.name} {what}. No rewrite can move it: the field reaches "
                f"{rt.reach:#x} bytes either way, and Xen places a payload up to {ctx.arch.livepatch_range:#x} "
                f"bytes from the functions it patches; {ctx.arch.out_of_reach_fix}",
                ctx.place(d.section, d.offset, ctx.arch.place_width(d.rtype)),
                symbol=orig,
            )
        )
    return out


def _at(ctx: Context, r: UnsupportedRelocation | MisappliedRelocation) -> tuple[str, Place]:
    """Where a refused or misapplied relocation writes: ``function+0x..`` and its place in the file."""
    return ctx.where(r.target, r.offset), ctx.place(r.target, r.offset, 4)


def unsupported(ctx: Context) -> list[Finding]:
    out = []
    for u in unsupported_relocations(ctx.payload):
        where, place = _at(ctx, u)
        message = (
            f"{where}: {u.type_name} ({u.rtype}) against {u.symbol} is not applied by Xen's loader on "
            f"{ctx.arch.name}: the whole payload is refused at load ('Unhandled relocation'). "
            f"This is {ctx.arch.refusal_hint(u.rtype)}"
        )
        out.append(make("LP003", message, place, symbol=u.symbol, symbol_kind=None))
    return out


def misapplied(ctx: Context) -> list[Finding]:
    """LP015: places Xen relocates without complaint, to a wrong value (:func:`misapplied_relocations`)."""
    out = []
    for m in misapplied_relocations(ctx.payload):
        where, place = _at(ctx, m)
        message = (
            f"{where}: {m.type_name} against {m.symbol}{m.addend:+#x}: {m.why}. The payload loads, and the "
            f"code uses a wrong address; {ctx.arch.misapplied_fix}"
        )
        out.append(make("LP015", message, place, symbol=m.symbol, symbol_kind=None))
    return out

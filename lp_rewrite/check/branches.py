"""Rule LP014: branches that Xen's loader encodes to another target than they name.

Xen's arm32 ``perform_rel()`` encodes the B/BL relocations (CALL, JUMP24) with
``val >>= 2; val &= 0x00FFFFFE``: bit 0 of the 24-bit word offset is cleared, so a
B/BL whose offset is an odd number of words lands 4 bytes short, on the
instruction before its target. The loader model knows which branches that
hits (:meth:`lp_rewrite.loader.LoadedPayload.misdirected_branches`); no
other target has such a quirk, so the rule finds nothing there.

Which branches those are is known at build time. Xen loads a payload at a
page-aligned address (vmalloc), and the offset's parity depends only on the
place's and the target's addresses modulo 8: for a target inside the
payload, on the layout alone (always judged); for a hypervisor symbol, on
its address, which only ``--xen-syms`` gives (a name the image lacks, or
has several times, is not judged: LP004/LP005 say why). So the payload is
loaded once, at a page-aligned base, against the image's addresses for the
names it needs (stand-ins for the others) or against a synthetic table,
and stopped after relocation (``prepare_payload()``'s checks are other
rules'). A payload the loader refuses before that is not judged here: Xen
refuses it anyway, and the rules that see why say so.
"""

from __future__ import annotations

from lp_rewrite.check.context import Context
from lp_rewrite.check.findings import Finding, make
from lp_rewrite.check.xen import XenImage
from lp_rewrite.errors import InputError
from lp_rewrite.loader import LoadedPayload, MisdirectedBranch, default_base, load, synthetic_table, wanted_names

_FIX = (
    "build the payload with -mlong-calls (calls and tail calls then go through a register, with no "
    "branch relocation), or fix Xen's loader (the mask keeps bit 0 of the offset with 0x00FFFFFF)"
)


def _load(ctx: Context, xen: XenImage | None) -> tuple[LoadedPayload, frozenset[str]] | None:
    """The payload relocated at a page-aligned base, and the hypervisor names resolved for real."""
    if xen is None:
        table, real = synthetic_table([ctx.payload]), frozenset[str]()
    else:
        table, real = xen.symbols.resolving(wanted_names(ctx.payload))
    try:
        return load(ctx.payload, table, default_base(table), prepare=False), real
    except InputError:
        return None  # Xen refuses it before any branch runs


def _target(ctx: Context, branch: MisdirectedBranch, real: frozenset[str]) -> tuple[str, str] | None:
    """(description, symbol) of what the branch means to reach, when its address is known at build time."""
    r = branch.relocation
    ref = ctx.reference(r.reloc_section, r.index)
    if ref is None:
        return None
    if ref.target is not None:
        shndx, offset = ref.target
        fn = ctx.containing_function(shndx, offset)
        return ctx.where(shndx, offset), ctx.name(fn) if fn is not None else ctx.elf.sections[shndx].name
    name = ctx.name(ref.symbol)
    if ref.absolute is not None:
        return f"the hypervisor's {name} (absolute)", name
    if ctx.syms.is_undefined(ref.symbol) and name in real:
        return f"the hypervisor's {name}", name
    return None


def check(ctx: Context, xen: XenImage | None) -> list[Finding]:
    if not ctx.arch.misencodes_branches:
        return []  # no load needed where Xen encodes every branch as named
    found = _load(ctx, xen)
    if found is None:
        return []
    loaded, real = found
    out = []
    for branch in loaded.misdirected_branches():
        known = _target(ctx, branch, real)
        if known is None:
            continue
        target, symbol = known
        r = branch.relocation
        short = branch.intended - branch.actual
        type_name = ctx.arch.type_name(r.rtype)
        out.append(
            make(
                "LP014",
                f"{ctx.where(r.section, r.offset)}: Xen's {ctx.arch.name} loader encodes this {type_name} branch to "
                f"{target} {short} bytes short (it clears bit 0 of the word offset, which is odd here at any "
                f"page-aligned load address, as Xen's are): it will execute the instruction before {target} "
                f"instead; {_FIX}",
                ctx.place(r.section, r.offset, r.width),
                symbol=symbol,
            )
        )
    return out

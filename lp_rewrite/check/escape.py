"""Rule LP002: the address of a payload-only function escapes.

A payload-only function replaces nothing, so there is no original a
reference could be moved to: once the payload is unloaded, any pointer to
it that the hypervisor kept calls freed memory. Every relocation in a
section that counts (loaded, not on the keep list, not a hook table) whose
designated address is such a function's entry is classified by
:class:`~lp_rewrite.arch.Kind`:

* calls and jumps (``call``/``jmp``/``bl``/``b``) are fine: nothing is kept;
* an absolute pointer in data (ABS64/ABS32, a literal pool) and an address
  materialised in code (``lea``, ``adrp``+``add``, ``adr``, ``movw``+``movt``)
  are findings; when the code is a hook function, the message says so,
  because that is how addresses are handed to the hypervisor (registering a
  callback from a load hook);
* PC-relative data words and loads are offsets and reads, not pointers.

The hook tables themselves (``.livepatch.hooks.*`` pointing at the hook
functions) are what hooks are for and never count. Address computations the
assembler resolved without a relocation are found by
:mod:`lp_rewrite.check.hidden` and reported under this rule too.
"""

from __future__ import annotations

from lp_rewrite.arch import Kind
from lp_rewrite.check.context import Context, Reference
from lp_rewrite.check.findings import Finding, make


def _hook_kind(section: str) -> str:
    return section.rsplit(".", 1)[-1]


def escape_message(ctx: Context, name: str, section: int, offset: int, how: str, stored: bool) -> str:
    """What happens to ``name``'s address taken at section+offset, and the fix."""
    fixes = (
        f"unregister it (an unload or revert hook) before the payload can be unloaded, then record the reviewed "
        f"exception with --allow {name}"
    )
    fn = ctx.containing_function(section, offset)
    hook = None
    if fn is not None:
        hook = ctx.hook_functions.get((ctx.syms.shndx[fn], ctx.syms.value[fn]))
    if hook is not None:
        return (
            f"the {_hook_kind(hook)} hook {ctx.name(fn) if fn is not None else '?'} takes the address of {name} "
            f"({how}), a function that exists only in this payload: if it registers it, the hypervisor calls "
            f"freed memory after the payload is unloaded; {fixes}"
        )
    verb = "stores" if stored else "takes"
    return (
        f"{ctx.where(section, offset)} {verb} the address of {name} ({how}), a function that exists only in this "
        f"payload: a pointer that reaches the hypervisor dangles once the payload is unloaded; {fixes}"
    )


def _finding(ctx: Context, ref: Reference, name: str) -> Finding:
    how = ref.reloc.name + (f"; {ref.note}" if ref.note else "")
    msg = escape_message(ctx, name, ref.section.index, ref.offset, how, ref.kind is Kind.POINTER)
    place = ctx.place(ref.section.index, ref.offset, ctx.arch.place_width(ref.reloc.type.code))
    return make("LP002", msg, place, symbol=name)


def check(ctx: Context) -> list[Finding]:
    entries = ctx.payload_only
    if not entries:
        return []
    sections = {sec for sec, _off in entries}
    shndx = ctx.syms.shndx
    interesting = {i for i in range(ctx.syms.count) if shndx[i] in sections}
    out = []
    for ref in ctx.references(interesting, calls=False):  # a call never stores an address
        if ref.target is None or ref.kind not in (Kind.ADDRESS, Kind.POINTER):
            continue
        fn = entries.get(ref.target)
        if fn is not None:
            out.append(_finding(ctx, ref, ctx.name(fn)))
    return out

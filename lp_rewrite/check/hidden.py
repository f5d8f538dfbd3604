"""Rule LP008 (and LP002's hidden case): address computations with no relocation.

When a PC-relative address computation and its target are in the same
section, the assembler resolves it and the object keeps no relocation: the
payload's copy is referenced, and no relocation-level rewrite can change
that. This is what happens without ``-ffunction-sections`` (a caller in
``.text`` taking the address of a replaced function in ``.text``), or when a
function takes its own address.

Only instructions that *compute an address* are looked for, by each target's
:meth:`~lp_rewrite.arch.Arch.address_computations`: x86 ``lea
disp(%rip)``, AArch64 ``adr``, Arm ``add``/``sub rD, pc, #imm`` (``adr``). A
direct call or jump resolved this way stays on the new code, which is
harmless. Each executable section that holds a replacement's (or a
payload-only function's) entry is scanned with a byte pattern; x86
candidates are confirmed with capstone (imported only then), because a
0x8D byte can sit inside another instruction. AArch64 ``adrp``+``add``
always keeps its relocations (the page is unknown until link time), so
``adr`` (``-mcmodel=tiny``) is the only hidden form there; Arm literal pools
(``ldr rX, =fn``) are relocated words and are found by the relocation rules.
Arm and AArch64 data regions (``$d`` mapping symbols) are skipped.
"""

from __future__ import annotations

from bisect import bisect_right
from functools import partial
from operator import add

from lp_rewrite.check.context import Context
from lp_rewrite.check.escape import escape_message
from lp_rewrite.check.findings import Finding, make
from lp_rewrite.elf import consts as C


def _mapping_regions(ctx: Context) -> dict[int, list[tuple[int, int]]]:
    """Per section, [start, end) ranges marked data by Arm mapping symbols ($d ... next $x/$a/$t)."""
    syms = ctx.syms
    names = syms.strtab.data
    marks: dict[int, list[tuple[int, bool]]] = {}
    # Only names that start with '$' are decoded (a byte of the string table; x86 has none).
    dollar = ord("$")
    for i, off in enumerate(syms.name_off):
        if not i or names[off] != dollar or syms.type(i) != C.STT_NOTYPE or not syms.is_defined_in_section(i):
            continue
        name = syms.name(i)
        if len(name) >= 2 and name[0] == "$" and name[1] in "dxat" and (len(name) == 2 or name[2] == "."):
            marks.setdefault(syms.shndx[i], []).append((syms.value[i], name[1] == "d"))
    out: dict[int, list[tuple[int, int]]] = {}
    for sec, items in marks.items():
        items.sort()
        for k, (start, is_data) in enumerate(items):
            if is_data:
                end = items[k + 1][0] if k + 1 < len(items) else 1 << 62
                out.setdefault(sec, []).append((start, end))
    return out


def _in_data(ctx: Context, section: int, offset: int) -> bool:
    """Whether an offset of the section is in an Arm data region (the regions are found when first asked)."""
    return any(a <= offset < b for a, b in ctx.cache("mapping", _mapping_regions).get(section, ()))


def _function_start(ctx: Context, section: int, offset: int) -> int:
    fn = ctx.containing_function(section, offset)
    return ctx.syms.value[fn] if fn is not None else 0


def _relocated(ctx: Context, section: int) -> set[int]:
    """The offsets of a section that a relocation writes (read only where a candidate is found)."""
    elf = ctx.elf
    out: set[int] = set()
    for ridx in elf.tables_relocating(section):
        out.update(elf.relocations(ridx).offsets)
    return out


def _entries(ctx: Context) -> dict[int, dict[int, str | int]]:
    """Per section, the entries to look for: offset -> the original it replaces (str), or the payload-only symbol."""
    out: dict[int, dict[int, str | int]] = {}
    for (sec, off), rep in ctx.replacement_entries.items():
        out.setdefault(sec, {})[off] = rep.original
    for (sec, off), sym in ctx.payload_only.items():
        out.setdefault(sec, {})[off] = sym  # a replacement's entry is never payload-only
    return out


def _with_pattern(ctx: Context, sections: list[int]) -> list[int]:
    """Those of ``sections`` (in order) that hold a match of the arch's address pattern.

    One search of the whole file, not one per section: a payload has a code
    section per function, and few of them compute an address.
    """
    pattern = ctx.arch.address_pattern
    if pattern is None:
        return sections
    if not sections:
        return []
    secs = ctx.elf.sections
    by_start = sorted(sections, key=secs.offset.__getitem__)
    starts = list(map(secs.offset.__getitem__, by_start))
    ends = list(map(add, starts, map(secs.size.__getitem__, by_start)))
    hit: set[int] = set()
    for m in pattern.finditer(ctx.elf.data, starts[0], max(ends)):  # the span the sections are in
        k = bisect_right(starts, m.start()) - 1
        if m.start() < ends[k]:
            hit.add(by_start[k])
    return [s for s in sections if s in hit]


def check(ctx: Context) -> list[Finding]:
    secs = ctx.elf.sections
    entries = _entries(ctx)
    out = []
    flags, has_data = secs.flags, secs.data_mask
    loaded = [s for s in sorted(entries) if flags[s] & C.SHF_ALLOC and has_data[s]]
    for sec in _with_pattern(ctx, loaded):
        wanted = entries[sec]
        sites = ctx.arch.address_computations(
            ctx.elf.section_data(sec),  # searched in place
            wanted.keys(),
            in_data=partial(_in_data, ctx, sec),
            decode_from=partial(_function_start, ctx, sec),
        )
        fields: set[int] | None = None
        for insn, field, target, text in sites:
            if fields is None:
                fields = _relocated(ctx, sec)
            if field not in fields:
                out.append(_finding(ctx, sec, insn, field, target, text, wanted[target]))
    return out


def _finding(ctx: Context, sec: int, insn: int, field: int, target: int, text: str, what: str | int) -> Finding:
    """LP008 for a replaced function's entry (``what``: the original's name), else LP002 (``what``: the symbol)."""
    name = ctx.elf.sections.name(sec)
    place = ctx.place(sec, insn, field - insn + 4)
    if isinstance(what, str):
        fn = ctx.function_at(sec, target)
        copy = ctx.name(fn) if fn is not None else f"{name}+{target:#x}"
        return make(
            "LP008",
            f"{ctx.where(sec, insn)}: `{text}` computes the entry of {copy}, the payload's copy of "
            f"{what}, and the assembler resolved it (no relocation), so the rewrite cannot "
            "move it to the original: the address stays in the payload and dangles after unload. "
            "Build with -ffunction-sections, or take the address in another section",
            place,
            symbol=what,
        )
    symbol = ctx.name(what)
    how = f"`{text}`, resolved by the assembler: no relocation"
    return make("LP002", escape_message(ctx, symbol, sec, insn, how, False), place, symbol=symbol)

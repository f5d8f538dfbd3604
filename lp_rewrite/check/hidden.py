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

from functools import partial

from lp_rewrite.check.context import Context
from lp_rewrite.check.escape import escape_message
from lp_rewrite.check.findings import Finding, Place, make
from lp_rewrite.elf import consts as C


def _mapping_regions(ctx: Context) -> dict[int, list[tuple[int, int]]]:
    """Per section, [start, end) ranges marked data by Arm mapping symbols ($d ... next $x/$a/$t)."""
    syms = ctx.syms
    marks: dict[int, list[tuple[int, bool]]] = {}
    for i in range(1, syms.count):
        if syms.type(i) != C.STT_NOTYPE or not syms.is_defined_in_section(i):
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


def _in(regions: list[tuple[int, int]], offset: int) -> bool:
    return any(a <= offset < b for a, b in regions)


def _function_start(ctx: Context, section: int, offset: int) -> int:
    fn = ctx.containing_function(section, offset)
    return ctx.syms.value[fn] if fn is not None else 0


def check(ctx: Context) -> list[Finding]:
    replaced: dict[int, dict[int, str]] = {}
    for (sec, off), rep in ctx.replacement_entries.items():
        replaced.setdefault(sec, {})[off] = rep.original
    only: dict[int, dict[int, int]] = {}
    for (sec, off), sym in ctx.payload_only.items():
        only.setdefault(sec, {})[off] = sym
    scanned = set(replaced) | set(only)
    relocated: dict[int, set[int]] = {}
    targets = ctx.elf.sections.info
    for ridx in ctx.elf.relocation_sections:
        if targets[ridx] in scanned:
            relocated.setdefault(targets[ridx], set()).update(ctx.elf.relocations(ridx).offsets)
    out = []
    for sec in sorted(scanned):
        section = ctx.elf.sections[sec]
        if not section.alloc or not section.has_file_data:
            continue
        reps, news = replaced.get(sec, {}), only.get(sec, {})
        fields = relocated.get(sec, set())
        data = bytes(ctx.elf.section_data(sec))
        regions = ctx.cache("mapping", _mapping_regions).get(sec, [])
        sites = ctx.arch.address_computations(
            data,
            set(reps) | set(news),
            in_data=partial(_in, regions),
            decode_from=partial(_function_start, ctx, sec),
        )
        for insn, field, target, text in sites:
            if field in fields:
                continue
            place = Place(section.name, insn, ctx.file_offset(sec, insn), field - insn + 4)
            if target in reps:
                fn = ctx.function_at(sec, target)
                copy = ctx.name(fn) if fn is not None else f"{section.name}+{target:#x}"
                out.append(
                    make(
                        "LP008",
                        f"{ctx.where(sec, insn)}: `{text}` computes the entry of {copy}, the payload's copy of "
                        f"{reps[target]}, and the assembler resolved it (no relocation), so the rewrite cannot "
                        "move it to the original: the address stays in the payload and dangles after unload. "
                        "Build with -ffunction-sections, or take the address in another section",
                        place,
                        symbol=reps[target],
                    )
                )
            else:
                name = ctx.name(news[target])
                how = f"`{text}`, resolved by the assembler: no relocation"
                out.append(make("LP002", escape_message(ctx, name, sec, insn, how, False), place, symbol=name))
    return out

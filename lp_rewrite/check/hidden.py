"""Rule LP008 (and LP002's hidden case): address computations with no relocation.

When a PC-relative address computation and its target are in the same
section, the assembler resolves it and the object keeps no relocation: the
payload's copy is referenced, and no relocation-level rewrite can change
that. This is what happens without ``-ffunction-sections`` (a caller in
``.text`` taking the address of a replaced function in ``.text``), or when a
function takes its own address.

Only instructions that *compute an address* are looked for: x86 ``lea
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

import re
import struct
from collections.abc import Iterator
from typing import Any, Final

from lp_rewrite.check.context import Context
from lp_rewrite.check.escape import escape_message
from lp_rewrite.check.findings import Finding, Place, make
from lp_rewrite.elf import consts as C

# lea with a RIP-relative ModRM (mod=00, rm=101): 8D 05/0D/.../3D, disp32 follows.
_X86_LEA: Final = re.compile(rb"(?=\x8d[\x05\x0d\x15\x1d\x25\x2d\x35\x3d])")
# AArch64 ADR: bit 31 = 0, bits 28-24 = 10000 -> top byte & 0x9F == 0x10.
_A64_ADR: Final = re.compile(rb"(?s)(?=...[\x10\x30\x50\x70])")
# Arm ADD/SUB (immediate) with Rn = pc: byte 2 is 0x8F/0x9F (ADD) or 0x4F/0x5F (SUB), byte 3 is cond:0010.
_ARM_COND_0010: Final = bytes(c << 4 | 2 for c in range(15))
_ARM_ADR: Final = re.compile(rb"(?s)(?=..[\x8f\x9f\x4f\x5f][" + re.escape(_ARM_COND_0010) + rb"])")
_S32: Final = struct.Struct("<i")
_U32: Final = struct.Struct("<I")


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


def _x86_sites(ctx: Context, section: int, data: bytes, targets: set[int]) -> Iterator[tuple[int, int, int, str]]:
    """(instruction offset, field offset, target, text) of each hidden lea."""
    candidates = []
    for m in _X86_LEA.finditer(data):
        field = m.start() + 2
        if field + 4 > len(data):
            continue
        target = field + 4 + _S32.unpack_from(data, field)[0]
        if target in targets:
            candidates.append((field, target))
    if not candidates:
        return
    import capstone  # only when a candidate needs confirming

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    md.skipdata = True
    for field, target in candidates:
        fn = ctx.containing_function(section, field)
        start = ctx.syms.value[fn] if fn is not None else 0
        insn: Any
        for insn in md.disasm(data[start:], start):
            if insn.address > field:
                break
            if insn.address + insn.size <= field:
                continue
            if insn.mnemonic == "lea" and insn.disp_offset == field - insn.address:
                yield insn.address, field, target, f"lea {insn.op_str}"
            break


def _a64_sites(ctx: Context, section: int, data: bytes, targets: set[int]) -> Iterator[tuple[int, int, int, str]]:
    regions = ctx.cache("mapping", _mapping_regions).get(section, [])
    for m in _A64_ADR.finditer(data):
        off = m.start()
        if off % 4 or off + 4 > len(data) or _in(regions, off):
            continue
        word = _U32.unpack_from(data, off)[0]
        if word & 0x9F000000 != 0x10000000:
            continue
        imm = ((word >> 5) & 0x7FFFF) << 2 | (word >> 29) & 3
        imm -= (imm & (1 << 20)) << 1
        if off + imm in targets:
            yield off, off, off + imm, f"adr x{word & 31}"


def _arm_sites(ctx: Context, section: int, data: bytes, targets: set[int]) -> Iterator[tuple[int, int, int, str]]:
    regions = ctx.cache("mapping", _mapping_regions).get(section, [])
    for m in _ARM_ADR.finditer(data):
        off = m.start()
        if off % 4 or off + 4 > len(data) or _in(regions, off):
            continue
        word = _U32.unpack_from(data, off)[0]
        rot = ((word >> 8) & 0xF) * 2
        imm = ((word & 0xFF) >> rot | (word & 0xFF) << (32 - rot)) & 0xFFFFFFFF if rot else word & 0xFF
        add = (word >> 21) & 0xF == 0b0100
        target = off + 8 + (imm if add else -imm)
        if target in targets:
            yield off, off, target, f"{'add' if add else 'sub'} r{(word >> 12) & 15}, pc, #{imm}"


_SCANNERS = {"x86_64": _x86_sites, "aarch64": _a64_sites, "arm": _arm_sites}


def check(ctx: Context) -> list[Finding]:
    replaced: dict[int, dict[int, str]] = {}
    for (sec, off), rep in ctx.replacement_entries.items():
        replaced.setdefault(sec, {})[off] = rep.original
    only: dict[int, dict[int, int]] = {}
    for (sec, off), sym in ctx.payload_only.items():
        only.setdefault(sec, {})[off] = sym
    scan = _SCANNERS[ctx.arch.name]
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
        for insn, field, target, text in scan(ctx, sec, data, set(reps) | set(news)):
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

"""Rule LP006: the original is shorter than the jump that patches it.

Xen writes ``Arch.patch_insn_size`` bytes at the original's entry (x86-64: a
5-byte ``jmp rel32``, placed after the ENDBR64 when the function starts with
one or with its poison, so 9 bytes in all; Arm: one 4-byte ``b``).

Without ``--xen-syms`` only the payload's own claim is checked: an entry
whose ``old_size`` is 0 or smaller than the jump is refused at load
(``prepare_payload()`` / ``arch_livepatch_verify_func()``). With it, the
original's real size from the image is checked too (a jump longer than the
function overwrites the next one), and on x86 the ENDBR64 at its entry.
NOP entries (no ``new_addr``) write no jump and are not checked here.
"""

from __future__ import annotations

import struct

from lp_rewrite.check.context import Context
from lp_rewrite.check.findings import Finding, Place, make
from lp_rewrite.check.xen import XenImage

_U32 = struct.Struct("<I")


def check(ctx: Context, xen: XenImage | None) -> list[Finding]:
    funcs = ctx.funcs
    if funcs is None:
        return []
    data = ctx.elf.section_data(funcs.section.index)
    layout = funcs.layout
    jump = ctx.arch.patch_insn_size
    out = []
    for rep in funcs.replacements:
        off = rep.entry * layout.entry_size + layout.old_size
        old_size = _U32.unpack_from(data, off)[0]
        place = Place(funcs.section.name, off, funcs.section.sh_offset + off, 4)
        sym = xen.symbols.lookup(rep.original) if xen is not None else None
        pad = xen.landing_pad_at(sym.address) if xen is not None and sym is not None else 0
        need = jump + pad
        why = f"{jump}-byte jump" + (f" after its {pad}-byte ENDBR64" if pad else "")
        if old_size == 0:
            out.append(
                make(
                    "LP006",
                    f"entry {rep.entry} ({rep.original}) has old_size 0: Xen refuses the payload ('Address or size "
                    "fields are zero'); set old_size to the original's size",
                    place,
                    symbol=rep.original,
                )
            )
        elif old_size < need:
            out.append(
                make(
                    "LP006",
                    f"entry {rep.entry} ({rep.original}) has old_size {old_size}, less than the {why} Xen writes "
                    f"there ({need} bytes): Xen refuses the payload at load; the original is too short to be "
                    "patched, patch its callers instead",
                    place,
                    symbol=rep.original,
                )
            )
        if sym is not None and 0 < sym.size < need:
            out.append(
                make(
                    "LP006",
                    f"{rep.original} is {sym.size} bytes in the hypervisor, less than the {why} ({need} bytes) that "
                    f"patching it writes: the jump would overwrite {need - sym.size} byte(s) of the code after it; "
                    "patch its callers instead",
                    place,
                    symbol=rep.original,
                )
            )
    return out

"""Just enough x86-64 decoding to interpret a rel32 relocation in code.

An x86 rel32 field is relative to the *end of its instruction*, which is not
always 4 bytes after the field (``cmpl $1, foo(%rip)`` has an immediate after
the displacement). To know which address a PC32/PLT32 place designates we
need the instruction's end, and for the CI gate whether it is a call or an
address computation.

The forms a compiler uses to reach a function entry are recognised from the
bytes just before the field: ``call``/``jmp``/``jcc`` rel32, and ``lea``/
``mov`` with a RIP-relative ModRM and no immediate. Anything else goes to
capstone (imported only then), which decodes the section linearly from its
start to find the instruction holding the field.
"""

from __future__ import annotations

import enum
from bisect import bisect_right
from typing import Any, Final, NamedTuple

from lp_rewrite.errors import InputError


class Form(enum.Enum):
    CALL = "call"
    JUMP = "jump"  # jmp and jcc
    LEA = "lea"  # address computation
    MEMORY = "memory"  # any other RIP-relative memory operand (load, store, indirect call)


# The forms as module globals: _fast_form() runs per relocation, and reading a
# member off its class costs ~180 ns in Python 3.11 (a descriptor), a global ~16 ns.
CALL_FORM, JUMP_FORM, LEA_FORM, MEMORY_FORM = Form.CALL, Form.JUMP, Form.LEA, Form.MEMORY


class Rel32Site(NamedTuple):
    end: int  # section offset just past the instruction
    form: Form

    def bias(self, field: int) -> int:
        return self.end - field


# With a RIP-relative ModRM byte (mod=00, rm=101) just before the field, the
# byte before that is the opcode's last byte. For these four it always means
# "no immediate follows" (they are never the tail of an opcode with an imm8).
_LEA = 0x8D
# The opcode just before the rel32 field of call and jmp: the decoder's first
# test, which callers with many fields may apply to all of them at once.
_CALL_REL32, _JMP_REL32 = 0xE8, 0xE9
CALL_JMP_OPCODES: Final = (_CALL_REL32, _JMP_REL32)
_NO_IMM_RIP_OPCODES = frozenset([0x89, 0x8B, 0x8D, 0xFF])


def _fast_form(code: memoryview, field: int) -> Form | None:
    """The form of a call/jmp/jcc rel32 or lea/mov/indirect-branch RIP field (it ends its instruction)."""
    if field < 1:
        return None
    b1 = code[field - 1]
    if b1 == _CALL_REL32:
        return CALL_FORM
    if b1 == _JMP_REL32:
        return JUMP_FORM
    if field < 2:
        return None
    b2 = code[field - 2]
    if b2 == 0x0F and 0x80 <= b1 <= 0x8F:
        return JUMP_FORM
    if (b1 & 0xC7) == 0x05 and b2 in _NO_IMM_RIP_OPCODES:
        return LEA_FORM if b2 == _LEA else MEMORY_FORM
    return None


def _fast(code: memoryview, field: int) -> Rel32Site | None:
    """Recognise call/jmp/jcc rel32 and lea/mov/indirect-branch RIP forms."""
    form = _fast_form(code, field)
    return None if form is None else Rel32Site(field + 4, form)


# The last section decoded: (its view, its bytes, instruction starts, sizes,
# whether each is skipped data). decide() asks about every rel32 field of a
# section in turn; decoding the section once, not once per field, keeps a
# section with thousands of such fields linear.
_decoded: tuple[memoryview, bytes, list[int], list[int], list[bool]] | None = None


def _instructions(code: memoryview) -> tuple[bytes, list[int], list[int], list[bool]]:
    """Start, size and skipped-data flag of every instruction of ``code``, decoded linearly."""
    global _decoded
    if _decoded is not None and (_decoded[0] is code or _decoded[1] == code):
        return _decoded[1:]
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.skipdata = True
    blob = bytes(code)
    starts: list[int] = []
    sizes: list[int] = []
    skipped: list[bool] = []
    for address, size, mnemonic, _ops in md.disasm_lite(blob, 0):
        starts.append(address)
        sizes.append(size)
        skipped.append(mnemonic == ".byte")
    _decoded = (code, blob, starts, sizes, skipped)
    return blob, starts, sizes, skipped


def _capstone(code: memoryview, field: int, where: str) -> Rel32Site:
    try:
        import capstone
    except ImportError as exc:  # pragma: no cover - capstone is a dependency
        raise InputError(f"{where}: needs capstone to decode this instruction ({exc})") from exc
    blob, starts, sizes, skipped = _instructions(code)
    k = bisect_right(starts, field) - 1
    if k >= 0 and field < starts[k] + sizes[k] and not skipped[k]:
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        md.detail = True
        start = starts[k]
        insn: Any
        for insn in md.disasm(blob[start : start + sizes[k]], start, 1):
            offsets = {insn.disp_offset, insn.imm_offset} - {0}
            if field - insn.address not in offsets:
                break
            mnemonic = insn.mnemonic
            if mnemonic == "call":
                form = Form.CALL
            elif mnemonic.startswith("j"):
                form = Form.JUMP
            elif mnemonic == "lea":
                form = Form.LEA
            else:
                form = Form.MEMORY
            return Rel32Site(insn.address + insn.size, form)
    raise InputError(f"{where}: cannot decode the instruction holding this rel32 field")


def decode_rel32(code: memoryview, field: int, where: str) -> Rel32Site:
    """The instruction whose rel32 displacement/immediate starts at ``field``."""
    return _fast(code, field) or _capstone(code, field, where)


# The decoder's first stage alone: None when capstone would be needed. The
# field then ends its instruction (the site's bias is 4).
fast_rel32 = _fast_form

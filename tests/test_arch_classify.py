"""Below fixture level: each arch's classification of its relocation types, the keep-list matcher,
and the entry lookup of ``decide``.

The classification (:meth:`lp_rewrite.arch.Arch.classify`) is the one place that says what a
relocation is; ``decide``, the gate's rules and the loader model read it. Each target's table
below is the whole set of types Xen applies there, so adding a type without stating what it is
fails here.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from lp_rewrite.arch import DEFAULT_HINT, GOT_HINT, Arch, Kind, arch_for
from lp_rewrite.arch.aarch64 import ARCH as AARCH64
from lp_rewrite.arch.arm import ARCH as ARM
from lp_rewrite.arch.x86_64 import ARCH as X86
from lp_rewrite.decide import ExemptSections, _Entries
from lp_rewrite.elf import consts as C
from lp_rewrite.elf.file import ElfFile, Section
from lp_rewrite.identify import Replacement
from lp_rewrite.policy import Policy
from tests.conftest import COMMITTED

K = Kind
# name -> (kind, bias, width, reach); the bias is the type's own (no decoding).
X86_TABLE = {
    "R_X86_64_NONE": (K.NONE, 0, 0, None),
    "R_X86_64_64": (K.POINTER, 0, 8, None),
    "R_X86_64_PC32": (K.OFFSET, 0, 4, 1 << 31),
    "R_X86_64_PLT32": (K.OFFSET, 0, 4, 1 << 31),
}
_B26 = 1 << 27  # imm26 words: +-128 MiB
AARCH64_TABLE = {
    "R_AARCH64_ABS64": (K.POINTER, 0, 8, None),
    "R_AARCH64_ABS32": (K.POINTER, 0, 4, None),
    "R_AARCH64_ABS16": (K.POINTER, 0, 4, None),
    "R_AARCH64_PREL64": (K.OFFSET, 0, 8, None),
    "R_AARCH64_PREL32": (K.OFFSET, 0, 4, 1 << 31),
    "R_AARCH64_PREL16": (K.OFFSET, 0, 4, 1 << 15),
    "R_AARCH64_MOVW_UABS_G0": (K.ADDRESS, 0, 4, None),
    "R_AARCH64_MOVW_UABS_G0_NC": (K.ADDRESS, 0, 4, None),
    "R_AARCH64_MOVW_UABS_G1": (K.PAGE, 0, 4, None),
    "R_AARCH64_MOVW_UABS_G1_NC": (K.PAGE, 0, 4, None),
    "R_AARCH64_MOVW_UABS_G2": (K.PAGE, 0, 4, None),
    "R_AARCH64_MOVW_UABS_G2_NC": (K.PAGE, 0, 4, None),
    "R_AARCH64_MOVW_UABS_G3": (K.PAGE, 0, 4, None),
    "R_AARCH64_MOVW_SABS_G0": (K.ADDRESS, 0, 4, None),
    "R_AARCH64_MOVW_SABS_G1": (K.PAGE, 0, 4, None),
    "R_AARCH64_MOVW_SABS_G2": (K.PAGE, 0, 4, None),
    "R_AARCH64_ADR_PREL_LO21": (K.ADDRESS, 0, 4, 1 << 20),
    "R_AARCH64_ADR_PREL_PG_HI21": (K.PAGE, 0, 4, 1 << 32),
    "R_AARCH64_ADR_PREL_PG_HI21_NC": (K.PAGE, 0, 4, 1 << 32),
    "R_AARCH64_ADD_ABS_LO12_NC": (K.ADDRESS, 0, 4, None),
    "R_AARCH64_LDST8_ABS_LO12_NC": (K.MEMORY, 0, 4, None),
    "R_AARCH64_LDST16_ABS_LO12_NC": (K.MEMORY, 0, 4, None),
    "R_AARCH64_LDST32_ABS_LO12_NC": (K.MEMORY, 0, 4, None),
    "R_AARCH64_LDST64_ABS_LO12_NC": (K.MEMORY, 0, 4, None),
    "R_AARCH64_LDST128_ABS_LO12_NC": (K.MEMORY, 0, 4, None),
    "R_AARCH64_TSTBR14": (K.CALL, 0, 4, 1 << 15),
    "R_AARCH64_CONDBR19": (K.CALL, 0, 4, 1 << 20),
    "R_AARCH64_JUMP26": (K.CALL, 0, 4, _B26),
    "R_AARCH64_CALL26": (K.CALL, 0, 4, _B26),
    "R_AARCH64_MOVW_PREL_G0": (K.ADDRESS, 0, 4, 1 << 16),
    "R_AARCH64_MOVW_PREL_G0_NC": (K.ADDRESS, 0, 4, None),
    "R_AARCH64_MOVW_PREL_G1": (K.PAGE, 0, 4, 1 << 32),
    "R_AARCH64_MOVW_PREL_G1_NC": (K.PAGE, 0, 4, None),
    "R_AARCH64_MOVW_PREL_G2": (K.PAGE, 0, 4, 1 << 48),
    "R_AARCH64_MOVW_PREL_G2_NC": (K.PAGE, 0, 4, None),
    "R_AARCH64_MOVW_PREL_G3": (K.PAGE, 0, 4, None),
}
ARM_TABLE = {
    "R_ARM_NONE": (K.NONE, 0, 0, None),
    "R_ARM_ABS32": (K.POINTER, 0, 4, None),
    "R_ARM_REL32": (K.OFFSET, 0, 4, 1 << 31),
    "R_ARM_CALL": (K.CALL, 8, 4, 32 << 20),
    "R_ARM_JUMP24": (K.CALL, 8, 4, 32 << 20),
    "R_ARM_MOVW_ABS_NC": (K.ADDRESS, 0, 4, None),
    "R_ARM_MOVT_ABS": (K.PAGE, 0, 4, None),
}
TABLES = {"x86_64": (X86, X86_TABLE), "aarch64": (AARCH64, AARCH64_TABLE), "arm": (ARM, ARM_TABLE)}


def _section(name: str, flags: int) -> Section:
    return Section(1, name, 0, C.SHT_PROGBITS, flags, 0, 0, 0, 0, 0, 1, 0)


TEXT = _section(".text", C.SHF_ALLOC | C.SHF_EXECINSTR)
DATA = _section(".data", C.SHF_ALLOC | C.SHF_WRITE)
WORDS = memoryview(bytes(64))


def _code(arch: Arch, name: str) -> int:
    (code,) = [c for c, t in arch.types.items() if t.name == name]
    return code


@pytest.mark.parametrize("target", TABLES)
def test_the_table_is_every_type_xen_applies(target: str) -> None:
    arch, table = TABLES[target]
    assert {t.name for t in arch.types.values()} == set(table)


@pytest.mark.parametrize(
    ("target", "name"), [(target, name) for target, (_arch, table) in TABLES.items() for name in table]
)
def test_classification_of_each_type(target: str, name: str) -> None:
    """Kind, bias, width and reach; outside x86 code, the place does not matter."""
    arch, table = TABLES[target]
    kind, bias, width, reach = table[name]
    code = _code(arch, name)
    for section in (DATA, TEXT) if target != "x86_64" else (DATA,):
        c = arch.classify(code, section, WORDS, 8)
        assert c is not None
        assert (c.name, c.kind, c.bias, c.width, c.reach, c.note) == (name, kind, bias, width, reach, "")
        assert c.type is arch.types[code]
        assert arch.place_width(code) == (width or 4)
    # Out of reach of the hypervisor: a field that reaches less than Xen's patch branch.
    assert arch.reaches_hypervisor(code) == (reach is None or reach >= arch.livepatch_range)


@pytest.mark.parametrize("target", TABLES)
def test_a_type_xen_refuses_has_no_classification(target: str) -> None:
    arch, _table = TABLES[target]
    assert arch.classify(9999, DATA, WORDS, 0) is None
    assert arch.type_name(9999) == "type 9999"
    assert arch.refusal_hint(9999) == DEFAULT_HINT
    assert arch.place_width(9999) == 4


@pytest.mark.parametrize(
    ("arch", "code", "name", "hint"),
    [
        (X86, 9, "R_X86_64_GOTPCREL", GOT_HINT),
        (X86, 11, "R_X86_64_32S", "a 32-bit absolute address (-fno-pic / -mcmodel=kernel): build with -fpic"),
        (X86, 14, "R_X86_64_8", "a narrow absolute address: build with -fpic"),
        (X86, 24, "R_X86_64_PC64", "a narrow or 64-bit PC-relative field Xen does not apply"),
        (
            AARCH64,
            256,
            "R_AARCH64_NONE",
            "an R_*_NONE entry, which Xen's AArch64 loader does not accept: rebuild without it",
        ),
        (AARCH64, 313, "R_AARCH64_LD64_GOTPAGE_LO15", GOT_HINT),
        (AARCH64, 273, "R_AARCH64_LD_PREL_LO19", DEFAULT_HINT),
        (ARM, 10, "R_ARM_THM_CALL", "Thumb code: build the payload with -marm"),
        (ARM, 42, "R_ARM_PREL31", "an unwind-table entry: build with -fno-unwind-tables"),
        (ARM, 1, "R_ARM_PC24", DEFAULT_HINT),
    ],
)
def test_refused_types_are_named_with_a_build_hint(arch: Arch, code: int, name: str, hint: str) -> None:
    assert code not in arch.types
    assert arch.type_name(code) == name
    assert arch.refusal_hint(code) == hint


_PC32 = 2
_PLT32 = 4


def _x86(code: bytes, field: int, rtype: int = _PC32) -> tuple[Kind, int, str]:
    c = X86.classify(rtype, TEXT, memoryview(code), field)
    assert c is not None
    return c.kind, c.bias, c.note


@pytest.mark.parametrize(
    ("code", "field", "kind", "bias"),
    [
        (b"\xe8" + bytes(4), 1, K.CALL, 4),  # call rel32
        (b"\xe9" + bytes(4), 1, K.CALL, 4),  # jmp rel32
        (b"\x0f\x84" + bytes(4), 2, K.CALL, 4),  # je rel32
        (b"\x48\x8d\x05" + bytes(4), 3, K.ADDRESS, 4),  # lea 0(%rip), %rax
        (b"\x48\x8b\x05" + bytes(4), 3, K.MEMORY, 4),  # mov 0(%rip), %rax
        (b"\x83\x3d" + bytes(4) + b"\x01", 2, K.MEMORY, 5),  # cmpl $1, 0(%rip): capstone, an imm8 follows
        (b"\xc7\x05" + bytes(4) + b"\x01\x00\x00\x00", 2, K.MEMORY, 8),  # movl $1, 0(%rip): an imm32 follows
    ],
)
def test_x86_rel32_in_code_is_decoded(code: bytes, field: int, kind: Kind, bias: int) -> None:
    assert _x86(code, field) == (kind, bias, "")
    assert _x86(code, field, _PLT32) == (kind, bias, "")


def test_x86_rel32_in_data_is_an_offset() -> None:
    c = X86.classify(_PC32, DATA, memoryview(b"\xe8" + bytes(4)), 1)
    assert c is not None and (c.kind, c.bias) == (K.OFFSET, 0)


def test_x86_rel32_that_no_decoder_places_is_the_worst_case_with_a_note() -> None:
    kind, bias, note = _x86(b"\x06" + bytes(4), 1)  # 0x06 is invalid in 64-bit mode
    assert (kind, bias) == (K.ADDRESS, 4)
    assert note == ".text+0x1: cannot decode the instruction holding this rel32 field"


def test_x86_rel32_at_offset_0_reads_no_byte_before_it() -> None:
    """The call/jmp shortcut looks at the byte before the field; at offset 0 there is none
    (data[-1] would be the section's last byte, here a call opcode)."""
    kind, _bias, note = _x86(bytes(4) + b"\xe8", 0)
    assert kind is K.ADDRESS and note  # the worst case, as the decoder gives it
    assert _x86(bytes(4) + b"\xe8" + bytes(4), 5)[:2] == (K.CALL, 4)


@pytest.mark.parametrize("payload", sorted(COMMITTED.glob("x86_64/*.livepatch")), ids=lambda p: p.name)
def test_x86_call_shortcut_gives_what_the_decoder_gives(payload: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """classify() answers call/jmp rel32 from the byte before the field without decoding: for every
    relocation of every committed x86-64 payload, the same classification as the decoder's."""
    import lp_rewrite.arch.x86_64 as x86_64

    elf = ElfFile(payload.read_bytes(), payload.name)
    fields = []
    for idx in elf.relocation_sections:
        table = elf.relocations(idx)
        target = elf.sections.info[idx]
        for rtype, off in zip(table.types, table.offsets, strict=True):
            fields.append((rtype, elf.sections[target], elf.section_data(target), off))
    fast = [X86.classify(*f) for f in fields]
    monkeypatch.setattr(x86_64, "CALL_JMP_OPCODES", ())
    assert [X86.classify(*f) for f in fields] == fast
    assert any(c is not None and c.kind is K.CALL for c in fast)


@pytest.mark.parametrize("payload", sorted(COMMITTED.glob("*/*.livepatch")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_direct_calls_are_what_classify_calls_calls(payload: Path) -> None:
    """Arch.direct_calls(), the rules' first stage, says "a call" exactly where classify() says
    Kind.CALL for a call/jmp form (never for anything else), for every relocation of every committed
    payload; the fields it leaves to classify() are the rest."""
    elf = ElfFile(payload.read_bytes(), payload.name)
    arch = arch_for(elf)
    secs = elf.sections
    for idx in elf.relocation_sections:
        table = elf.relocations(idx)
        target = secs.info[idx]
        section, data = secs[target], elf.section_data(target)
        start = section.sh_offset if section.executable and section.has_file_data else -1
        rows = range(table.count)
        calls = arch.direct_calls(elf.data, rows, list(table.types), [start] * table.count, list(table.offsets))
        for rtype, off, call in zip(table.types, table.offsets, calls, strict=True):
            kind = arch.classify(rtype, section, data, off)
            if call:
                assert kind is not None and kind.kind is K.CALL, (section.name, off)
            elif kind is not None and kind.kind is K.CALL and arch is X86:
                # Left to classify(): only a jcc (0F 8x) or a form the shortcut does not read.
                assert data[off - 1] not in (0xE8, 0xE9), (section.name, off)


def test_x86_direct_calls_reads_the_byte_before_the_field_in_code_only() -> None:
    # A file whose code section starts at 8: call, jmp, call bytes in data, ABS64, lea, then a
    # field at the section's offset 0 whose byte before (the file's, not the section's) is E8.
    data = bytes(7) + b"\xe8" + bytes([0xE8, 0, 0xE9, 0, 0xE8, 0, 0xE8, 0, 0x8D, 0])
    rel32 = [_PC32, _PLT32, _PC32, 1, _PC32, _PC32]
    starts = [8, 8, -1, 8, 8, 8]
    offsets = [1, 3, 5, 7, 9, 0]
    assert X86.direct_calls(data, range(6), rel32, starts, offsets) == [True, True, False, False, False, False]
    assert X86.direct_calls(data, [4, 0, 5], rel32, starts, offsets) == [False, True, False], "read at rows"
    arm = [_code(ARM, "R_ARM_CALL"), _code(ARM, "R_ARM_ABS32")]
    assert ARM.direct_calls(bytes(2), range(2), arm, [0, 0], [1, 1]) == [True, False]
    assert ARM.direct_calls(bytes(2), [1], arm, [0, 0], [1, 1]) == [False]


def test_arm_branch_bias_is_the_pipeline_offset() -> None:
    """BL's implicit addend is -8 because the CPU reads PC as the instruction plus 8."""
    bl = memoryview(struct.pack("<I", 0xEBFFFFFE))  # bl . (imm24 = -2 words)
    code = _code(ARM, "R_ARM_CALL")
    c = ARM.classify(code, TEXT, bl, 0)
    assert c is not None and c.bias == 8 and ARM.implicit_addend(code, bl, 0) == -8


# -- the keep list (decide.ExemptSections) ------------------------------------------------


def test_keep_list_defaults_and_patterns() -> None:
    exempt = ExemptSections(Policy(keep_sections=(".rodata.rel_*",)))
    for name in (".livepatch.funcs", ".livepatch.hooks.load", ".altinstructions", ".ex_table", ".bug_frames.0"):
        assert exempt(name), name
    assert exempt(".ARM.exidx.text.foo") and exempt(".rodata.rel_table")
    for name in (".text", ".data", ".bug_frames", ".ex_table.x", ".rodata.rel", ".eh_frame_hdr"):
        assert not exempt(name), name
    # Patterns match the whole name, shell-style, case-sensitively.
    assert not exempt(".EX_TABLE") and not exempt("x.ex_table")


def test_keep_list_without_defaults_keeps_only_what_is_not_negotiable() -> None:
    exempt = ExemptSections(Policy(default_keep=False))
    assert exempt(".livepatch.funcs") and exempt(".livepatch.hooks.unload")
    assert not exempt(".altinstructions") and not exempt(".ex_table")


def test_keep_lists_share_verdicts_only_with_the_same_patterns() -> None:
    a, b = ExemptSections(Policy()), ExemptSections(Policy())
    c = ExemptSections(Policy(keep_sections=(".text*",)))
    assert a._cache is b._cache and a._cache is not c._cache
    assert not a(".text.foo") and c(".text.foo") and not b(".text.foo")


@pytest.mark.parametrize("seed", range(4))
def test_keep_list_matches_as_fnmatch_does(seed: int) -> None:
    """Literal names and ``prefix*`` are matched without a regex; every verdict is fnmatchcase's."""
    import fnmatch
    import random

    patterns = (".ex_table", ".bug_frames.*", "foo?bar", "x[ab]*", "*.cold", "pre*fix*", "a*b", ".ARM.exidx*")
    exempt = ExemptSections(Policy(default_keep=False, keep_sections=patterns))
    rng = random.Random(seed)
    names = [".ex_table", ".ex_table1", ".bug_frames.", ".bug_frames\n", "fooXbar", "xa", "x.cold", "a\nb"]
    names += ["".join(rng.choice("ab.*?x[]\nfoprexit_c") for _ in range(rng.randint(0, 9))) for _ in range(2000)]
    for name in names:
        want = any(fnmatch.fnmatchcase(name, p) for p in exempt.patterns)
        assert exempt(name) == want, name


# -- the entry lookup (decide._Entries) --------------------------------------------------


def _rep(n: int, offset: int, size: int) -> Replacement:
    return Replacement(n, f"f{n}", 1, offset, size, 0, None, 0)


def test_entries_exact_and_body_lookup() -> None:
    entries = _Entries()
    for n, (offset, size) in enumerate([(0x40, 0x20), (0x0, 0x10), (0x100, 0)]):
        entries.add(n, _rep(n, offset, size))
    assert entries.exact == {0x40: 0, 0x0: 1, 0x100: 2}
    assert entries.body(0x0) == 1 and entries.body(0xF) == 1
    assert entries.body(0x10) is None and entries.body(0x3F) is None
    assert entries.body(0x41) == 0 and entries.body(0x5F) == 0 and entries.body(0x60) is None
    # A size-0 replacement still covers its entry byte.
    assert entries.body(0x100) == 2 and entries.body(0x101) is None


def test_entries_first_replacement_wins_at_one_entry_and_overlaps_resolve_to_the_first_start() -> None:
    entries = _Entries()
    entries.add(0, _rep(0, 0x10, 0x100))  # a body that spans the next one (no compiler emits this)
    entries.add(1, _rep(1, 0x20, 0x10))
    entries.add(2, _rep(2, 0x10, 0x8))  # a second entry at 0x10
    assert entries.exact[0x10] == 0
    assert entries.body(0x24) == 0  # inside both 0 and 1: the one that starts first
    assert entries.body(0x10F) == 0 and entries.body(0x110) is None
    entries.add(3, _rep(3, 0x200, 4))  # adding after a lookup re-sorts
    assert entries.body(0x202) == 3

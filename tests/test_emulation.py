"""The crash the rewrite prevents, reproduced and shown gone by execution (unicorn).

For x86-64, AArch64 and 32-bit Arm, a small "hypervisor" (testdata/emu/hv.c,
linked at Xen's address, also used as the ``xen-syms`` the payloads resolve
against) and payloads built by the real compilers (testdata/emu/emu_*.c,
scripts/build_emulation.py) go through the life cycle Xen gives them:

1. **load**: :func:`lp_rewrite.loader.load` places, resolves and relocates
   the payload the way Xen does; its three regions are mapped (RX, RW, RO);
2. **apply**: the load hooks run, then each replaced function's entry gets
   Xen's branch (x86 ``jmp rel32``, AArch64 ``B``, Arm ``B`` with Xen's
   encoding), its old bytes saved (``apply_payload()``'s order);
3. calls through the pointers the hooks stored, and through the patched
   entries, run the new code;
4. **revert** restores the saved bytes; **unload** unmaps the payload;
5. calls through the stored pointers again: the *raw* payload's pointer
   faults on the unmapped payload address, the *rewritten* one runs the
   original and returns its value.

Every scenario runs on the committed objects and on a fresh build, for the
raw payload and for its rewrite (``lp_rewrite.rewrite`` at test time).
Capstone only decorates failure messages.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lp_rewrite import rewrite
from lp_rewrite.loader import LoadedPayload, load
from lp_rewrite.xensyms import XenSymbols
from tests.conftest import ARCHES, FIXTURE_SETS, TESTDATA, build_fresh

uc = pytest.importorskip("unicorn")

EMU = TESTDATA / "emu"
COMMITTED = EMU / "build"
VARIANTS = ("raw", "rewritten")
# Where payloads are loaded: in branch range of the hypervisor, like Xen's livepatch area.
PAYLOAD_BASE = {"x86_64": 0x0000_0000_4040_0000, "aarch64": 0x0000_0A00_0040_0000, "arm": 0x0040_0000}
STACK_TOP = {"x86_64": 0x0000_0000_4F00_0000, "aarch64": 0x0000_0A00_0F00_0000, "arm": 0x0F00_0000}
STACK_SIZE = 0x10000
# Calls return here; it is mapped, and emulation stops on reaching it.
SENTINEL = {"x86_64": 0x0000_0000_4E00_0000, "aarch64": 0x0000_0A00_0E00_0000, "arm": 0x0E00_0000}
PAGE = 0x1000
MAX_INSNS = 200_000

pytestmark = pytest.mark.emulation


def _page_range(start: int, end: int) -> tuple[int, int]:
    lo = start & ~(PAGE - 1)
    hi = (end + PAGE - 1) & ~(PAGE - 1)
    return lo, hi - lo


# -- the emulated machine ------------------------------------------------------


@dataclass
class Fault:
    """A call that did not return: what unicorn reported and where."""

    error: str
    address: int | None  # the unmapped address, for memory faults
    pc: int

    def __repr__(self) -> str:
        at = f" at {self.address:#x}" if self.address is not None else ""
        return f"Fault({self.error}{at}, pc={self.pc:#x})"


@dataclass
class Mapped:
    regions: list[tuple[int, int]]  # (address, size) of each mapped region


@dataclass
class Machine:
    """The hypervisor image in an emulated CPU, with calls into it."""

    arch: str
    hv: Path
    symbols: XenSymbols = field(init=False)
    emu: Any = field(init=False)
    saved: dict[int, bytes] = field(default_factory=dict)
    trace: list[int] | None = None
    last_fault_address: int | None = None

    def __post_init__(self) -> None:
        self.symbols = XenSymbols.from_xen_syms(self.hv)
        if self.arch == "x86_64":
            self.emu = uc.Uc(uc.UC_ARCH_X86, uc.UC_MODE_64)
        elif self.arch == "aarch64":
            self.emu = uc.Uc(uc.UC_ARCH_ARM64, uc.UC_MODE_ARM)
        else:
            self.emu = uc.Uc(uc.UC_ARCH_ARM, uc.UC_MODE_ARM)
            self.emu.ctl_set_cpu_model(uc.arm_const.UC_CPU_ARM_CORTEX_A15)
        self._map_image()
        self.emu.mem_map(STACK_TOP[self.arch] - STACK_SIZE, STACK_SIZE, uc.UC_PROT_READ | uc.UC_PROT_WRITE)
        self.emu.mem_map(SENTINEL[self.arch], PAGE, uc.UC_PROT_ALL)
        self.emu.hook_add(uc.UC_HOOK_MEM_UNMAPPED | uc.UC_HOOK_MEM_PROT, self._on_bad_access)

    def _map_image(self) -> None:
        from elftools.elf.elffile import ELFFile

        with open(self.hv, "rb") as f:
            elf = ELFFile(f)
            for seg in elf.iter_segments():
                if seg["p_type"] != "PT_LOAD":
                    continue
                start, size = _page_range(seg["p_vaddr"], seg["p_vaddr"] + seg["p_memsz"])
                prot = uc.UC_PROT_READ
                prot |= uc.UC_PROT_WRITE if seg["p_flags"] & 2 else 0
                prot |= uc.UC_PROT_EXEC if seg["p_flags"] & 1 else 0
                self.emu.mem_map(start, size, prot)
                self.emu.mem_write(seg["p_vaddr"], seg.data())

    def _on_bad_access(self, _emu: Any, _access: int, address: int, _size: int, _value: int, _data: Any) -> bool:
        self.last_fault_address = address
        return False

    def address(self, name: str) -> int:
        found = self.symbols.lookup(name)
        assert found is not None, f"{name} is not in {self.hv}"
        return found.address

    def read_int(self, name: str) -> int:
        value: int = struct.unpack("<i", bytes(self.emu.mem_read(self.address(name), 4)))[0]
        return value

    # -- calls ----------------------------------------------------------------

    def call(self, function: str | int, *args: int) -> int | Fault:
        """Run a function to its return; its int result, or the Fault that stopped it."""
        from unicorn import arm64_const as a64
        from unicorn import arm_const as a32
        from unicorn import x86_const as x86

        entry = self.address(function) if isinstance(function, str) else function
        back, sp = SENTINEL[self.arch], STACK_TOP[self.arch] - 0x100
        e = self.emu
        if self.arch == "x86_64":
            for reg, val in zip((x86.UC_X86_REG_RDI, x86.UC_X86_REG_RSI), args, strict=False):
                e.reg_write(reg, val & (2**64 - 1))
            sp -= 8  # the return address: rsp % 16 == 8 at entry, as after a call
            e.mem_write(sp, struct.pack("<Q", back))
            e.reg_write(x86.UC_X86_REG_RSP, sp)
            ret, pc = x86.UC_X86_REG_RAX, x86.UC_X86_REG_RIP
        elif self.arch == "aarch64":
            for reg, val in zip((a64.UC_ARM64_REG_X0, a64.UC_ARM64_REG_X1), args, strict=False):
                e.reg_write(reg, val & (2**64 - 1))
            e.reg_write(a64.UC_ARM64_REG_X30, back)
            e.reg_write(a64.UC_ARM64_REG_SP, sp)
            ret, pc = a64.UC_ARM64_REG_X0, a64.UC_ARM64_REG_PC
        else:
            for reg, val in zip((a32.UC_ARM_REG_R0, a32.UC_ARM_REG_R1), args, strict=False):
                e.reg_write(reg, val & (2**32 - 1))
            e.reg_write(a32.UC_ARM_REG_LR, back)
            e.reg_write(a32.UC_ARM_REG_SP, sp)
            ret, pc = a32.UC_ARM_REG_R0, a32.UC_ARM_REG_PC
        self.last_fault_address = None
        try:
            e.emu_start(entry, back, count=MAX_INSNS)
        except uc.UcError as exc:
            return Fault(str(exc), self.last_fault_address, e.reg_read(pc))
        if e.reg_read(pc) != back:
            return Fault(f"did not return within {MAX_INSNS} instructions", None, e.reg_read(pc))
        value: int = e.reg_read(ret) & 0xFFFFFFFF
        return value - (1 << 32) if value >> 31 else value

    def traced(self, low: int, high: int) -> AbstractContextManager[None]:
        """Record every instruction executed in [low, high) while the context is open."""
        import contextlib

        @contextlib.contextmanager
        def ctx() -> Iterator[None]:
            self.trace = []

            def on_code(_emu: Any, address: int, _size: int, _data: Any) -> None:
                assert self.trace is not None
                self.trace.append(address)

            handle = self.emu.hook_add(uc.UC_HOOK_CODE, on_code, begin=low, end=high - 1)
            try:
                yield
            finally:
                self.emu.hook_del(handle)

        return ctx()

    # -- Xen's life cycle -------------------------------------------------------

    def map_payload(self, loaded: LoadedPayload) -> Mapped:
        prot = {"text": uc.UC_PROT_READ | uc.UC_PROT_EXEC, "rw": uc.UC_PROT_READ | uc.UC_PROT_WRITE}
        out = []
        for region in loaded.layout.regions.values():
            if not region.data:
                continue
            start, size = _page_range(region.address, region.end)
            self.emu.mem_map(start, size, prot.get(region.kind, uc.UC_PROT_READ))
            self.emu.mem_write(region.address, bytes(region.data))
            out.append((start, size))
        return Mapped(out)

    def unload(self, mapped: Mapped) -> None:
        """free_payload_data(): the payload's memory is gone."""
        for start, size in mapped.regions:
            self.emu.mem_unmap(start, size)

    def apply(self, loaded: LoadedPayload) -> None:
        """apply_payload(): run the load hooks, then patch every function's entry."""
        for hook in loaded.load_hooks:
            result = self.call(hook)
            assert not isinstance(result, Fault), f"load hook {hook:#x}: {result}\n{self.disasm(hook)}"
        for f in loaded.functions:
            insn = xen_branch(self.arch, f.old_addr, f.new_addr)
            self.saved[f.old_addr] = bytes(self.emu.mem_read(f.old_addr, len(insn)))
            self.write_code(f.old_addr, insn)

    def revert(self) -> None:
        """revert_payload(): the saved bytes go back."""
        for address, old in self.saved.items():
            self.write_code(address, old)
        self.saved.clear()

    def write_code(self, address: int, insn: bytes) -> None:
        """Patch code, dropping translations of it (Xen flushes the caches likewise)."""
        self.emu.mem_write(address, insn)
        self.emu.ctl_remove_cache(address, address + len(insn))

    def disasm(self, address: int, count: int = 8) -> str:
        """Capstone listing at ``address`` (for failure messages only)."""
        import capstone

        mode = {
            "x86_64": (capstone.CS_ARCH_X86, capstone.CS_MODE_64),
            "aarch64": (capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM),
            "arm": (capstone.CS_ARCH_ARM, capstone.CS_MODE_ARM),
        }[self.arch]
        try:
            code = bytes(self.emu.mem_read(address, 4 * count + 8))
        except uc.UcError:
            return f"  {address:#x}: <not mapped>"
        md = capstone.Cs(*mode)
        lines = [f"  {i.address:#x}: {i.mnemonic} {i.op_str}" for i in md.disasm(code, address)]
        return "\n".join(lines[:count])


def xen_branch(arch: str, old: int, new: int) -> bytes:
    """The instruction Xen writes at the original entry (arch_livepatch_apply())."""
    if arch == "x86_64":
        return b"\xe9" + struct.pack("<i", new - (old + 5))  # jmp rel32
    if arch == "aarch64":
        return struct.pack("<I", 0x14000000 | (((new - old) >> 2) & 0x3FFFFFF))  # B
    delta = ((new - (old + 8)) >> 2) & 0x00FFFFFF  # B: PC reads as the instruction + 8
    return struct.pack("<I", 0xEA000000 | delta)


# -- the payloads, raw and rewritten --------------------------------------------


@dataclass(frozen=True)
class EmuCase:
    fixture_set: str
    arch: str

    @property
    def id(self) -> str:
        return f"{self.fixture_set}-{self.arch}"


CASES = [pytest.param(EmuCase(s, a), id=EmuCase(s, a).id) for s in FIXTURE_SETS for a in ARCHES]


def _arch_of(case: object) -> str:
    """The architecture of the EmuCase a pytest.param of CASES holds."""
    assert isinstance(case, EmuCase)
    return case.arch


@pytest.fixture(scope="session")
def fresh_emu_dir(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    return build_fresh(tmp_path_factory, "build_emulation")


@pytest.fixture
def emu_dir(request: pytest.FixtureRequest, fresh_emu_dir: Path | None) -> Path:
    case: EmuCase = request.node.callspec.params["case"]
    if case.fixture_set == "committed":
        return COMMITTED / case.arch
    if fresh_emu_dir is None:
        pytest.skip("cross compilers missing: cannot rebuild testdata/emu (see scripts/test.sh)")
    return fresh_emu_dir / case.arch


@dataclass
class Run:
    """One payload through Xen's life cycle on a fresh machine."""

    machine: Machine
    loaded: LoadedPayload
    mapped: Mapped

    def entry_of(self, name: str) -> int:
        """new_addr of the replacement of ``name`` (the address a raw pointer holds)."""
        return next(f.new_addr for f in self.loaded.functions if f.name == name)

    def unload(self) -> None:
        self.machine.revert()
        self.machine.unload(self.mapped)


def start(emu_dir: Path, arch: str, payload: str, variant: str) -> Run:
    machine = Machine(arch, emu_dir / "hv.elf")
    source = emu_dir / f"{payload}.livepatch"
    data = source.read_bytes() if variant == "raw" else rewrite(source).output
    loaded = load(data, machine.symbols, PAYLOAD_BASE[arch], name=f"{payload} ({variant})")
    # The Arm payloads avoid Xen's arm32 B/BL masking (scripts/build_emulation.py): check it.
    assert loaded.misdirected_branches() == [], loaded.misdirected_branches()
    mapped = machine.map_payload(loaded)
    machine.apply(loaded)
    return Run(machine, loaded, mapped)


def expect_fault_at(result: int | Fault, address: int, machine: Machine) -> None:
    assert isinstance(result, Fault), f"returned {result}, expected a fault at {address:#x}"
    assert "UC_ERR_FETCH_UNMAPPED" in result.error, result
    assert result.address == address or result.pc == address, f"{result}: expected {address:#x}"


def check(result: int | Fault, expected: int, machine: Machine, what: str) -> None:
    if isinstance(result, Fault):
        where = result.address if result.address is not None else result.pc
        pytest.fail(f"{what}: {result}\n{machine.disasm(result.pc)}\n(near {where:#x})")
    assert result == expected, f"{what}: returned {result}, expected {expected}"


# -- scenarios --------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES)
def test_stored_pointer_after_revert_and_unload(case: EmuCase, variant: str, emu_dir: Path) -> None:
    """The thread's bug: a load hook registers the replaced function; Xen unloads the payload."""
    run = start(emu_dir, case.arch, "emu_hook", variant)
    m = run.machine
    check(m.call("call_handler", 1), 2001, m, "stored pointer while applied")
    check(m.call("call_original", 1), 2001, m, "patched entry while applied")
    run.machine.revert()
    check(m.call("call_original", 1), 1001, m, "entry after revert")
    # Reverted, not yet unloaded: the payload's memory is still there.
    check(m.call("call_handler", 1), 2001 if variant == "raw" else 1001, m, "stored pointer after revert")
    m.unload(run.mapped)
    after = m.call("call_handler", 1)
    if variant == "raw":
        expect_fault_at(after, run.entry_of("hv_original"), m)
    else:
        check(after, 1001, m, "stored pointer after unload")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES)
def test_several_functions_stored_from_a_payload_table(case: EmuCase, variant: str, emu_dir: Path) -> None:
    """Three replaced functions (one static) stored at once, via a table in payload data."""
    run = start(emu_dir, case.arch, "emu_multi", variant)
    m = run.machine
    new: dict[int, Callable[[int], int]] = {0: lambda x: x + 2000, 1: lambda x: 3 * x + 2000, 2: lambda x: x + 6000}
    old: dict[int, Callable[[int], int]] = {0: lambda x: x + 1000, 1: lambda x: 3 * x + 1000, 2: lambda x: x + 5000}
    names = {0: "hv_original", 1: "hv_second", 2: "common/hv.c#hv_local"}
    for slot, fn in new.items():
        check(m.call("call_slot", slot, 7), fn(7), m, f"slot {slot} while applied")
    check(m.call("call_local", 7), new[2](7), m, "the static original's patched entry")
    run.unload()
    check(m.call("call_local", 7), old[2](7), m, "the static original after revert")
    for slot, fn in old.items():
        after = m.call("call_slot", slot, 7)
        if variant == "raw":
            expect_fault_at(after, run.entry_of(names[slot]), m)
        else:
            check(after, fn(7), m, f"slot {slot} after unload")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES)
def test_pointer_equality(case: EmuCase, variant: str, emu_dir: Path) -> None:
    """&hv_original taken by payload code equals the hypervisor's only once rewritten."""
    run = start(emu_dir, case.arch, "emu_equal", variant)
    m = run.machine
    same = 1 if variant == "rewritten" else 0
    check(m.call("hv_is_original"), same, m, "hypervisor compares the payload's &hv_original")
    assert m.read_int("hv_payload_says_equal") == same, "payload compares the hypervisor's &hv_original"
    run.unload()
    check(m.call("hv_is_original"), same, m, "after unload")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES)
def test_cold_part_jumps_back_into_the_new_body(case: EmuCase, variant: str, emu_dir: Path) -> None:
    """hv_checked.cold's jump back stays in the new body while applied; the pointer moves."""
    run = start(emu_dir, case.arch, "emu_cold", variant)
    m = run.machine
    loaded = run.loaded
    hot = _section_span(loaded, ".text.hv_checked")
    cold = _section_span(loaded, ".text.unlikely.hv_checked")
    bias, weights = 300, range(1, 9)
    expect = 11 * -5 + 11 * -4 + bias
    text = loaded.layout.regions["text"]
    with m.traced(text.address, text.end):
        got = m.call("call_checked", -5)
    check(got, expect + 9000, m, "the patched entry, cold path")
    assert m.read_int("hv_last_note") == expect
    acc = struct.unpack("<8i", bytes(m.emu.mem_read(m.address("hv_acc"), 32)))
    assert list(acc) == [expect + w for w in weights]
    trace = m.trace or []
    assert any(cold[0] <= a < cold[1] for a in trace), "the cold part did not run"
    last_cold = max(i for i, a in enumerate(trace) if cold[0] <= a < cold[1])
    back = trace[last_cold + 1] if last_cold + 1 < len(trace) else None
    assert back is not None and hot[0] < back < hot[1], (
        f"after the cold part, execution went to {back if back is None else hex(back)}, "
        f"not into the new body {hot[0]:#x}..{hot[1]:#x}\n{m.disasm(trace[last_cold])}"
    )
    check(m.call("call_handler", 5), 10 + 9000, m, "stored pointer while applied (hot path)")
    run.unload()
    after = m.call("call_handler", -5)
    if variant == "raw":
        expect_fault_at(after, run.entry_of("hv_checked"), m)
    else:
        check(after, -7000, m, "stored pointer after unload")


def _section_span(loaded: LoadedPayload, name: str) -> tuple[int, int]:
    for placed in loaded.sections.values():
        if placed.name == name:
            return placed.address, placed.address + placed.size
    raise AssertionError(f"{loaded.name} has no {name}")


# -- Xen's own arm32 quirk ----------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in CASES if _arch_of(c.values[0]) == "arm"])
def test_xen_arm32_branch_mask_where_the_cpu_goes(case: EmuCase, emu_dir: Path) -> None:
    """Xen encodes R_ARM_CALL/JUMP24 with ``& 0x00FFFFFE``: an odd word offset lands 4 bytes short.

    emu_bl is emu_cold.c with plain B/BL. Every unconditional branch Xen
    relocated is stepped once on the CPU: it must land where the loader says
    Xen's encoding sends it. The committed build has such a misdirected call
    (hv_checked's `bl lp_slow`): the cold path then runs the instruction
    before lp_slow, a tail call to register_handler, and returns garbage.
    """
    from unicorn import arm_const as a32

    machine = Machine("arm", emu_dir / "hv.elf")
    loaded = load((emu_dir / "emu_bl.livepatch").read_bytes(), machine.symbols, PAYLOAD_BASE["arm"], name="emu_bl")
    machine.map_payload(loaded)
    misdirected = {(m.relocation.section, m.relocation.offset): m for m in loaded.misdirected_branches()}
    stepped = 0
    for r in loaded.relocations:
        if r.rtype not in (28, 29) or struct.unpack("<I", r.after)[0] >> 28 != 0xE:
            continue  # conditional branches would need their flags set
        machine.emu.emu_start(r.p, 0, count=1)
        landed = machine.emu.reg_read(a32.UC_ARM_REG_PC)
        m = misdirected.get((r.section, r.offset))
        assert landed == (m.actual if m else r.s + r.a + 8), f"{loaded.sections[r.section].name}+{r.offset:#x}"
        stepped += 1
    assert stepped
    if case.fixture_set == "committed":
        assert misdirected, "the committed emu_bl shows the quirk"
        machine.apply(loaded)
        right = 11 * -5 + 11 * -4 + 300 + 9000
        assert machine.call("call_checked", -5) != right

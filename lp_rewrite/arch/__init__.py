"""Per-architecture relocation semantics behind one small interface.

One module per target (``x86_64``, ``aarch64``, ``arm``), in the manner of
lld's ``ELF/Arch/*``. Each module states, for its architecture only:

* which relocation types Xen's loader applies (anything else is refused),
* how a REL place stores its implicit addend, and how to write a new one,
* what a relocation *is* at its place (:meth:`Arch.classify`, as lld's
  ``TargetInfo::getRelExpr``): an absolute pointer, a PC-relative offset, a
  call or jump, an address materialised in a register (whole, or the page
  or high piece of a pair), a memory access, or nothing; its width and
  reach; and the *bias* from ``S + A`` to the address the field actually
  designates (the "effective target" the rewriter compares with a
  replacement's entry point). The rewrite (``decide``), the gate
  (``check``) and the loader model all read this one classification,
  and no module outside ``arch/`` names a relocation type,
* why Xen refuses the types it does not apply, and how to build without them,
* how Xen computes and range-checks each type (for the Xen-semantics loader),
* which places Xen applies, but not as the type's ELF definition says
  (:meth:`Arch.misapplied`): the payload loads, with a wrong value.
"""

from __future__ import annotations

import enum
import importlib
import mmap
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set
from functools import cached_property
from types import MappingProxyType
from typing import Final, NamedTuple

from lp_rewrite.elf import consts as C
from lp_rewrite.elf.file import ElfFile, Section
from lp_rewrite.errors import InputError
from lp_rewrite.livepatch_abi import LIVEPATCH_OPAQUE_SIZE


class Kind(enum.Enum):
    """What a relocated field is: what the code or data does with the address it designates."""

    NONE = "none"  # writes nothing (R_*_NONE)
    POINTER = "pointer"  # an absolute address stored as data (a pointer, a literal pool)
    OFFSET = "offset"  # a PC-relative data word: an offset from its place, meaningless elsewhere
    CALL = "call"  # a direct call or jump: control goes there, nothing is kept
    ADDRESS = "address"  # code that materialises the whole address in a register (lea, adr, add :lo12:, movw)
    PAGE = "page"  # the page or high piece of a page/low-bits pair (adrp, movt): its partner completes it
    MEMORY = "memory"  # code that reads or writes memory at the address (ldr :lo12:, x86 memory operands)


class RelocType(NamedTuple):
    """A type Xen's loader applies on one target, as its arch module states it."""

    code: int
    name: str
    # What the field is wherever it sits; x86 rel32 in code is refined by decoding (Arch.classify).
    kind: Kind
    width: int  # bytes of the place the loader reads/writes
    # How far from its place a PC-relative field can designate (bytes, either
    # way); None when it holds an address, or a piece that others complete.
    reach: int | None = None
    bias: int = 0  # bytes from S + A to the address designated, when the type alone says (Arm B/BL: 8)


class Classification(NamedTuple):
    """One relocation at its place, classified (:meth:`Arch.classify`; lld's ``RelExpr``)."""

    type: RelocType
    kind: Kind
    # Bytes from ``S + A`` to the address the field designates: x86-64 rel32 in
    # code is relative to the end of its instruction, Arm B/BL read PC as the
    # instruction plus 8; everything else designates ``S + A``.
    bias: int
    # Why the place could not be decoded; ``kind`` and ``bias`` are then the
    # worst case (an address), and the rewrite refuses to rely on them.
    note: str = ""

    @property
    def name(self) -> str:
        return self.type.name

    @property
    def width(self) -> int:
        return self.type.width

    @property
    def reach(self) -> int | None:
        return self.type.reach


# Build hints for the types an architecture refuses (Arch.refusal_hint()).
GOT_HINT: Final = (
    "a GOT reference: the symbol has default visibility; build with -fvisibility=hidden or "
    "#pragma GCC visibility push(hidden), as Xen does, so that -fpic code reaches it PC-relative"
)
DEFAULT_HINT: Final = "rebuild with the flags Xen uses for its own code"


class AddressSite(NamedTuple):
    """An instruction that computes a PC-relative address in its own section (see address_computations())."""

    insn: int  # offset of the instruction in the section
    field: int  # offset of the bytes a relocation would cover, were there one
    target: int  # offset in the same section of the address it computes
    text: str  # the instruction, for messages


class LoadError(Exception):
    """A relocation Xen's loader would refuse (message: Xen's wording)."""


class Arch(ABC):
    """Relocation semantics of one Xen livepatch target."""

    name: str
    machine: int
    elfclass: int
    # Section types Xen's loader applies on this target.
    rel_section_types: frozenset[int]
    # Exactly the relocation types Xen applies; anything else fails the load.
    types: Mapping[int, RelocType]
    # Bytes Xen overwrites at the original function's entry when applying.
    patch_insn_size: int
    # ARCH_LIVEPATCH_RANGE: how far the branch Xen writes at an original's
    # entry reaches, so the farthest a payload's code is from a function it
    # patches (livepatch_verify_distance()).
    livepatch_range: int
    # The type that stores an absolute pointer (``struct livepatch_func``'s
    # name/new_addr/old_addr fields, hook tables).
    pointer_type: int
    # Whether GNU ld -r (binutils 2.40) keeps an undefined STB_LOCAL symbol.
    # x86-64 does; the AArch64 and Arm back ends fail with "undefined
    # reference" (tests/test_local_aliases.py shows both).
    ld_r_keeps_undefined_locals: bool = False
    # Common types Xen does *not* apply: (name, what it is and how to build
    # without it), for readable refusals (LP003).
    other_types: Mapping[int, tuple[str, str]] = MappingProxyType({})

    def type_name(self, code: int) -> str:
        t = self.types.get(code)
        if t is not None:
            return t.name
        other = self.other_types.get(code)
        return other[0] if other is not None else f"type {code}"

    def refusal_hint(self, code: int) -> str:
        """What a type Xen refuses here is there for, and what to build differently."""
        other = self.other_types.get(code)
        return other[1] if other is not None else DEFAULT_HINT

    def place_width(self, code: int) -> int:
        """Bytes of the place a type reads and writes (a word when the type does not say, or is unknown)."""
        t = self.types.get(code)
        return t.width if t is not None and t.width else 4

    @cached_property
    def _plain(self) -> dict[int, Classification]:
        return {code: Classification(t, t.kind, t.bias) for code, t in self.types.items()}

    def classify(self, rtype: int, section: Section, data: memoryview, offset: int) -> Classification | None:
        """What relocation type ``rtype`` is at ``offset`` of ``section`` (``data``): lld's ``getRelExpr``.

        None when Xen's loader does not apply the type on this target (the
        payload is refused: LP003, and ``rewrite`` refuses it). Most types say
        everything themselves; x86-64 decodes the instruction that holds a
        rel32 field in code. A place that cannot be decoded is classified as
        the worst case, with a ``note`` saying why.
        """
        return self._plain.get(rtype)

    def direct_calls(
        self,
        data: bytes | mmap.mmap,
        rows: Iterable[int],
        rtypes: Sequence[int],
        starts: Sequence[int],
        offsets: Sequence[int],
    ) -> list[bool]:
        """Whether each field of ``rows`` surely is a direct call or jump (:meth:`classify` says ``Kind.CALL``).

        Field ``r`` has type ``rtypes[r]`` and lies ``offsets[r]`` bytes into
        a section whose contents start at ``data[starts[r]]`` (the object's
        bytes), or -1 when that section is not code in the file. Answered for
        every field at once, in one pass (the columns are read at ``rows``
        only): a first stage for the rules that leave calls out, which then
        classify only the rest. False means "classify it".
        """
        calls = self._call_types
        return [rtypes[r] in calls for r in rows]

    @cached_property
    def _call_types(self) -> frozenset[int]:
        return frozenset(code for code, t in self.types.items() if t.kind is Kind.CALL)

    def check_header(self, elf: ElfFile) -> None:
        """Raise InputError unless Xen would accept this object's header."""
        if elf.elfclass != self.elfclass:
            raise InputError(f"{self.name} payloads must be ELFCLASS{32 if self.elfclass == 1 else 64}")

    def verify_elf(self, ident: bytes, e_flags: int) -> str | None:
        """arch_livepatch_verify_elf(): Xen's message when it refuses this header, else None."""
        return None if ident[C.EI_CLASS] == self.elfclass else "Unsupported ELF Machine type"

    # The bytes an indirect branch must land on (CET-IBT's ENDBR64 on x86-64),
    # and what Xen's seal_endbr64() turns them into at boot; None elsewhere.
    landing_pad: bytes | None = None
    sealed_landing_pad: bytes | None = None

    # Bits of a function symbol's value that are not its address (32-bit Arm: the Thumb bit).
    function_value_flags: int = 0

    # Whether arch_livepatch_symbol_deny() refuses some symbol names here (symbol_denied()).
    denies_symbols: bool = False

    def symbol_denied(self, name: bytes) -> bool:
        """arch_livepatch_symbol_deny(): a symbol whose presence makes Xen refuse the payload."""
        return False

    # Xen's message for a relocation section whose type (REL/RELA) it does not apply here.
    rel_type_refusal: str = ""

    def implicit_addend(self, rtype: int, data: memoryview | bytearray, offset: int) -> int:
        """The addend a REL place holds (only targets with REL need this)."""
        raise InputError(f"{self.name}: SHT_REL relocations are not supported by Xen on this target")

    def write_implicit_addend(self, rtype: int, data: bytearray, offset: int, addend: int) -> None:
        """Re-encode a REL place so that it holds ``addend``."""
        raise InputError(f"{self.name}: SHT_REL relocations are not supported by Xen on this target")

    def misapplied_types(self, rela: bool) -> frozenset[int]:
        """The types whose places :meth:`misapplied` must see (in SHT_RELA or
        SHT_REL sections); empty, the default, skips the scan altogether."""
        return frozenset()

    # How to build a payload without the places misapplied() reports.
    misapplied_fix: str = ""
    # How to take an address that a field of short reach cannot (see reaches_hypervisor()).
    out_of_reach_fix: str = ""

    def misapplied(self, rtype: int, addend: int, data: memoryview, offset: int, rela: bool) -> str | None:
        """Why Xen's loader would not compute what this type means here, or None.

        Xen applies the place without complaint but to a different value, so
        the payload would run with a wrong address; the rewriter refuses such
        a payload rather than reason about either value. ``addend`` is the
        explicit (RELA) or implicit (REL) addend, ``data`` the relocated section.
        """
        return None

    def branch_landing(self, rtype: int, place: bytes, s: int, a: int, p: int) -> tuple[int, int] | None:
        """(named target, where the CPU goes) of a branch Xen relocated, where Xen may encode them apart.

        None on targets whose loader encodes every branch exactly (all but
        32-bit Arm, see :attr:`misencodes_branches`).
        """
        return None

    # The letter of this target's code mapping symbols ($a, $x), which Xen's
    # arch_livepatch_symbol_ok() leaves out of a payload's symbols with $d.
    mapping_symbol_code: str | None = None

    def symbol_ok(self, name: str) -> bool:
        """Whether Xen keeps this defined symbol in the payload's symbol table."""
        code = self.mapping_symbol_code
        if code is None or len(name) < 2 or name[0] != "$" or (len(name) > 2 and name[2] != "."):
            return True
        return name[1] not in ("d", code)

    # Whether Xen's loader can encode a branch to another address than it
    # names (32-bit Arm: ``& 0x00FFFFFE``); branch_landing() says where.
    misencodes_branches: bool = False

    # How the hypervisor checks alignment, where it does: a 32-bit read at an
    # address that is not 4-aligned (a note header, lp_rewrite/notes.py) is
    # then a Data Abort in the hypervisor. None: the CPU reads it as is.
    alignment_checking: str | None = None

    # Where the hypervisor is linked (its functions' addresses), for synthetic symbol tables.
    hypervisor_base: int

    def verify_func(self, new_addr: int, new_size: int, old_size: int) -> str | None:
        """arch_livepatch_verify_func() (Arm's; x86-64 has its own): why Xen refuses the entry, or None."""
        if not new_addr and (new_size > LIVEPATCH_OPAQUE_SIZE or new_size % self.patch_insn_size):
            return f"NOP patch of {new_size} bytes: arch_livepatch_verify_func() fails (no log line)"
        if old_size < self.patch_insn_size:
            return f"old_size {old_size} < {self.patch_insn_size}: arch_livepatch_verify_func() fails (no log line)"
        return None

    def reaches_hypervisor(self, rtype: int) -> bool:
        """Whether a field of this type can designate any function the payload patches.

        Xen only keeps a payload within ``livepatch_range`` of the functions it
        patches; a field of shorter reach (AArch64 ADR, conditional branches)
        designates the payload's copy but could not designate the original.
        """
        t = self.types.get(rtype)
        return t is None or t.reach is None or t.reach >= self.livepatch_range

    # The byte pattern every instruction address_computations() reports starts
    # at: a section with no match holds none. Its matches never overlap (or it
    # is a lookahead), so a search of the whole file finds each one a search of
    # a section finds. None: no such pattern (then every section is searched).
    address_pattern: re.Pattern[bytes] | None = None

    def address_computations(
        self, data: memoryview, targets: Set[int], in_data: Callable[[int], bool], decode_from: Callable[[int], int]
    ) -> Iterator[AddressSite]:
        """Instructions of one code section that compute the address of an offset in ``targets``.

        The assembler resolves such a computation when its target is in the
        same section, and keeps no relocation (the caller skips places that do
        have one). ``in_data(off)`` says an offset is data (Arm ``$d``
        regions); ``decode_from(off)`` where linear decoding may start to reach
        the instruction at ``off`` (its function's start). Only address
        computations count: a resolved call or jump stays on the new code,
        which is harmless.
        """
        return iter(())

    @abstractmethod
    def relocate(self, rtype: int, place: bytearray, offset: int, s: int, a: int, p: int) -> None:
        """Apply one relocation the way Xen does (raises LoadError)."""


def arch_for_machine(machine: int) -> Arch | None:
    """The target module for an ``e_machine`` value (only that one is imported), or None."""
    module = _MODULES.get(machine)
    if module is None:
        return None
    arch: Arch = importlib.import_module(module).ARCH
    return arch


def arch_for(elf: ElfFile) -> Arch:
    """The target module for this object's ``e_machine``; raises InputError for any other."""
    arch = arch_for_machine(elf.e_machine)
    if arch is None:
        raise InputError(f"e_machine {elf.e_machine} is not a Xen livepatch target (x86-64, AArch64 or 32-bit Arm)")
    arch.check_header(elf)
    return arch


_MODULES = {
    C.EM_X86_64: "lp_rewrite.arch.x86_64",
    C.EM_AARCH64: "lp_rewrite.arch.aarch64",
    C.EM_ARM: "lp_rewrite.arch.arm",
}


def sign_extend(value: int, bits: int) -> int:
    sign = 1 << (bits - 1)
    return (value & (sign - 1)) - (value & sign)

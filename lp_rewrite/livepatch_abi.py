"""The livepatch ABI: struct layouts and their one parser, payload versions, section names, limits.

Everything here is stated once; other modules import it. Sources are Xen's
``xen/include/public/sysctl.h`` (``struct livepatch_func``) and
``xen/common/livepatch.c`` / ``livepatch_elf.c`` (loader limits).

The ``.livepatch.funcs`` table is read here and nowhere else: its layouts per
version and ELF class (:class:`FuncLayout`), the entries' fields
(:class:`FuncEntry`), and :func:`parse_funcs`, which tells the layout from
the bytes and returns the entries with what is wrong with the table
(:class:`FuncsProblem`), for :mod:`~lp_rewrite.identify` to refuse,
``check`` to report (LP010) and the loader model to read after relocation.
"""

from __future__ import annotations

import enum
import struct
from typing import Final, NamedTuple

FUNCS_SECTION: Final = ".livepatch.funcs"
DEPENDS_SECTION: Final = ".livepatch.depends"
XEN_DEPENDS_SECTION: Final = ".livepatch.xen_depends"
BUILD_ID_SECTION: Final = ".note.gnu.build-id"
HOOK_SECTIONS: Final = tuple(
    ".livepatch.hooks." + h
    for h in ("load", "unload", "preapply", "apply", "postapply", "prerevert", "revert", "postrevert")
)

# livepatch_upload(): LIVEPATCH_MAX_SIZE; livepatch_header_check(): e_shnum < 1024.
MAX_PAYLOAD_SIZE: Final = 2 * 1024 * 1024
MAX_SECTIONS: Final = 1024
# LIVEPATCH_OPAQUE_SIZE: the most bytes a NOP entry may cover (Xen saves them there).
LIVEPATCH_OPAQUE_SIZE: Final = 31
# Longest symbol or section name read. Xen's runtime symbol table drops names
# longer than KSYM_NAME_LEN (127), so no original can be longer; this bound
# leaves room for payload-only names and keeps a hostile string table (one
# endless name shared by every symbol) from costing more than a small multiple
# of the file in decoded names.
MAX_NAME_LEN: Final = 512

# Sections the loader requires, present and non-empty: check_xen_buildid()
# and check_special_sections(). A payload also needs .livepatch.funcs or at
# least one hook section (check_patching_sections(): "Nothing to patch").
REQUIRED_SECTIONS: Final = (XEN_DEPENDS_SECTION, DEPENDS_SECTION, BUILD_ID_SECTION)


# Sections whose references to a replacement's entry must keep pointing at the
# payload's new code. ``.livepatch.funcs`` is not negotiable (retargeting
# new_addr would patch the original to jump to itself), so it is kept even
# with --no-default-keep. Nor are the hook sections: Xen reads them from the
# payload and calls them while the payload lives; a hook that is also a
# replacement must stay the payload's function (the load hook runs before
# the patch is applied, when the original is still the old code).
ALWAYS_KEEP: Final = (FUNCS_SECTION, *HOOK_SECTIONS)
DEFAULT_KEEP: Final = (
    ".altinstructions",  # alternatives patch sites in the new code
    ".alt_call_sites",  # altcall sites in the new code (Xen >= 4.21)
    ".ex_table",  # exception-table locations in the new code
    ".bug_frames.*",  # BUG/WARN frames of the new code
    ".eh_frame",  # unwind tables describe the payload's own code
    ".ARM.exidx*",
    ".ARM.extab*",
)


# --- .livepatch.funcs: struct livepatch_func -------------------------------

SUPPORTED_VERSIONS: Final = (1, 2)
# LIVEPATCH_PAYLOAD_VERSION of every Xen since 4.14; prepare_payload() refuses
# any other ("Wrong version (%u). Expected %d"). Version 1 is Xen 4.7-4.13.
XEN_PAYLOAD_VERSION: Final = 2

# (version, pointer size) -> sizeof(struct livepatch_func). Both versions
# start with the same fields (below); they differ in what follows ``version``
# (the opaque save area, then in version 2 the expectation and hook fields).
_ENTRY_SIZES: Final = {(1, 8): 64, (1, 4): 52, (2, 8): 104, (2, 4): 92}
# const char *name; void *new_addr; void *old_addr; uint32_t new_size;
# uint32_t old_size; uint8_t version: no padding before version on either class.
_HEADS: Final = {8: struct.Struct("<QQQIIB"), 4: struct.Struct("<IIIIIB")}


# No dataclasses here: this module is imported on every start, where creating
# one costs about a millisecond. Values are NamedTuples, or small slotted classes.


class FuncEntry:
    """The fields of one ``struct livepatch_func`` that the tool and Xen's checks read, as stored."""

    # A slotted class, not a NamedTuple: a field named ``index`` would shadow tuple.index.
    __slots__ = ("index", "name", "new_addr", "new_size", "offset", "old_addr", "old_size", "version")

    def __init__(
        self,
        index: int,
        offset: int,  # of the entry, in the section
        name: int,  # the name pointer's stored value (0 when a relocation writes it)
        new_addr: int,
        old_addr: int,
        new_size: int,
        old_size: int,
        version: int,
    ) -> None:
        self.index = index
        self.offset = offset
        self.name = name
        self.new_addr = new_addr
        self.old_addr = old_addr
        self.new_size = new_size
        self.old_size = old_size
        self.version = version


class FuncLayout(NamedTuple):
    """Layout of ``struct livepatch_func`` for one payload version and ELF class."""

    version: int
    ptr_size: int
    entry_size: int

    @property
    def name(self) -> int:
        return 0

    @property
    def new_addr(self) -> int:
        return self.ptr_size

    @property
    def old_addr(self) -> int:
        return 2 * self.ptr_size

    @property
    def new_size(self) -> int:
        return 3 * self.ptr_size

    @property
    def old_size(self) -> int:
        return 3 * self.ptr_size + 4

    @property
    def version_offset(self) -> int:
        return version_offset(self.ptr_size)

    def field(self, entry: int, name: str) -> tuple[int, int]:
        """Where field ``name`` of entry ``entry`` is in the section: (offset, width)."""
        offset, width = _FIELD_PLACES[self.ptr_size][name]  # identify asks three times per entry
        return entry * self.entry_size + offset, width

    def _place(self, name: str) -> tuple[int, int]:
        """(offset in an entry, width) of field ``name``, from the properties above."""
        width = self.ptr_size if name in ("name", "new_addr", "old_addr") else 1 if name == "version" else 4
        offset: int = getattr(self, "version_offset" if name == "version" else name)
        return offset, width

    def count(self, size: int) -> int:
        """Whole entries in a table of ``size`` bytes."""
        return size // self.entry_size

    def entries(self, data: bytes | bytearray | memoryview) -> list[FuncEntry]:
        """Every whole entry of ``data`` read with this layout (nothing is checked: see :func:`parse_funcs`)."""
        head, size = _HEADS[self.ptr_size], self.entry_size
        return [FuncEntry(i, i * size, *head.unpack_from(data, i * size)) for i in range(self.count(len(data)))]


def func_layout(version: int, ptr_size: int) -> FuncLayout:
    return FuncLayout(version, ptr_size, _ENTRY_SIZES[(version, ptr_size)])


def version_offset(ptr_size: int) -> int:
    """Where ``version`` sits; the same in every layout of a given class."""
    return 3 * ptr_size + 8


# Per pointer size, field name -> (offset in an entry, width): the same in every version.
_FIELD_PLACES: Final = {
    ptr: {
        n: FuncLayout(0, ptr, 0)._place(n) for n in ("name", "new_addr", "old_addr", "new_size", "old_size", "version")
    }
    for ptr in _HEADS
}


class FuncsProblemKind(enum.Enum):
    TOO_SMALL = "too small"  # no room for entry 0's version
    UNKNOWN_VERSION = "unknown version"  # entry 0's version is none this tool knows
    SIZE = "size"  # the size is not a multiple of entry 0's version's entry size
    MIXED_VERSION = "mixed version"  # an entry's version differs from entry 0's


class FuncsProblem(NamedTuple):
    """What makes a ``.livepatch.funcs`` table unreadable, and where it is in the section."""

    kind: FuncsProblemKind
    size: int  # the section's size
    entry: int | None = None  # the entry whose version byte is wrong
    offset: int | None = None  # that byte, in the section (None: the section's size is wrong)
    version: int | None = None  # the version found there
    first: FuncLayout | None = None  # entry 0's layout (SIZE, MIXED_VERSION)

    def describe(self) -> str:
        """One line naming the problem (without the section's name for SIZE and MIXED_VERSION)."""
        k = FuncsProblemKind
        if self.kind is k.TOO_SMALL:
            return f"{FUNCS_SECTION} is {self.size} bytes, too small for one entry"
        if self.kind is k.UNKNOWN_VERSION:
            return (
                f"{FUNCS_SECTION} entry 0: payload version {self.version} is not supported "
                f"(this tool knows versions {', '.join(map(str, SUPPORTED_VERSIONS))})"
            )
        assert self.first is not None
        if self.kind is k.SIZE:
            return (
                f"{FUNCS_SECTION} size {self.size} is not a multiple of the version-{self.first.version} "
                f"entry size {self.first.entry_size}"
            )
        return (
            f"{FUNCS_SECTION} entry {self.entry}: payload version {self.version} differs from entry 0's "
            f"{self.first.version}"
        )


class FuncsShape(NamedTuple):
    """A ``.livepatch.funcs`` table as :func:`parse_funcs` read it."""

    size: int
    # Entry 0's version's layout; None when it cannot be told (TOO_SMALL, UNKNOWN_VERSION).
    layout: FuncLayout | None
    # Every entry, when the size is a multiple of the layout's (versions may still differ).
    entries: tuple[FuncEntry, ...]
    problems: tuple[FuncsProblem, ...]  # empty: the table can be read


def parse_funcs(data: bytes | bytearray | memoryview, ptr_size: int) -> FuncsShape:
    """Read a ``.livepatch.funcs`` table's bytes: the layout from entry 0's version, the entries, the problems.

    The problems come in the order the table is read: a table too small for
    one version byte, or whose entry 0 has a version this tool does not know,
    has that one problem and no layout; a size that is not a multiple of the
    entry size is the one problem of a table with a layout; otherwise every
    entry whose version differs from entry 0's is one.
    """
    size, voff = len(data), version_offset(ptr_size)
    if size <= voff:
        return FuncsShape(size, None, (), (FuncsProblem(FuncsProblemKind.TOO_SMALL, size),))
    version = data[voff]
    if version not in SUPPORTED_VERSIONS:
        problem = FuncsProblem(FuncsProblemKind.UNKNOWN_VERSION, size, 0, voff, version)
        return FuncsShape(size, None, (), (problem,))
    layout = func_layout(version, ptr_size)
    if size % layout.entry_size:
        return FuncsShape(size, layout, (), (FuncsProblem(FuncsProblemKind.SIZE, size, first=layout),))
    entries = tuple(layout.entries(data))
    mixed = tuple(
        FuncsProblem(FuncsProblemKind.MIXED_VERSION, size, e.index, e.offset + voff, e.version, layout)
        for e in entries
        if e.version != version
    )
    return FuncsShape(size, layout, entries, mixed)


def wrong_version(version: int) -> str:
    """prepare_payload()'s log line for an entry of another version than Xen's."""
    return f"Wrong version ({version}). Expected {XEN_PAYLOAD_VERSION}"


def wrong_size(size: int, section: str, unit: int) -> str:
    """section_ok()'s log line for a table whose size is not a multiple of its entry's."""
    return f"Wrong size {size} of {section} (must be multiple of {unit})"

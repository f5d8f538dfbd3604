"""Facts about Xen livepatch payloads: struct layouts, section names, limits.

Everything here is stated once; other modules import it. Sources are Xen's
``xen/include/public/sysctl.h`` (``struct livepatch_func``) and
``xen/common/livepatch.c`` / ``livepatch_elf.c`` (loader limits).
"""

from __future__ import annotations

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

SUPPORTED_VERSIONS: Final = (1, 2)
# LIVEPATCH_PAYLOAD_VERSION of every Xen since 4.14; prepare_payload() refuses
# any other ("Wrong version (%u). Expected %d"). Version 1 is Xen 4.7-4.13.
XEN_PAYLOAD_VERSION: Final = 2

# Sections the loader requires, present and non-empty: check_xen_buildid()
# and check_special_sections(). A payload also needs .livepatch.funcs or at
# least one hook section (check_patching_sections(): "Nothing to patch").
REQUIRED_SECTIONS: Final = (XEN_DEPENDS_SECTION, DEPENDS_SECTION, BUILD_ID_SECTION)


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
        return 3 * self.ptr_size + 8


# (version, pointer size) -> sizeof(struct livepatch_func)
_ENTRY_SIZES: Final = {(1, 8): 64, (1, 4): 52, (2, 8): 104, (2, 4): 92}


def func_layout(version: int, ptr_size: int) -> FuncLayout:
    return FuncLayout(version, ptr_size, _ENTRY_SIZES[(version, ptr_size)])


def version_offset(ptr_size: int) -> int:
    """Where ``version`` sits; the same in every layout of a given class."""
    return 3 * ptr_size + 8


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

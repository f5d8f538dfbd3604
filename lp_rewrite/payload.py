"""Facts about Xen livepatch payloads: struct layouts, section names, limits.

Everything here is stated once; other modules import it. Sources are Xen's
``xen/include/public/sysctl.h`` (``struct livepatch_func``) and
``xen/common/livepatch.c`` / ``livepatch_elf.c`` (loader limits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

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

SUPPORTED_VERSIONS: Final = (1, 2)


@dataclass(frozen=True)
class FuncLayout:
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
# with --no-default-keep.
ALWAYS_KEEP: Final = (FUNCS_SECTION,)
DEFAULT_KEEP: Final = (
    ".altinstructions",  # alternatives patch sites in the new code
    ".alt_call_sites",  # altcall sites in the new code (Xen >= 4.21)
    ".ex_table",  # exception-table locations in the new code
    ".bug_frames.*",  # BUG/WARN frames of the new code
    ".eh_frame",  # unwind tables describe the payload's own code
    ".ARM.exidx*",
    ".ARM.extab*",
)

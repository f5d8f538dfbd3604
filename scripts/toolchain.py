"""The compilers, flags and link addresses the test objects are built with, stated once.

Every build script (scripts/build_fixtures.py, build_check_xen.py,
build_emulation.py, build_note_fixtures.py, lpbuild_mini.py) and the tests
(tests/conftest.py) take their cross-tool prefixes, compiler flags and the
addresses their small hypervisors are linked at from here. The flags follow
Xen's arch.mk / Config.mk; their order is part of the objects (GCC records
the command line in DW_AT_producer), so the lists are kept as they are.
"""

from __future__ import annotations

import shutil
from typing import Final

ARCHES: Final = ("x86_64", "aarch64", "arm")
# Debian's cross compilers and binutils (gcc, gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf).
PREFIX: Final = {"x86_64": "x86_64-linux-gnu-", "aarch64": "aarch64-linux-gnu-", "arm": "arm-linux-gnueabihf-"}


def have(arch: str, *tools: str) -> bool:
    """Whether ``PREFIX[arch] + tool`` is on PATH for every tool."""
    return all(shutil.which(PREFIX[arch] + tool) is not None for tool in tools)


# -- payloads: testdata/build (build_fixtures), testdata/check/<arch>/*.livepatch,
#    testdata/emu/build/*.livepatch, the miniature livepatch-build's objects.
# What every object built like Xen's own code shares (payloads and check images).
XEN_LIKE_CFLAGS: Final = [
    "-O2",
    "-ffunction-sections",
    "-fdata-sections",
    "-fvisibility=hidden",
    "-fno-stack-protector",
    "-fno-common",
    "-fno-builtin",
]
PAYLOAD_CFLAGS: Final = [*XEN_LIKE_CFLAGS, "-nostdinc", "-fno-asynchronous-unwind-tables"]
PAYLOAD_ARCH_CFLAGS: Final = {
    "x86_64": [
        "-fpic",
        "-mno-red-zone",
        "-fcf-protection=none",
        "-fno-jump-tables",
        "-mno-sse",
        "-mno-mmx",
        "-mno-sse2",
        "-mno-3dnow",
        "-mno-avx",
    ],
    # Xen's arm64 build keeps synchronous unwind tables: .eh_frame with PREL32.
    "aarch64": ["-fpic", "-mgeneral-regs-only"],
    "arm": ["-marm", "-march=armv7-a", "-mfloat-abi=soft", "-mno-unaligned-access", "-fno-pic", "-fno-unwind-tables"],
}

# Xen's CONFIG_XEN_IBT (x86's default): only cf_check functions get an ENDBR64.
IBT_CFLAGS: Final = {"x86_64": ["-fcf-protection=branch", "-mmanual-endbr"]}

# -- the check images: testdata/check/<arch>/xen-syms (build_check_xen).
IMAGE_CFLAGS: Final = [
    *XEN_LIKE_CFLAGS,
    "-ffreestanding",
    "-nostdinc",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
]
IMAGE_ARCH_CFLAGS: Final = {
    "x86_64": ["-fpic", "-mno-red-zone", "-fno-jump-tables", *IBT_CFLAGS["x86_64"], "-mno-sse"],
    "aarch64": ["-mgeneral-regs-only"],
    "arm": ["-marm", "-march=armv7-a", "-mfloat-abi=soft"],
}

# -- the emulated hypervisor: testdata/emu/build/<arch>/hv.elf (build_emulation).
HV_CFLAGS: Final = [
    "-O2",
    "-ffreestanding",
    "-fno-builtin",
    "-fno-stack-protector",
    "-fno-common",
    "-fno-asynchronous-unwind-tables",
    "-fno-ipa-icf",
    "-nostdinc",
]
HV_ARCH_CFLAGS: Final = {
    "x86_64": ["-fpic", "-fvisibility=hidden", "-mno-red-zone", "-fcf-protection=none", "-mno-sse", "-mno-mmx"],
    "aarch64": ["-mgeneral-regs-only"],
    "arm": ["-marm", "-march=armv7-a", "-mfloat-abi=soft", "-fno-pic", "-fno-unwind-tables"],
}

# -- where each small hypervisor's text starts.
# Xen's own link addresses: the check images (testdata/check/<arch>/xen-syms).
XEN_TEXT: Final = {"x86_64": 0xFFFF82D040200000, "aarch64": 0x00000A0000200000, "arm": 0x00200000}
# The miniature livepatch-build's xen-syms (scripts/lpbuild_mini.py): AArch64 linked low, at 32-bit Arm's address.
LPBUILD_XEN_TEXT: Final = {**XEN_TEXT, "aarch64": 0x00200000}
# The emulated hypervisor (testdata/emu): on x86-64 the low bits of Xen's address, since unicorn runs
# without paging and addresses must fit its 52-bit physical address space.
EMULATION_TEXT: Final = {**XEN_TEXT, "x86_64": XEN_TEXT["x86_64"] & 0xFFFF_FFFF}

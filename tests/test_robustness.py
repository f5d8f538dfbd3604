"""Hostile and malformed payloads: one clear error each, bounded work, no crash.

Every case damages a real fixture at one field, located with pyelftools (not
the project's reader), and runs the command line in-process (``rewrite -o``
and ``explain``): exit 2, one line naming the section, symbol, entry or
offset, no output file, input untouched. tests/test_cli.py already covers
not-ELF, truncation, ET_EXEC/ET_DYN, byte order, machine, the version and
size of ``.livepatch.funcs``, unsupported relocation types and a relocation's
symbol index out of range; this file covers the rest of the reader's checks,
the regressions the fuzzer found (tests/test_fuzz.py, scripts/fuzz.py), and
the inputs built to make the work explode: absurd sizes, counts and
alignments, cyclic links, a string-table bomb, and payloads whose size makes
any per-relocation scan quadratic.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from functools import cache
from io import BytesIO
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from typer.testing import CliRunner

from lp_rewrite.cli import app
from lp_rewrite.errors import InputError, LpRewriteError
from lp_rewrite.pipeline import rewrite
from lp_rewrite.policy import Policy
from lp_rewrite.read import read_payload
from tests.conftest import BINUTILS, COMMITTED, assert_one_line_error, load_script, run_cli
from tests.elf_sections import elf_symtab

X86 = COMMITTED / "x86_64" / "global_refs.livepatch"
ARM = COMMITTED / "arm" / "global_refs.livepatch"
NOP = COMMITTED / "x86_64" / "nop_entry.livepatch"
OLD_ADDR = COMMITTED / "x86_64" / "old_addr_reloc.livepatch"


FUZZ = load_script("fuzz")

# Field positions (offset, width) in the ELF structures, from the gABI.
EHDR = {
    64: {"e_machine": (18, 2), "e_flags": (48, 4), "e_phnum": (56, 2), "e_shentsize": (58, 2)}
    | {"e_shoff": (40, 8), "e_shnum": (60, 2), "e_shstrndx": (62, 2)},
    32: {"e_machine": (18, 2), "e_flags": (36, 4), "e_phnum": (44, 2), "e_shentsize": (46, 2)}
    | {"e_shoff": (32, 4), "e_shnum": (48, 2), "e_shstrndx": (50, 2)},
}
SHDR_FIELDS: tuple[str, ...] = ("sh_name", "sh_type", "sh_flags", "sh_addr", "sh_offset", "sh_size", "sh_link")
SHDR_FIELDS += ("sh_info", "sh_addralign", "sh_entsize")
SHDR = {
    64: {
        f: (off, width)
        for f, off, width in zip(
            SHDR_FIELDS, [0, 4, 8, 16, 24, 32, 40, 44, 48, 56], [4, 4, 8, 8, 8, 8, 4, 4, 8, 8], strict=True
        )
    },
    32: {f: (4 * i, 4) for i, f in enumerate(SHDR_FIELDS)},
}
SYM = {
    64: {"st_name": (0, 4), "st_info": (4, 1), "st_shndx": (6, 2), "st_value": (8, 8), "size": (24, 0)},
    32: {"st_name": (0, 4), "st_value": (4, 4), "st_info": (12, 1), "st_shndx": (14, 2), "size": (16, 0)},
}
RELA64 = {"r_offset": (0, 8), "r_type": (8, 4), "r_sym": (12, 4), "r_addend": (16, 8), "size": (24, 0)}


class Fixture:
    """Where each field of a pristine fixture is, read with pyelftools."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = path.read_bytes()
        with open(path, "rb") as f:
            elf = ELFFile(f)
            self.cls = elf.elfclass
            self.shoff, self.shentsize = elf["e_shoff"], elf["e_shentsize"]
            self.headers = [s.header for s in elf.iter_sections()]
            self.index: dict[str, int] = {}
            for i, s in enumerate(elf.iter_sections()):
                self.index.setdefault(s.name, i)
            symtab = elf_symtab(elf)
            self.symbols = {s.name: i for i, s in enumerate(symtab.iter_symbols()) if s.name}
            self.nsyms = symtab.num_symbols()

    def header(self, section: str | int) -> dict[str, int]:
        i = section if isinstance(section, int) else self.index[section]
        return dict(self.headers[i])

    def ehdr(self, field: str) -> tuple[int, int]:
        return EHDR[self.cls][field]

    def shdr(self, section: str | int, field: str) -> tuple[int, int]:
        i = section if isinstance(section, int) else self.index[section]
        off, width = SHDR[self.cls][field]
        return self.shoff + i * self.shentsize + off, width

    def sym(self, index: int, field: str) -> tuple[int, int]:
        off, width = SYM[self.cls][field]
        return self.header(".symtab")["sh_offset"] + index * SYM[self.cls]["size"][0] + off, width

    def rela(self, section: str, entry: int, field: str) -> tuple[int, int]:
        assert self.cls == 64
        off, width = RELA64[field]
        return self.header(section)["sh_offset"] + entry * 24 + off, width

    def edit(self, *changes: tuple[tuple[int, int], int]) -> bytes:
        buf = bytearray(self.data)
        for (off, width), value in changes:
            buf[off : off + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
        return bytes(buf)


@cache
def fx(path: Path) -> Fixture:
    return Fixture(path)


def _replace_section(data: bytes, index: int, blob: bytes) -> bytes:
    """The object with section ``index``'s contents replaced by ``blob`` (moved to the end)."""

    def edit(headers: list[list[int]], buf: bytearray) -> None:
        headers[index][4] = FUZZ.append_blob(buf, blob)
        headers[index][5] = len(blob)

    return bytes(FUZZ.edit_sections(data, edit))


def _with_sections(data: bytes, total: int) -> bytes:
    """The object padded with empty PROGBITS sections to ``total`` sections."""

    def edit(headers: list[list[int]], buf: bytearray) -> None:
        while len(headers) < total:
            headers.append([0, 1, 0, 0, 0x40, 0, 0, 0, 1, 0])

    return bytes(FUZZ.edit_sections(data, edit))


def _truncated_table(data: bytes) -> bytes:
    f = fx(X86)
    return data[: f.shoff + 3 * f.shentsize + 10]


def _strtab_name_bomb() -> bytes:
    """One megabyte-long name, and 40000 symbols each pointing somewhere into it."""
    f = fx(X86)
    strtab = b"\0" + b"A" * (1 << 20) + b"\0"
    symtab_h = f.header(".symtab")
    symtab = bytearray(f.data[symtab_h["sh_offset"] : symtab_h["sh_offset"] + symtab_h["sh_size"]])
    undefined = symtab[f.symbols["printk"] * 24 : f.symbols["printk"] * 24 + 24]
    for k in range(40000):
        entry = bytearray(undefined)
        struct.pack_into("<I", entry, 0, 1 + k)
        symtab += entry
    data = _replace_section(f.data, f.index[".strtab"], strtab)
    return _replace_section(data, f.index[".symtab"], bytes(symtab))


@dataclass(frozen=True)
class Bad:
    make: Callable[[], bytes]
    expect: str  # a substring of the one-line message (it names the place)
    explain_too: bool = True  # explain reads the same way (it refuses nothing it does not read)
    place: bool = True  # there is a place to name (not so for a missing symbol table)


def _x(*changes: tuple[tuple[int, int], int]) -> Callable[[], bytes]:
    return lambda: fx(X86).edit(*changes)


def _f() -> Fixture:
    return fx(X86)


BAD: dict[str, Bad] = {
    # Identity and header.
    "unknown-class": Bad(_x(((4, 1), 3)), "unknown ELF class 3"),
    "unknown-elf-version": Bad(_x(((6, 1), 2)), "unknown ELF version 2"),
    "arm-object-as-x86": Bad(
        lambda: fx(ARM).edit((fx(ARM).ehdr("e_machine"), 62)), "x86-64 payloads must be ELFCLASS64"
    ),
    "x86-object-as-arm": Bad(_x((_f().ehdr("e_machine"), 40)), "32-bit Arm payloads must be ELFCLASS32"),
    "arm-object-as-aarch64": Bad(
        lambda: fx(ARM).edit((fx(ARM).ehdr("e_machine"), 183)), "aarch64 payloads must be ELFCLASS64"
    ),
    "arm-eabi-4": Bad(lambda: fx(ARM).edit((fx(ARM).ehdr("e_flags"), 0x04000000)), "EABI(4000000)"),
    "program-headers": Bad(_x((_f().ehdr("e_phnum"), 1)), "e_phnum is 1: a livepatch payload has no program"),
    "osabi": Bad(_x(((7, 1), 3)), "EI_OSABI 3"),
    # The section header table.
    "e_shentsize": Bad(_x((_f().ehdr("e_shentsize"), 40)), "e_shentsize 40 (expected 64)"),
    "e_shoff-zero": Bad(_x((_f().ehdr("e_shoff"), 0)), "no section header table (e_shoff is 0)"),
    "e_shoff-past-eof": Bad(_x((_f().ehdr("e_shoff"), len(_f().data) + 64)), "is past the end of the file"),
    "e_shoff-in-ehdr": Bad(_x((_f().ehdr("e_shoff"), 16)), "section header table at 0x10 overlaps the ELF header"),
    "section-table-truncated": Bad(lambda: _truncated_table(_f().data), "section header table (24 entries at"),
    "e_shstrndx-out-of-range": Bad(_x((_f().ehdr("e_shstrndx"), 24)), "e_shstrndx 24 is not a section index"),
    "e_shstrndx-not-strtab": Bad(_x((_f().ehdr("e_shstrndx"), 21)), "section [21] named by e_shstrndx is not a string"),
    "e_shnum-0-no-count": Bad(
        _x((_f().ehdr("e_shnum"), 0)), "e_shnum is 0 and section header 0 gives no section count"
    ),
    "e_shnum-0-huge-count": Bad(
        _x((_f().ehdr("e_shnum"), 0), (_f().shdr(0, "sh_size"), 1 << 62)), f"the object has {1 << 62} sections"
    ),
    "shstrndx-xindex-bad-link": Bad(
        _x((_f().ehdr("e_shstrndx"), 0xFFFF), (_f().shdr(0, "sh_link"), 99)), "e_shstrndx 99 is not a section index"
    ),
    "1024-sections": Bad(lambda: _with_sections(_f().data, 1024), "the object has 1024 sections; Xen accepts"),
    "shstrtab-no-final-nul": Bad(
        _x(((_f().header(".shstrtab")["sh_offset"] + _f().header(".shstrtab")["sh_size"] - 1, 1), 0x41)),
        "section name table [23]: string table must start and end with a NUL byte",
    ),
    "section-name-outside": Bad(
        _x((_f().shdr(".text.caller", "sh_name"), 0xFFFF)), "section [9]: name offset 65535 is outside"
    ),
    # Sections.
    "section-past-eof": Bad(
        _x((_f().shdr(".text.caller", "sh_offset"), len(_f().data))), "section [9] '.text.caller': data at 0x"
    ),
    "section-size-2**60": Bad(
        _x((_f().shdr(".text.caller", "sh_size"), 1 << 60)), "+0x1000000000000000 is past the end of the file"
    ),
    "symtab-size-2**60": Bad(_x((_f().shdr(".symtab", "sh_size"), 1 << 60)), "section [21] '.symtab': data at"),
    "sections-overlap": Bad(
        _x((_f().shdr(".text.install", "sh_offset"), _f().header(".text.caller")["sh_offset"])),
        "overlaps section [7] '.text.install'",
    ),
    # The same overlap made by growing a section into the next one (its offset unchanged).
    "sections-overlap-by-size": Bad(
        _x(
            (
                _f().shdr(".text.caller", "sh_size"),
                _f().header(".rodata.do_work.str1.1")["sh_offset"] - _f().header(".text.caller")["sh_offset"] + 1,
            )
        ),
        "section [11] '.rodata.do_work.str1.1' at 0xf1 overlaps section [9] '.text.caller'",
    ),
    "symtab-overlap-by-size": Bad(  # a whole number of symbols more: only the overlap is wrong
        _x((_f().shdr(".symtab", "sh_size"), _f().header(".symtab")["sh_size"] + 24 * 8)),
        "section [22] '.strtab' at 0x430 overlaps section [21] '.symtab'",
    ),
    "addralign-not-power-of-two": Bad(
        _x((_f().shdr(".text.caller", "sh_addralign"), 12)), "section [9] '.text.caller': sh_addralign 12"
    ),
    # What only a linked object has (the fuzzer turned a relocation section into these).
    "dynsym-section": Bad(
        _x((_f().shdr(".rela.text.caller", "sh_type"), 11)),
        "section [10] '.rela.text.caller': type SHT_DYNSYM (11) belongs to a linked object",
    ),
    "hash-section": Bad(_x((_f().shdr(".comment", "sh_type"), 5)), "[19] '.comment': type SHT_HASH (5)"),
    "gnu-versym-section": Bad(
        _x((_f().shdr(".comment", "sh_type"), 0x6FFFFFFF)), "[19] '.comment': type SHT_GNU_versym"
    ),
    # A relocation section is a table even when it relocates nothing Xen loads (sh_info 0).
    "rel-typed-data-section": Bad(
        _x((_f().shdr(".comment", "sh_type"), 9)), "relocation section [19] '.comment': sh_entsize 1 (expected 16)"
    ),
    # The symbol table.
    "no-symtab": Bad(_x((_f().shdr(".symtab", "sh_type"), 1)), "no symbol table", place=False),
    "two-symtabs": Bad(_x((_f().shdr(".comment", "sh_type"), 2)), "the object has 2 symbol tables (sections [19, 21])"),
    "symtab-entsize-0": Bad(_x((_f().shdr(".symtab", "sh_entsize"), 0)), "[21] '.symtab': sh_entsize 0 (expected 24)"),
    "symtab-entsize-2**40": Bad(
        _x((_f().shdr(".symtab", "sh_entsize"), 1 << 40)), "[21] '.symtab': sh_entsize 1099511627776 (expected 24)"
    ),
    "symtab-size-not-multiple": Bad(
        _x((_f().shdr(".symtab", "sh_size"), _f().header(".symtab")["sh_size"] - 1)), "is not a non-zero multiple of 24"
    ),
    "symtab-link-to-itself": Bad(
        _x((_f().shdr(".symtab", "sh_link"), 21)), "linked section [21] is not a string table"
    ),
    "symtab-link-out-of-range": Bad(_x((_f().shdr(".symtab", "sh_link"), 0xFFFF)), "sh_link 65535 is not a section"),
    "symtab-sh_info-past-end": Bad(
        _x((_f().shdr(".symtab", "sh_info"), 28)), "'.symtab': sh_info 28 is not a valid first-global index"
    ),
    "strtab-no-final-nul": Bad(
        _x(((_f().header(".strtab")["sh_offset"] + _f().header(".strtab")["sh_size"] - 1, 1), 0x41)),
        "string table [22] '.strtab': string table must start and end with a NUL byte",
    ),
    "strtab-no-leading-nul": Bad(
        _x(((_f().header(".strtab")["sh_offset"], 1), 0x41)), "[22] '.strtab': string table must start and end"
    ),
    "symbol-name-outside": Bad(_x((_f().sym(23, "st_name"), 0xFFFFFF)), "symbol [23]: name offset 16777215 is outside"),
    "symbol-name-longer-than-512": Bad(
        lambda: _replace_section(
            _f().edit((_f().sym(23, "st_name"), _f().header(".strtab")["sh_size"])),
            22,
            _f().data[_f().header(".strtab")["sh_offset"] :][: _f().header(".strtab")["sh_size"]] + b"B" * 600 + b"\0",
        ),
        "symbol [23]: its name (string table offset 107) is longer than 512 bytes",
    ),
    "symbol-section-out-of-range": Bad(
        _x((_f().sym(23, "st_shndx"), 0x7000)), "symbol [23]: section index 28672 is out of range"
    ),
    "symbol-xindex-without-table": Bad(
        _x((_f().sym(23, "st_shndx"), 0xFFFF)), "symbol [23] uses SHN_XINDEX but the object has no SHT_SYMTAB_SHNDX"
    ),
    "symtab-shndx-wrong-size": Bad(
        lambda: FUZZ.edit_sections(FUZZ.with_symtab_shndx(_f().data), lambda h, b: h[-1].__setitem__(5, h[-1][5] - 4)),
        "section [24] '.symtab_shndx': size does not match the symbol table",
    ),
    # Relocations.
    "rela-entsize-0": Bad(
        _x((_f().shdr(".rela.text.caller", "sh_entsize"), 0)), "[10] '.rela.text.caller': sh_entsize 0 (expected 24)"
    ),
    "rela-entsize-2**40": Bad(
        _x((_f().shdr(".rela.text.caller", "sh_entsize"), 1 << 40)),
        "[10] '.rela.text.caller': sh_entsize 1099511627776 (expected 24)",
    ),
    "rel-entsize-2**31": Bad(  # SHT_REL (32-bit Arm: a 32-bit field, 8-byte entries)
        lambda: fx(ARM).edit((fx(ARM).shdr(".rel.text.install", "sh_entsize"), 1 << 31)),
        "'.rel.text.install': sh_entsize 2147483648 (expected 8)",
    ),
    "rela-size-not-multiple": Bad(
        _x((_f().shdr(".rela.text.caller", "sh_size"), 0x2F)), "'.rela.text.caller': size 47 is not a multiple of 24"
    ),
    "reloc-offset-at-end": Bad(
        _x((_f().rela(".rela.text.caller", 1, "r_offset"), 0x11)),
        "entry 1 offset 0x11 is outside its target section [9] '.text.caller' (size 0x11)",
    ),
    "reloc-offset-2**63": Bad(
        _x((_f().rela(".rela.text.caller", 0, "r_offset"), 1 << 63)), "entry 0 offset 0x8000000000000000 is outside"
    ),
    "reloc-link-not-symtab": Bad(
        _x((_f().shdr(".rela.text.caller", "sh_link"), 22)), "'.rela.text.caller': sh_link 22 is not the symbol table"
    ),
    "reloc-target-inactive": Bad(  # fuzz regression: an SHT_NULL header with ALLOC and a size
        _x((_f().shdr(".text.caller", "sh_type"), 0)), "relocates '.text.caller', which has no file data (SHT_NULL)"
    ),
    # .livepatch.funcs
    "funcs-too-small": Bad(
        _x((_f().shdr(".livepatch.funcs", "sh_size"), 16)), ".livepatch.funcs is 16 bytes, too small for one entry"
    ),
    "funcs-inactive": Bad(  # fuzz regression: SHT_NULL, and no relocation applies to it
        _x((_f().shdr(".livepatch.funcs", "sh_type"), 0), (_f().shdr(".rela.livepatch.funcs", "sh_info"), 0)),
        ".livepatch.funcs is empty",
    ),
    "funcs-versions-differ": Bad(
        lambda: fx(NOP).edit(((fx(NOP).header(".livepatch.funcs")["sh_offset"] + 104 + 32, 1), 1)),
        ".livepatch.funcs entry 1: payload version 1 differs from entry 0's 2",
    ),
    "funcs-name-pointer-outside": Bad(
        _x((_f().rela(".rela.livepatch.funcs", 0, "r_addend"), 0x1000)),
        "entry 0: name pointer .rodata.lp_do_work_name+0x1000 is outside its section",
    ),
    "funcs-name-pointer-outside-old-addr-set": Bad(  # Xen reads the name even then (fuzz regression)
        lambda: fx(OLD_ADDR).edit((fx(OLD_ADDR).rela(".rela.livepatch.funcs", 0, "r_addend"), 0x1000)),
        "entry 0: name pointer .rodata.lp_target_name+0x1000 is outside its section",
    ),
    "funcs-name-no-nul": Bad(
        _x(((_f().header(".rodata.lp_do_work_name")["sh_offset"], 8), 0x4141414141414141)),
        "entry 0: name string at .rodata.lp_do_work_name+0x0 has no NUL terminator",
    ),
    "funcs-name-longer-than-512": Bad(
        lambda: _replace_section(_f().data, 12, b"C" * 600 + b"\0"),
        "entry 0: name string at .rodata.lp_do_work_name+0x0 is longer than 512 bytes",
    ),
    # Two REL relocations on one place compound at load: a retarget cannot move one alone (fuzz regression).
    "rel-place-shared": Bad(
        lambda: fx(ARM).edit(((fx(ARM).header(".rel.text.install")["sh_offset"] + 3 * 8, 4), 8)),
        ".text.install+0x8: another relocation also writes these bytes (.text.install+0x8)",
        explain_too=False,
    ),
    # An ALLOC section with sh_addralign 0: Xen's ROUNDUP(x, 0) would put it over others.
    "funcs-name-written-by-a-relocation": Bad(  # fuzz regression: Xen reads the relocated bytes as the name
        _x((_f().rela(".rela.livepatch.funcs", 0, "r_sym"), 6)),  # the name is .text.install+0 ("H\x8d\x05" + rel32)
        "the name string at .text.install+0x0 is written by a relocation at .text.install+0x3",
    ),
    "funcs-nop-name-written-by-a-relocation": Bad(  # the same for a NOP entry, whose name Xen also looks up
        lambda: fx(COMMITTED / "x86_64" / "nop_entry.livepatch").edit(
            (fx(COMMITTED / "x86_64" / "nop_entry.livepatch").rela(".rela.livepatch.funcs", 2, "r_sym"), 6)
        ),
        "entry 1: the name string at .text.install_tick+0x0 is written by a relocation at .text.install_tick+0x3",
    ),
    "funcs-new-addr-in-empty-section": Bad(  # fuzz regression: an entry with no code, where another section starts
        lambda: fx(COMMITTED / "x86_64" / "check_xen_refs.livepatch").edit(
            (fx(COMMITTED / "x86_64" / "check_xen_refs.livepatch").shdr(".text.tiny", "sh_size"), 0)
        ),
        "new_addr points to .text.tiny+0x0, which is not payload code",
    ),
    "alloc-align-zero": Bad(
        lambda: fx(X86).edit((fx(X86).shdr(".text.caller", "sh_addralign"), 0)),
        "'.text.caller' is SHF_ALLOC with sh_addralign 0",
        explain_too=False,
    ),
    # An empty one does it too: every later section of its region lands over earlier ones (fuzz regression).
    "alloc-align-zero-empty": Bad(
        lambda: fx(X86).edit(
            (fx(X86).shdr(".rodata.do_work.str1.1", "sh_addralign"), 0),
            (fx(X86).shdr(".rodata.do_work.str1.1", "sh_size"), 0),
        ),
        "section [12] '.rodata.lp_do_work_name' would be placed over section [1] '.note.gnu.build-id' by Xen's "
        "loader: section [11] '.rodata.do_work.str1.1' is SHF_ALLOC with sh_addralign 0",
        explain_too=False,
    ),
    # Two RELA relocations writing the same bytes: the same, on x86-64 (fuzz regression).
    "rela-place-shared": Bad(
        lambda: fx(X86).edit(((fx(X86).header(".rela.text.caller")["sh_offset"] + 24, 8), 4)),
        ".text.caller+0x4: another relocation also writes these bytes (.text.caller+0x4)",
        explain_too=False,
    ),
    # A newline in a section's name, quoted in the message: still one line (fuzz regression).
    "newline-in-a-name": Bad(
        _x(
            ((_f().header(".rodata.lp_do_work_name")["sh_offset"], 8), 0x4141414141414141),
            ((_f().header(".shstrtab")["sh_offset"] + _f().header(".rodata.lp_do_work_name")["sh_name"] + 8, 1), 10),
        ),
        "name string at .rodata.\\x0ap_do_work_name+0x0 has no NUL terminator",  # escaped (textsafe)
    ),
    # Sections the rewrite must change but Xen would load (fuzz regression, found by the certificate).
    "alloc-string-table": Bad(
        _x((_f().shdr(".strtab", "sh_flags"), 2)),
        "section [22] '.strtab' is SHF_ALLOC: Xen would load this table",
        explain_too=False,
    ),
    "alloc-relocation-section": Bad(
        _x((_f().shdr(".rela.text.caller", "sh_flags"), 0x42)),
        "section [10] '.rela.text.caller' is SHF_ALLOC",
        explain_too=False,
    ),
}

RUNNER = CliRunner()
# What names a place in a message: a section or symbol index, an entry, an
# offset, a header field, a count of sections, or a section's name.
PLACE = r"\[\d+[],]|\d+ sections|entry \d+|0x[0-9a-f]+|offset \d+|\be_\w+|EI_\w+|ELF|EABI|^\.[a-z]"


def _cli(*args: str | Path) -> tuple[int, str]:
    result = RUNNER.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stderr


@pytest.mark.parametrize("kind", sorted(BAD))
def test_malformed_input_is_refused_with_one_line(kind: str, tmp_path: Path) -> None:
    bad = BAD[kind]
    src = tmp_path / "bad.livepatch"
    data = bad.make()
    src.write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    commands: list[tuple[str | Path, ...]] = [("rewrite", src, "-o", out / "result.livepatch")]
    if bad.explain_too:
        commands.append(("explain", src))
    for args in commands:
        code, err = _cli(*args)
        lines = err.strip().splitlines()
        assert code == 2, (kind, code, err)
        assert len(lines) == 1 and lines[0].startswith("lp-rewrite: error: "), err
        assert bad.expect in lines[0], lines[0]
        # The place is named: a section ([N] or its name), an entry, a symbol [N], a field or an offset.
        place = lines[0].partition(f"{src}: ")[2]
        if bad.place:
            assert re.search(PLACE, place), place
    assert list(out.iterdir()) == [], "no output (and no temporary file) may be left"
    assert src.read_bytes() == data


@pytest.mark.parametrize("kind", sorted(BAD))
def test_the_check_gate_reads_malformed_input_without_crashing(kind: str, tmp_path: Path) -> None:
    """`check` reports (exit 1) or refuses (exit 2, one line); never an internal error."""
    src = tmp_path / "bad.livepatch"
    src.write_bytes(BAD[kind].make())
    for fmt in ("text", "sarif"):
        code, err = _cli("check", src, "--format", fmt)
        assert code in (0, 1, 2), (code, err)
        if code == 2:
            assert len(err.strip().splitlines()) == 1 and err.startswith("lp-rewrite: error: "), err


def test_a_sample_through_the_real_command_line(tmp_path: Path) -> None:
    for kind in ("e_shnum-0-huge-count", "symbol-name-longer-than-512", "reloc-target-inactive"):
        src = tmp_path / f"{kind}.livepatch"
        src.write_bytes(BAD[kind].make())
        assert BAD[kind].expect in assert_one_line_error(run_cli("rewrite", src, "-o", tmp_path / "o"))
        assert not (tmp_path / "o").exists()


# -- inputs that are odd but valid: rewritten and verified ---------------------------


GOOD_ODD: dict[str, Callable[[], bytes]] = {
    # gABI extended numbering: e_shnum 0, e_shstrndx SHN_XINDEX, the values in section 0.
    "extended-numbering": lambda: FUZZ.extended_numbering(_f().data),
    "symtab-shndx": lambda: FUZZ.with_symtab_shndx(_f().data),
    "1023-sections": lambda: _with_sections(_f().data, 1023),
    # One string table for section and symbol names: it grows, section names stay (fuzz regression).
    "one-string-table-for-both": _x((_f().shdr(".symtab", "sh_link"), 23)),
    # A link cycle (.strtab -> .symtab -> .strtab): links are followed once, never chased.
    "strtab-links-back": _x((_f().shdr(".strtab", "sh_link"), 21)),
    # sh_addralign of 2**40: the writer aligns file offsets to at most a page (fuzz regression).
    "alignment-2**40": _x((_f().shdr(".text.caller", "sh_addralign"), 1 << 40)),
    # sh_addralign 0 on an empty section with nothing after it in its region overlaps nothing.
    "empty-last-rw-section-align-zero": _x((_f().shdr(".bss", "sh_addralign"), 0)),
    # sh_entsize means nothing for code: an absurd one is ignored, as Xen ignores it.
    "code-entsize-2**40": _x((_f().shdr(".text.caller", "sh_entsize"), 1 << 40)),
    # Section 0 with a type and data: ignored, as Xen ignores it (fuzz regression).
    "section-0-with-data": _x(
        (_f().shdr(0, "sh_type"), 1), (_f().shdr(0, "sh_offset"), 0x40), (_f().shdr(0, "sh_size"), 0x24)
    ),
}


def test_absolute_old_addr_with_negative_addend_wraps_like_the_relocation() -> None:
    """old_addr = ABS symbol + a negative addend: the field holds S + A modulo 2**64 (fuzz regression)."""
    f = fx(OLD_ADDR)
    data = f.edit((f.sym(21, "st_shndx"), 0xFFF1), (f.rela(".rela.livepatch.funcs", 2, "r_addend"), -62))
    result = rewrite(data)
    assert result.changed
    (alias,) = result.plan.aliases.values()
    assert alias.value == (1 << 64) - 62
    assert not rewrite(result.output).changed


@pytest.mark.parametrize("kind", sorted(GOOD_ODD))
def test_odd_but_valid_input_is_rewritten(kind: str) -> None:
    data = GOOD_ODD[kind]()
    result = rewrite(data)
    assert result.changed and len(result.plan.retargets) == 4
    assert len(result.output) < len(data) + 64 * 1024
    again = rewrite(result.output)
    assert not again.changed and again.output == result.output


# -- bounded work ------------------------------------------------------------------

ABSURD = [
    "section-size-2**60",
    "symtab-size-2**60",
    "e_shnum-0-huge-count",
    "symtab-entsize-0",
    "symtab-entsize-2**40",
    "rela-entsize-0",
    "rela-entsize-2**40",
    "reloc-offset-2**63",
    "symtab-link-to-itself",
    "1024-sections",
]


def _measure(fn: Callable[[], object]) -> tuple[int, int]:
    """Peak bytes allocated and Python lines executed by ``fn`` (which may refuse its input)."""

    def run() -> None:
        with suppress(LpRewriteError):
            fn()

    tracemalloc.start()
    try:
        lines = _lines_executed(run)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, lines


# Refusing an absurd value takes a few thousand lines of Python; one loop over what
# the value claims (2**60 bytes, 40000 symbols) would take more than this.
REFUSAL_LINES = 20_000


@pytest.mark.parametrize("kind", ABSURD)
def test_absurd_values_are_refused_quickly_and_cheaply(kind: str) -> None:
    data = BAD[kind].make()
    with pytest.raises(InputError):
        read_payload(data)
    peak, lines = _measure(lambda: rewrite(data))
    assert peak < 4 * len(data) + (2 << 20), f"{peak} bytes allocated for a {len(data)}-byte input"
    assert lines < REFUSAL_LINES, f"{lines} lines of Python to refuse it"


def test_string_table_bomb_is_refused_without_decoding_it() -> None:
    data = _strtab_name_bomb()
    with pytest.raises(InputError, match="longer than 512 bytes"):
        rewrite(data)
    peak, lines = _measure(lambda: rewrite(data))
    # Without the name bound, the 40000 names would be 40 GB of text.
    assert peak < 8 * len(data), f"{peak} bytes allocated for a {len(data)}-byte input"
    assert lines < REFUSAL_LINES, f"{lines} lines of Python for 40000 symbols: one per symbol at least"


# -- inputs that make per-relocation scans quadratic ----------------------------------


def _assemble(source: str, tmp_path: Path) -> bytes:
    gas = BINUTILS["x86_64"] + "as"
    if shutil.which(gas) is None:
        pytest.skip(f"{gas} not installed")
    (tmp_path / "big.s").write_text(source)
    subprocess.run([gas, "-o", str(tmp_path / "big.o"), str(tmp_path / "big.s")], check=True)
    return (tmp_path / "big.o").read_bytes()


def _many(n_funcs: int, n_data: int, n_code: int, n_alias: int = 0) -> str:
    """A payload replacing ``n_funcs`` functions of one section, with data and code references to them."""
    lines = ['.section .text.many,"ax",@progbits']
    for i in range(n_funcs):
        lines += [f".globl f{i}", f".type f{i},@function", f"f{i}:", "  ret", f".size f{i},1"]
    for k in range(n_alias):  # more symbols at f0's entry
        lines += [f".globl a{k}", f".type a{k},@function", f".set a{k}, f0"]
    lines += ['.section .rodata.names,"a",@progbits']
    lines += [f'n{i}: .asciz "f{i}"' for i in range(n_funcs)]
    lines += ['.section .livepatch.funcs,"aw",@progbits']
    for i in range(n_funcs):  # struct livepatch_func, version 2 (104 bytes)
        lines += [f".quad n{i}", f".quad f{i}", ".quad 0", ".long 1", ".long 1", ".byte 2", ".zero 71"]
    lines += ['.section .data.rel.ro.refs,"aw",@progbits']
    lines += [f".quad f{j % n_funcs}" for j in range(n_data)]
    lines += ['.section .text.users,"ax",@progbits']
    # An immediate after the displacement: the fast decoder passes these to capstone.
    lines += [f"cmpl $1, f{j % n_funcs}(%rip)" for j in range(n_code)]
    return "\n".join(lines) + "\n"


def _rename_all_to(data: bytes, prefix: str, target: str) -> bytes:
    """Give every symbol whose name starts with ``prefix`` the name ``target``."""
    buf = bytearray(data)
    symtab = elf_symtab(ELFFile(BytesIO(data)))
    name_of = {s.name: s["st_name"] for s in symtab.iter_symbols()}
    for i, s in enumerate(symtab.iter_symbols()):
        if s.name.startswith(prefix):
            struct.pack_into("<I", buf, symtab["sh_offset"] + i * 24, name_of[target])
    return bytes(buf)


def _many_sections(n: int) -> str:
    """``n`` replaced functions, each in its own section calling the next: ``n`` relocation sections."""
    lines = []
    for i in range(n):
        lines += [f'.section .text.f{i},"ax",@progbits', f".globl f{i}", f".type f{i},@function", f"f{i}:"]
        lines += [f"  call f{(i + 1) % n}", "  ret", f".size f{i},6"]
    lines += ['.section .rodata.names,"a",@progbits']
    lines += [f'n{i}: .asciz "f{i}"' for i in range(n)]
    lines += ['.section .livepatch.funcs,"aw",@progbits']
    for i in range(n):
        lines += [f".quad n{i}", f".quad f{i}", ".quad 0", ".long 6", ".long 6", ".byte 2", ".zero 71"]
    return "\n".join(lines) + "\n"


def _unaligned(data: bytes, name: str) -> bytes:
    """``name`` with sh_addralign 0 (no assembler writes that)."""
    elf = ELFFile(BytesIO(data))
    index = next(i for i, sec in enumerate(elf.iter_sections()) if sec.name == name)
    buf = bytearray(data)
    struct.pack_into("<Q", buf, elf["e_shoff"] + index * elf["e_shentsize"] + 48, 0)
    return bytes(buf)


def _lines_executed(fn: Callable[[], object]) -> int:
    """Python lines run by ``fn`` (sys.settrace): a measure of work that, unlike time, does not vary."""
    count = 0

    def tracer(frame: object, event: str, arg: object) -> Callable[..., object]:
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)  # type: ignore[arg-type]
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


BEYOND_XEN = Policy(xen_limits=False)  # one function per section takes more than 1024 of them

# Each shape once at its size and once at twice that: linear work doubles, a scan per
# reference (or per entry) quadruples. The comments say what each one caught.
SHAPES: dict[str, tuple[Callable[[int], str], int, Callable[[int], tuple[int, int]]]] = {
    # 20000 references to 3000 replacements in one section: 14 s with a scan per reference.
    "many-replacements": (lambda k: _many(1500 * k, 10000 * k, 0), 1, lambda k: (10000 * k, 1500 * k)),
    # rel32 fields only capstone decodes: 108 s with one decode of the section per field.
    "many-decoded-fields": (lambda k: _many(10, 0, 1000 * k), 1, lambda k: (1000 * k, 10)),
    # symbols called "f0" at f0's entry: a suffix search from ".1" for each is quadratic.
    "many-same-named-symbols": (lambda k: _many(2, 1, 0, 2000 * k), 1, lambda k: (1, 2000 * k + 1)),
    # a name per entry, relocation sections per function: a scan of every table per name is quadratic.
    "many-relocation-sections": (_many_sections, 1000, lambda k: (k, k)),
    # the first code section with sh_addralign 0 (harmless there): the search for sections Xen
    # would place over others compared each with every earlier one.
    "many-sections-after-an-unaligned-one": (_many_sections, 1000, lambda k: (k, k)),
}
# What is done to an assembled shape before the rewrite.
AFTER_ASSEMBLY: dict[str, Callable[[bytes], bytes]] = {
    "many-same-named-symbols": lambda data: _rename_all_to(data, "a", "f0"),
    "many-sections-after-an-unaligned-one": lambda data: _unaligned(data, ".text.f0"),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_big_payloads_take_linear_work(shape: str, tmp_path: Path) -> None:
    make, unit, expected = SHAPES[shape]
    work = []
    for k in (unit, 2 * unit):
        data = _assemble(make(k), tmp_path)
        if shape in AFTER_ASSEMBLY:
            data = AFTER_ASSEMBLY[shape](data)
        result = rewrite(data, policy=BEYOND_XEN)
        assert (len(result.plan.retargets), len(result.plan.renames)) == expected(k)
        if shape == "many-same-named-symbols":
            assert len(set(result.plan.renames.values())) == expected(k)[1]  # every new name distinct
        work.append(_lines_executed(lambda data=data: rewrite(data, policy=BEYOND_XEN)))  # type: ignore[misc]
    assert work[1] / work[0] < 2.5, f"twice the input, {work[1] / work[0]:.2f} times the work ({work})"


def test_local_aliases_refuse_a_relocation_section_they_cannot_renumber(tmp_path: Path) -> None:
    """--local-aliases renumbers every relocation section, also those Xen skips and reading does not
    check (here sh_info past the section table): each must hold entries of the symbol table (fuzz regression)."""
    static = fx(COMMITTED / "x86_64" / "static_section.livepatch")
    src = tmp_path / "s.livepatch"
    src.write_bytes(static.edit((static.shdr(".rela.text.handler", "sh_info"), 0xFFFF)))
    out = tmp_path / "out.livepatch"
    code, err = _cli("rewrite", "--local-aliases", src, "-o", out)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--local-aliases renumbers every relocation section, and relocation section [6] '.rela.text.handler'" in err
    assert "sh_info 65535 is not the index of a section" in err
    assert not out.exists()
    code, err = _cli("rewrite", src, "-o", out)  # global aliases renumber nothing: Xen skips that section
    assert code == 0, err


def test_section_zero_is_never_a_relocation_section(tmp_path: Path) -> None:
    """Xen's loops start at section 1: a null header dressed up as SHT_REL/SHT_RELA relocates nothing
    (fuzz regression: it was read as a table with no bytes)."""
    from lp_rewrite.certificate import certify

    f = _f()
    edited = f.edit(
        (f.shdr(0, "sh_type"), 4),  # SHT_RELA
        (f.shdr(0, "sh_info"), f.index[".text.install"]),
        (f.shdr(0, "sh_link"), f.index[".symtab"]),
        (f.shdr(0, "sh_size"), 24),
        (f.shdr(0, "sh_entsize"), 24),
    )
    src = tmp_path / "zero.livepatch"
    src.write_bytes(edited)
    for args in (("rewrite", "--local-aliases", src, "-o", tmp_path / "a"), ("rewrite", src, "-o", tmp_path / "b")):
        code, err = _cli(*args)
        assert code == 0, err
    certify(src, tmp_path / "b")  # raises unless the output loads as the input, retargets aside
    assert rewrite(src).plan.retargets == rewrite(_f().path).plan.retargets

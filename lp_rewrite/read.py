"""Pipeline stage 1, *read*: load a payload and check what Xen's loader checks
before anything else looks at it (header, class/machine, relocation kinds).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterable
from itertools import compress
from operator import not_
from typing import NamedTuple

from lp_rewrite.arch import Arch, arch_for
from lp_rewrite.elf import consts as C
from lp_rewrite.elf.file import ElfFile, SectionCountError, UnsupportedObject
from lp_rewrite.errors import InputError
from lp_rewrite.inputs import MAX_INPUT_SIZE, Snapshot, read_input
from lp_rewrite.livepatch_abi import MAX_NAME_LEN, MAX_PAYLOAD_SIZE, MAX_SECTIONS
from lp_rewrite.record import Record


class Payload(Record):
    """A validated payload: its bytes, its ELF view and its target."""

    __slots__ = ("arch", "elf", "name", "source")

    def __init__(self, name: str, elf: ElfFile, arch: Arch, source: Snapshot | None = None) -> None:
        self.name = name
        self.elf = elf
        self.arch = arch
        self.source = source  # the file it was read from, as it was then (None: from bytes)

    @property
    def data(self) -> bytes:
        """The payload's bytes. A payload read from a mapping (the self-check's view
        of a written output) is read through its ``elf`` only: it has no bytes to give."""
        data = self.elf.data
        if isinstance(data, mmap.mmap):
            raise TypeError(f"{self.name}: a mapped payload is read through its ElfFile")
        return data


class UnsupportedRelocation(NamedTuple):
    section: str  # the section being relocated
    reloc_section: str
    offset: int
    rtype: int
    type_name: str
    target: int  # the relocated section's index
    symbol: str

    def describe(self) -> str:
        return (
            f"{self.section}+{self.offset:#x}: relocation {self.type_name} ({self.rtype}) "
            f"is not applied by Xen's loader on this architecture"
        )


class MisappliedRelocation(NamedTuple):
    """A place Xen applies, but not as its type means (:meth:`Arch.misapplied`)."""

    section: str  # the section being relocated
    reloc_section: str
    offset: int
    rtype: int
    type_name: str
    symbol: str
    addend: int
    why: str
    target: int  # the relocated section's index

    def describe(self) -> str:
        return (
            f"{self.section}+{self.offset:#x}: {self.type_name} against {self.symbol}{self.addend:+#x} "
            f"(S+A): {self.why}"
        )


def read_file(path: str | os.PathLike[str], limit: int = MAX_INPUT_SIZE) -> bytes:
    """A regular file of at most ``limit`` bytes, read whole and consistently (:mod:`lp_rewrite.inputs`)."""
    return read_input(path, limit)[0]


def read_payload(
    source: str | os.PathLike[str] | bytes | mmap.mmap,
    name: str | None = None,
    *,
    xen_limits: bool = True,
    check_relocations: bool = True,
) -> Payload:
    """Parse and validate a payload from a path or from bytes.

    ``xen_limits=False`` accepts objects beyond what Xen's loader takes (1024
    sections): intermediate objects and stress tests.
    """
    snapshot = None
    if isinstance(source, (bytes, mmap.mmap)):  # in memory, or a file mapped read-only
        data, label = source, name or "<bytes>"
    else:
        # Xen's upload limit is checked on the file's size, before it is read.
        data, snapshot = read_input(source, MAX_PAYLOAD_SIZE if xen_limits else MAX_INPUT_SIZE)
        label = name or os.fspath(source)
    try:
        elf = _parse(data, label, xen_limits)
        arch = arch_for(elf)
        _check_xen_header(elf)
        payload = Payload(label, elf, arch, snapshot)
        _check_relocation_sections(payload, check_relocations)
    except InputError as exc:
        raise InputError(f"{label}: {exc}") from None
    return payload


# The objects the ELF reader does not take, in the words of a payload's refusal.
_NOT_A_PAYLOAD = {
    "byte order": "big-endian or unknown byte order: Xen livepatch targets are little-endian",
    "type": "{}: a livepatch payload is a relocatable object (ET_REL)",
    "linked section": "{}, not to a relocatable livepatch payload",
    "symbol tables": "{}; Xen accepts exactly one",
}


def _parse(data: bytes | mmap.mmap, label: str, xen_limits: bool) -> ElfFile:
    """The ELF reader with Xen's limits: names of at most MAX_NAME_LEN bytes, and,
    unless they are lifted, fewer than MAX_SECTIONS sections."""
    try:
        return ElfFile(data, label, MAX_SECTIONS if xen_limits else None, MAX_NAME_LEN)
    except UnsupportedObject as exc:
        raise InputError(_NOT_A_PAYLOAD[exc.reason].format(exc.detail)) from None
    except SectionCountError as exc:
        # livepatch_header_check(): e_shnum < 1024. Checked before any header is read.
        raise InputError(
            f"the object has {exc.count} sections; Xen accepts a payload with fewer than {exc.limit} "
            "(--ignore-xen-limits processes it anyway)"
        ) from None


def _check_xen_header(elf: ElfFile) -> None:
    # livepatch_header_check(): the rules that are not about the machine.
    if elf.e_phnum != 0:
        raise InputError(f"e_phnum is {elf.e_phnum}: a livepatch payload has no program headers")
    osabi = elf.data[C.EI_OSABI]
    if osabi not in (C.ELFOSABI_NONE, C.ELFOSABI_FREEBSD):
        raise InputError(f"EI_OSABI {osabi} is not accepted by Xen")


def _refuse_foreign_tables(elf: ElfFile) -> None:
    """Xen refuses a relocation section of a loaded section whose sh_link is not the symbol table.

    Its loops start at section 1, and it skips a relocation section whose
    sh_info is not a section index or whose target is not loaded; the reader's
    relocation_sections holds the ones that name the symbol table.
    """
    secs = elf.sections
    if len(secs.tables) == len(elf.relocation_sections):
        return  # every one names the symbol table and a section
    n = len(secs)
    for i in secs.tables:
        target = secs.info[i]
        if 0 < target < n and secs.link[i] != elf.symtab_index and secs.flags[target] & C.SHF_ALLOC:
            raise InputError(
                f"relocation section [{i}] {secs.name(i)!r}: sh_link {secs.link[i]} is not the "
                f"symbol table [{elf.symtab_index}]"
            )


def _check_relocation_sections(payload: Payload, entries: bool = True) -> None:
    elf = payload.elf
    _refuse_foreign_tables(elf)
    secs = elf.sections
    allowed = payload.arch.rel_section_types
    info, flags, types, has_data = secs.info, secs.flags, secs.type, secs.data_mask
    # One pass over the columns finds the candidates (a stress object has 50k tables).
    suspects = [
        idx
        for idx in elf.relocation_sections
        if flags[info[idx]] & C.SHF_ALLOC and (types[idx] not in allowed or not has_data[info[idx]])
    ]
    for idx in suspects:
        target = info[idx]
        sec, target_sec = secs[idx], secs[target]
        if sec.sh_type not in allowed:
            kind = "SHT_REL" if sec.sh_type == C.SHT_REL else "SHT_RELA"
            raise InputError(
                f"section [{idx}] {sec.name!r}: {kind} relocations are not supported by Xen on {payload.arch.name}"
            )
        if sec.sh_size:
            kind = "NOBITS" if target_sec.sh_type == C.SHT_NOBITS else "SHT_NULL"
            raise InputError(
                f"section [{idx}] {sec.name!r} relocates {target_sec.name!r}, which has no file data ({kind})"
            )
    if entries:  # the caller may prove most tables identical to checked ones instead
        elf.check_relocations(elf.relocation_sections)


def unsupported_relocations(payload: Payload) -> list[UnsupportedRelocation]:
    """Every relocation Xen would refuse ("Unhandled relocation"), in file order."""
    known = payload.arch.types
    elf = payload.elf
    out = []
    for idx in _tables_not(elf, _loaded_tables(elf), frozenset(known).issuperset):
        table = elf.relocations(idx)
        target = payload.elf.sections[table.target].name
        for i, t in enumerate(table.types):
            if t not in known:
                label = symbol_label(payload, table.syms[i])
                out.append(
                    UnsupportedRelocation(
                        target, table.section.name, table.offsets[i], t, payload.arch.type_name(t), table.target, label
                    )
                )
    return out


def misapplied_relocations(payload: Payload) -> list[MisappliedRelocation]:
    """Every relocation Xen would apply to a wrong value, in file order.

    Only the types the architecture names are read (none on most targets),
    in every section Xen relocates.
    """
    arch, elf = payload.arch, payload.elf
    secs = elf.sections
    by_kind = {C.SHT_REL: arch.misapplied_types(False), C.SHT_RELA: arch.misapplied_types(True)}
    out: list[MisappliedRelocation] = []
    tables = []
    loaded: list[int] | None = None
    for kind, watched in by_kind.items():  # none watched on x86-64 and AArch64: no table is read
        if watched:
            loaded = _loaded_tables(elf) if loaded is None else loaded
            of_kind = [idx for idx in loaded if secs.type[idx] == kind]
            tables += _tables_not(elf, of_kind, watched.isdisjoint)
    for idx in sorted(tables):
        target = secs.info[idx]
        watched = by_kind[secs.type[idx]]
        table = elf.relocations(idx)
        data = elf.section_data(target)
        for i, t in enumerate(table.types):
            if t not in watched:
                continue
            offset = table.offsets[i]
            addend = table.addends[i] if table.addends is not None else arch.implicit_addend(t, data, offset)
            why = arch.misapplied(t, addend, data, offset, table.is_rela)
            if why is not None:
                label = symbol_label(payload, table.syms[i])
                out.append(
                    MisappliedRelocation(
                        secs.name(target), table.section.name, offset, t, arch.type_name(t), label, addend, why, target
                    )
                )
    return out


def _loaded_tables(elf: ElfFile) -> list[int]:
    """The relocation tables Xen applies: those of SHF_ALLOC sections."""
    secs = elf.sections
    return [idx for idx in elf.relocation_sections if secs.flags[secs.info[idx]] & C.SHF_ALLOC]


def _tables_not(elf: ElfFile, tables: list[int], clean: Callable[[Iterable[int]], bool]) -> list[int]:
    """Those of ``tables`` whose set of relocation types is not ``clean``, in index order.

    ``clean`` holds of every subset of a clean set (no type of interest among
    them), so a run that is clean as a whole is skipped with one C loop.
    """
    found: list[int] = []
    for run in elf.relocation_runs(tables):
        if run.whole and clean(run.types):
            continue
        found += compress(run.sections, map(not_, map(clean, map(run.types.__getitem__, run.slices()))))
    return sorted(found)


def symbol_label(payload: Payload, sym: int) -> str:
    """A readable name for a relocation's symbol (section symbols by section name)."""
    syms = payload.elf.symbols
    if syms.type(sym) == C.STT_SECTION and syms.is_defined_in_section(sym):
        return payload.elf.sections[syms.shndx[sym]].name
    return syms.name(sym) or f"#{sym}"

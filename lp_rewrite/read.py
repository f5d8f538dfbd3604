"""Pipeline stage 1, *read*: load a payload and check what Xen's loader checks
before anything else looks at it (header, class/machine, relocation kinds).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lp_rewrite.arch import Arch, arch_for
from lp_rewrite.elf import consts as C
from lp_rewrite.elf.file import ElfFile, RelocTable
from lp_rewrite.errors import InputError


@dataclass
class Payload:
    """A validated payload: its bytes, its ELF view and its target."""

    name: str
    elf: ElfFile
    arch: Arch

    @property
    def data(self) -> bytes:
        return self.elf.data

    def applied_relocations(self) -> list[RelocTable]:
        """Relocation sections Xen applies: those whose target is SHF_ALLOC."""
        out = []
        for idx in self.elf.relocation_sections:
            table = self.elf.relocations(idx)
            if self.elf.sections[table.target].alloc:
                out.append(table)
        return out


@dataclass(frozen=True)
class UnsupportedRelocation:
    section: str  # the section being relocated
    reloc_section: str
    offset: int
    rtype: int
    type_name: str

    def describe(self) -> str:
        return (
            f"{self.section}+{self.offset:#x}: relocation {self.type_name} ({self.rtype}) "
            f"is not applied by Xen's loader on this architecture"
        )


def read_file(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except IsADirectoryError as exc:
        raise InputError(f"{path}: is a directory") from exc
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from exc


def read_payload(source: str | os.PathLike[str] | bytes, name: str | None = None) -> Payload:
    """Parse and validate a payload from a path or from bytes."""
    if isinstance(source, bytes):
        data, label = source, name or "<bytes>"
    else:
        data, label = read_file(source), name or os.fspath(source)
    try:
        elf = ElfFile(data, label)
        arch = arch_for(elf)
        _check_xen_header(elf)
        payload = Payload(label, elf, arch)
        _check_relocation_sections(payload)
    except InputError as exc:
        raise InputError(f"{label}: {exc}") from None
    return payload


def _check_xen_header(elf: ElfFile) -> None:
    # livepatch_header_check(): the rules that are not about the machine.
    if elf.e_phnum != 0:
        raise InputError(f"e_phnum is {elf.e_phnum}: a livepatch payload has no program headers")
    osabi = elf.data[C.EI_OSABI]
    if osabi not in (C.ELFOSABI_NONE, C.ELFOSABI_FREEBSD):
        raise InputError(f"EI_OSABI {osabi} is not accepted by Xen")


def _check_relocation_sections(payload: Payload) -> None:
    elf = payload.elf
    for idx in elf.relocation_sections:
        sec = elf.sections[idx]
        target = elf.sections[sec.sh_info]
        if target.alloc and sec.sh_type not in payload.arch.rel_section_types:
            kind = "SHT_REL" if sec.sh_type == C.SHT_REL else "SHT_RELA"
            raise InputError(
                f"section [{idx}] {sec.name!r}: {kind} relocations are not supported by Xen on {payload.arch.name}"
            )
        if target.alloc and not target.has_file_data and sec.sh_size:
            kind = "NOBITS" if target.sh_type == C.SHT_NOBITS else "SHT_NULL"
            raise InputError(f"section [{idx}] {sec.name!r} relocates {target.name!r}, which has no file data ({kind})")
        elf.relocations(idx)  # validates symbol indices and offsets


def unsupported_relocations(payload: Payload) -> list[UnsupportedRelocation]:
    """Every relocation Xen would refuse ("Unhandled relocation"), in file order."""
    known = payload.arch.types
    out = []
    for table in payload.applied_relocations():
        if not set(table.types) - known.keys():
            continue
        target = payload.elf.sections[table.target].name
        for i, t in enumerate(table.types):
            if t not in known:
                out.append(
                    UnsupportedRelocation(target, table.section.name, table.offsets[i], t, payload.arch.type_name(t))
                )
    return out

"""Xen's checks on the raw image, in Xen's order and with Xen's words.

``livepatch_upload()`` (size), ``livepatch_header_check()``,
``elf_resolve_sections()``, ``elf_resolve_section_names()`` and
``elf_get_sym()`` in ``xen/common/livepatch_elf.c``, plus the per-arch
``arch_livepatch_verify_elf()`` / ``arch_livepatch_symbol_deny()`` and the
SHT_REL/SHT_RELA acceptance of ``arch_livepatch_perform_rel()``.

They run on the bytes before the project's own reader parses them, because
that reader is stricter in places (and words its errors its own way); what
both accept goes on to placement, resolution and relocation.
"""

from __future__ import annotations

import struct
from typing import Final

from lp_rewrite.arch import Arch, arch_for_machine
from lp_rewrite.elf import consts as C
from lp_rewrite.elf.layout import layout_for
from lp_rewrite.livepatch_abi import MAX_PAYLOAD_SIZE, MAX_SECTIONS
from lp_rewrite.loader.refusal import Refused

# EI_ABIVERSION must be 0 (livepatch_header_check()).
_ABIVERSION_OK: Final = 0


def _ptr_class(machine: int, fallback: int) -> int:
    """The hypervisor's ELF class for a machine: Xen compares with its own structs."""
    arch = arch_for_machine(machine)
    return fallback if arch is None else arch.elfclass


def check_image(data: bytes, name: str) -> None:
    """Raise :class:`Refused` where Xen's first loading steps would."""
    if not data or len(data) > MAX_PAYLOAD_SIZE:
        raise Refused(
            name,
            f"payload size {len(data)} is not in 1..{MAX_PAYLOAD_SIZE} (LIVEPATCH_MAX_SIZE): "
            "XEN_SYSCTL_LIVEPATCH_UPLOAD fails with -EINVAL (Xen logs nothing)",
        )
    elfclass = data[C.EI_CLASS] if len(data) > C.EI_CLASS else C.ELFCLASS64
    machine = struct.unpack_from("<H", data, 18)[0] if len(data) >= 20 else 0
    lay = layout_for(_ptr_class(machine, elfclass if elfclass in (C.ELFCLASS32, C.ELFCLASS64) else C.ELFCLASS64))
    if lay.ehdr.size > len(data):
        raise Refused(name, "Section header is bigger than payload")
    if data[:4] != C.ELFMAG:
        raise Refused(name, "Not an ELF payload")
    hdr = lay.ehdr.unpack_from(data, 0)
    (_ident, e_type, e_machine, e_version, _entry, e_phoff, e_shoff, e_flags, _ehsize, _phentsize, e_phnum) = hdr[:11]
    e_shentsize, e_shnum, e_shstrndx = hdr[11:]
    del e_phoff
    if (
        e_version != C.EV_CURRENT
        or data[C.EI_VERSION] != C.EV_CURRENT
        or data[C.EI_ABIVERSION] != _ABIVERSION_OK
        or data[C.EI_OSABI] not in (C.ELFOSABI_NONE, C.ELFOSABI_FREEBSD)
        or e_type != C.ET_REL
        or e_phnum != 0
    ):
        raise Refused(name, "Invalid ELF payload")
    arch = _check_machine(data, name, e_machine, e_flags)
    if e_shstrndx == C.SHN_UNDEF:
        raise Refused(name, "Section name idx is undefined")
    if e_shnum >= MAX_SECTIONS:
        raise Refused(name, f"Too many ({e_shnum}) sections")
    if e_shstrndx >= e_shnum:
        raise Refused(name, f"Section name idx ({e_shstrndx}) is past end of sections ({e_shnum})")
    if e_shoff >= len(data):
        raise Refused(name, "Bogus e_shoff")
    if e_shentsize < lay.shdr.size:
        raise Refused(name, f"Section header size is {e_shentsize}! Expected {lay.shdr.size}.")
    if (len(data) - e_shoff) // e_shentsize < e_shnum:
        raise Refused(name, "Section header size is corrupted")
    headers = [lay.shdr.unpack_from(data, e_shoff + i * e_shentsize) for i in range(e_shnum)]
    symtab = _check_sections(data, name, headers, lay.ehdr.size)
    _check_symbol_table(data, name, headers, symtab, lay.sym.size)
    # elf_resolve_section_names()
    _check_string_table(data, name, headers, e_shstrndx, "Section string table is corrupted")
    shstr_size = headers[e_shstrndx][5]
    for i in range(1, e_shnum):
        if headers[i][0] >= shstr_size:
            raise Refused(name, f"Section {i} name is not within .shstrtab")
    _check_symbols(data, name, headers, symtab, arch)
    _check_relocation_sections(data, name, headers, e_shstrndx, symtab, arch, (lay.rel.size, lay.rela.size))


def _check_machine(data: bytes, name: str, machine: int, flags: int) -> Arch:
    # arch_livepatch_verify_elf(): the hypervisor only takes its own machine.
    arch = arch_for_machine(machine)
    if arch is None:
        raise Refused(name, "Unsupported ELF Machine type")
    refusal = arch.verify_elf(data[: C.EI_NIDENT], flags)
    if refusal is not None:
        raise Refused(name, refusal)
    return arch


def _check_sections(data: bytes, name: str, headers: list[tuple[int, ...]], ehdr_size: int) -> int:
    """elf_resolve_sections(): offsets, alignment, NOBITS size, one symbol table."""
    symtab: int | None = None
    for i in range(1, len(headers)):
        _n, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, _info, sh_addralign, _es = headers[i]
        if sh_offset < ehdr_size or (
            sh_type != C.SHT_NOBITS and (sh_offset > len(data) or sh_offset + sh_size > len(data))
        ):
            where = "at ELF header" if sh_offset < ehdr_size else "is past end"
            raise Refused(name, f"Section [{i}] data {where} of payload")
        if sh_addralign & (sh_addralign - 1):
            raise Refused(name, f"Section [{i}] alignment ({sh_addralign:#x}) is not supported")
        if sh_addralign and sh_addr % sh_addralign:
            raise Refused(name, f"Section [{i}] addr ({sh_addr:#x}) is not aligned properly ({sh_addralign:#x})")
        if sh_flags & (C.SHF_WRITE | C.SHF_ALLOC) and sh_type == C.SHT_NOBITS and sh_size > MAX_PAYLOAD_SIZE:
            raise Refused(
                name, f"Section [{i}] is NOBITS of {sh_size} bytes, over LIVEPATCH_MAX_SIZE: -EINVAL (Xen logs nothing)"
            )
        if sh_type == C.SHT_SYMTAB:
            if symtab is not None:
                raise Refused(name, "Unsupported multiple symbol tables")
            symtab = i
            if sh_link >= len(headers):
                raise Refused(name, f"Symbol table idx ({sh_link}) to strtab past end ({len(headers)})")
    if symtab is None:
        raise Refused(name, "No symbol table found")
    return symtab


def _check_string_table(data: bytes, name: str, headers: list[tuple[int, ...]], index: int, message: str) -> None:
    """elf_verify_strtab(): a non-empty SHT_STRTAB that starts and ends with NUL."""
    _n, sh_type, _f, _a, sh_offset, sh_size = headers[index][:6]
    if sh_type != C.SHT_STRTAB or not sh_size or data[sh_offset] or data[sh_offset + sh_size - 1]:
        raise Refused(name, message)


def _check_symbol_table(data: bytes, name: str, headers: list[tuple[int, ...]], symtab: int, sym_size: int) -> None:
    """The end of elf_resolve_sections(): the symbol table header and its string table."""
    sh_size, sh_link, sh_entsize = headers[symtab][5], headers[symtab][6], headers[symtab][9]
    if not sh_size or sh_entsize < sym_size or sh_size % sh_entsize:
        raise Refused(name, "Symbol table header is corrupted")
    _check_string_table(data, name, headers, sh_link, "String table section is corrupted")


def _check_symbols(data: bytes, name: str, headers: list[tuple[int, ...]], symtab: int, arch: Arch) -> None:
    """elf_get_sym(): every name inside the string table; no Thumb mapping symbol on Arm."""
    sh_offset, sh_size, sh_link, sh_entsize = (
        headers[symtab][4],
        headers[symtab][5],
        headers[symtab][6],
        headers[symtab][9],
    )
    str_off, str_size = headers[sh_link][4], headers[sh_link][5]
    for i in range(1, sh_size // sh_entsize):
        st_name = struct.unpack_from("<I", data, sh_offset + i * sh_entsize)[0]
        if st_name >= str_size:
            raise Refused(name, f"Symbol [{i}] name is not within .strtab")
        if arch.denies_symbols:
            end = data.find(b"\0", str_off + st_name)
            sym = data[str_off + st_name : end]
            if arch.symbol_denied(sym):
                raise Refused(name, f"Symbol '{sym.decode('ascii', 'replace')}' should not be in payload")


def _check_relocation_sections(
    data: bytes,
    name: str,
    headers: list[tuple[int, ...]],
    shstrndx: int,
    symtab: int,
    arch: Arch,
    rel_sizes: tuple[int, int],
) -> None:
    """The header checks of livepatch_elf_perform_relocs() and the arch's REL/RELA acceptance.

    Xen makes them section by section while relocating; they are made here,
    in the same order, because the project's reader refuses the same
    sections earlier and in its own words.
    """
    names_at = headers[shstrndx][4]
    for i in range(1, len(headers)):
        sh_name, sh_type, sh_size, sh_link, sh_info, sh_entsize = (headers[i][k] for k in (0, 1, 5, 6, 7, 9))
        if sh_type not in (C.SHT_REL, C.SHT_RELA) or sh_info >= len(headers):
            continue
        if not headers[sh_info][2] & C.SHF_ALLOC:
            continue
        if sh_link != symtab:
            end = data.find(b"\0", names_at + sh_name)
            sec = data[names_at + sh_name : end].decode("utf-8", "surrogateescape")
            raise Refused(name, f"Relative link of {sec} is incorrect ({sh_link}, expected={symtab})")
        if not sh_size:
            continue
        if sh_entsize < rel_sizes[sh_type == C.SHT_RELA] or sh_size % sh_entsize:
            raise Refused(name, "Section relative header is corrupted")
        if sh_type not in arch.rel_section_types:
            raise Refused(name, arch.rel_type_refusal)

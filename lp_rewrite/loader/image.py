"""A payload loaded the way Xen loads it, and what Xen reads from it afterwards.

:func:`load` runs Xen's steps in order: the raw-image checks
(:mod:`~lp_rewrite.loader.header`), the project's reader, placement
(:mod:`~lp_rewrite.loader.placement`), symbol resolution
(:mod:`~lp_rewrite.loader.resolve`), relocation
(:mod:`~lp_rewrite.loader.relocate`), then the parts of
``prepare_payload()`` and ``build_symbol_table()`` that depend on the bytes:
``.livepatch.funcs`` entries (version, ``old_size``, ``resolve_old_address()``,
the arch's size rule, ``livepatch_verify_distance()``), the load/unload hook
arrays, and the "duplicate new symbol" rule.

Not modelled: the build-id checks (``.livepatch.xen_depends`` against the
running hypervisor, ``.livepatch.depends`` at apply time), the special and
patching section presence checks, alternatives, exception tables and bug
frames, and other payloads already loaded (Xen also resolves names against
their new symbols).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from lp_rewrite.elf import consts as C
from lp_rewrite.errors import InputError
from lp_rewrite.livepatch_abi import (
    FUNCS_SECTION,
    HOOK_SECTIONS,
    XEN_PAYLOAD_VERSION,
    func_layout,
    wrong_size,
    wrong_version,
)
from lp_rewrite.loader.header import check_image
from lp_rewrite.loader.placement import Layout, PlacedSection, place
from lp_rewrite.loader.refusal import Refused
from lp_rewrite.loader.relocate import AppliedRelocation, perform_relocs
from lp_rewrite.loader.resolve import Resolved, raw_shndx, resolve_symbols
from lp_rewrite.read import Payload, read_file, read_payload
from lp_rewrite.xensyms import XenSymbols

LOAD_HOOKS, UNLOAD_HOOKS = HOOK_SECTIONS[0], HOOK_SECTIONS[1]


@dataclass(frozen=True)
class PatchFunction:
    """One ``struct livepatch_func`` after relocation and ``resolve_old_address()``."""

    entry: int
    name: str
    new_addr: int
    old_addr: int
    new_size: int
    old_size: int
    old_addr_from_name: bool  # old_addr was 0 in the image and Xen looked the name up


@dataclass(frozen=True)
class MisdirectedBranch:
    """An Arm B/BL that Xen's relocation sends elsewhere than S + A designates."""

    relocation: AppliedRelocation
    intended: int
    actual: int


@dataclass
class LoadedPayload:
    """The payload's memory after Xen's load, and the facts read from it."""

    payload: Payload
    table: XenSymbols
    layout: Layout
    resolved: Resolved
    relocations: list[AppliedRelocation]
    functions: list[PatchFunction] = field(default_factory=list)
    load_hooks: list[int] = field(default_factory=list)
    unload_hooks: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.payload.name

    @property
    def base(self) -> int:
        return self.layout.base

    @property
    def sections(self) -> dict[int, PlacedSection]:
        return self.layout.sections

    def section_bytes(self, index: int) -> bytes:
        placed = self.layout.sections[index]
        region = self.layout.regions[placed.region]
        start = placed.address - region.address
        return bytes(region.data[start : start + placed.size])

    def read(self, address: int, size: int) -> bytes:
        region = self.layout.region_of(address, size)
        if region is None:
            raise InputError(f"{self.name}: {address:#x}+{size} is outside the loaded payload")
        start = address - region.address
        return bytes(region.data[start : start + size])

    def symbol_address(self, name: str) -> int:
        """The resolved value of the payload's defined symbol ``name``."""
        syms = self.payload.elf.symbols
        for i in range(1, syms.count):
            if syms.name(i) == name and syms.is_defined_in_section(i) and i not in self.resolved.ignored:
                return self.resolved.values[i]
        raise KeyError(name)

    def misdirected_branches(self) -> list[MisdirectedBranch]:
        """Branches Xen relocated to land elsewhere than they name (see :meth:`Arch.branch_landing`).

        Only 32-bit Arm has them: its ``perform_rel()`` masks the word offset
        with 0x00FFFFFE, so a B/BL an odd number of words away lands 4 bytes early.
        """
        arch = self.payload.arch
        if not arch.misencodes_branches:
            return []
        out = []
        for r in self.relocations:
            landing = arch.branch_landing(r.rtype, r.after, r.s, r.a, r.p)
            if landing is not None and landing[0] != landing[1]:
                out.append(MisdirectedBranch(r, *landing))
        return out


def load(
    source: str | os.PathLike[str] | bytes | Payload,
    table: XenSymbols,
    base: int,
    *,
    name: str | None = None,
    prepare: bool = True,
) -> LoadedPayload:
    """Load a payload at ``base`` against ``table`` as Xen would (raises :class:`Refused`).

    With ``prepare=False`` it stops after relocation, as ``load_payload_data()``
    does before ``prepare_payload()``; :func:`prepare` runs the rest.
    """
    if isinstance(source, Payload):
        payload = source
        label = name or payload.name
    else:
        data = source if isinstance(source, bytes) else read_file(source)
        label = name or ("<bytes>" if isinstance(source, bytes) else os.fspath(source))
        check_image(data, label)
        payload = read_payload(data, name=label)
    if isinstance(source, Payload):
        check_image(payload.data, label)
    elf = payload.elf
    layout = place(elf, base, label)
    resolved = resolve_symbols(elf, layout, table, label)
    buffers, applied = perform_relocs(elf, payload.arch, layout, resolved, label)
    for index, buf in buffers.items():
        placed = layout.sections[index]
        region = layout.regions[placed.region]
        start = placed.address - region.address
        region.data[start : start + placed.size] = buf
    loaded = LoadedPayload(payload, table, layout, resolved, applied)
    if prepare:
        prepare_payload(loaded)
    return loaded


def prepare_payload(loaded: LoadedPayload) -> None:
    """What Xen reads from the relocated image before the payload is usable.

    Fills ``functions`` and the hook lists; raises :class:`Refused` as
    ``prepare_payload()`` and ``build_symbol_table()`` would.
    """
    loaded.functions.clear()
    loaded.load_hooks.clear()
    loaded.unload_hooks.clear()
    _prepare(loaded, loaded.name)
    _check_new_symbols(loaded, loaded.name)


def _read_pointer(loaded: LoadedPayload, data: bytes, offset: int) -> int:
    fmt = "<Q" if loaded.payload.elf.layout.ptr_size == 8 else "<I"
    value: int = struct.unpack_from(fmt, data, offset)[0]
    return value


def _read_c_string(loaded: LoadedPayload, address: int) -> str | None:
    region = loaded.layout.region_of(address)
    if region is None:
        return None
    start = address - region.address
    end = region.data.find(b"\0", start)
    if end < 0:
        return None
    return region.data[start:end].decode("utf-8", "surrogateescape")


def _first_loaded(loaded: LoadedPayload, section: str, unit: int, label: str) -> PlacedSection | None:
    """The first section of that name (livepatch_elf_sec_by_name()), checked as prepare_payload() does.

    section_ok() checks the header's size first; the table is then read at the
    section's load address, NULL for a section move_payload() skipped.
    """
    sec = loaded.payload.elf.section_by_name(section)
    if sec is None:
        return None
    if sec.sh_size % unit:
        raise Refused(label, wrong_size(sec.sh_size, section, unit))
    placed = loaded.layout.sections.get(sec.index)
    if placed is None:
        raise Refused(label, f"{section} is not SHF_ALLOC: prepare_payload() would read it at a NULL load address")
    return placed


def _prepare(loaded: LoadedPayload, label: str) -> None:
    """prepare_payload(): the .livepatch.funcs entries and the hook arrays."""
    ptr = loaded.payload.elf.layout.ptr_size
    arch = loaded.payload.arch
    # The modelled Xen (4.14 and later) reads every entry with its own layout.
    lay = func_layout(XEN_PAYLOAD_VERSION, ptr)
    funcs = _first_loaded(loaded, FUNCS_SECTION, lay.entry_size, label)
    if funcs is not None:
        for entry in lay.entries(loaded.section_bytes(funcs.index)):
            if entry.version != XEN_PAYLOAD_VERSION:
                raise Refused(label, wrong_version(entry.version))
            if not entry.old_size:
                raise Refused(label, "Address or size fields are zero")
            # A name outside the payload (or NULL) cannot be read here; Xen would read Xen memory.
            name = _read_c_string(loaded, entry.name) if entry.name else None
            new_addr, old_addr = entry.new_addr, entry.old_addr
            from_name = False
            if not old_addr:
                found = loaded.table.lookup(name or "")
                if found is None or not found.address:
                    raise Refused(label, f"Could not resolve old address of {name}")
                old_addr, from_name = found.address, True
            refusal = arch.verify_func(new_addr, entry.new_size, entry.old_size)
            if refusal is not None:
                raise Refused(label, refusal)
            reach = arch.livepatch_range
            if new_addr and not -reach <= old_addr - new_addr < reach:
                raise Refused(
                    label,
                    f"{name}: old_addr {old_addr:#x} is out of branch range of new_addr {new_addr:#x}: "
                    "livepatch_verify_distance() fails with -EOVERFLOW (Xen logs nothing)",
                )
            loaded.functions.append(
                PatchFunction(entry.index, name or "", new_addr, old_addr, entry.new_size, entry.old_size, from_name)
            )
    for section, out in ((LOAD_HOOKS, loaded.load_hooks), (UNLOAD_HOOKS, loaded.unload_hooks)):
        hooks = _first_loaded(loaded, section, ptr, label)
        if hooks is None:
            continue
        data = loaded.section_bytes(hooks.index)
        out.extend(_read_pointer(loaded, data, off) for off in range(0, hooks.size, ptr))


def _check_new_symbols(loaded: LoadedPayload, label: str) -> None:
    """build_symbol_table(): a new (not overriding) symbol must not exist in the hypervisor."""
    elf = loaded.payload.elf
    syms = elf.symbols
    new_addrs = {f.new_addr for f in loaded.functions}
    arch = loaded.payload.arch
    for i, idx in enumerate(raw_shndx(elf)):
        if i == 0 or idx == C.SHN_UNDEF or idx >= len(elf.sections) or idx not in loaded.layout.sections:
            continue
        sym_name = syms.name(i)
        if not sym_name:
            continue
        if elf.sections[idx].sh_flags & 0x10 and sym_name.startswith(".L"):  # SHF_MERGE
            continue
        if not arch.symbol_ok(sym_name):
            continue  # arch_livepatch_symbol_ok() drops it
        if loaded.resolved.values[i] in new_addrs:
            continue  # an overriding symbol
        found = loaded.table.lookup(sym_name)
        if found is not None and found.address:
            raise Refused(label, f"duplicate new symbol: {sym_name}")

"""Rules LP009-LP011: what Xen's loader refuses before looking at any code.

Required sections, the shape of ``.livepatch.funcs`` and the loader's size
limits; the facts come from :mod:`lp_rewrite.livepatch_abi`. When the funcs table
can be read, :func:`check` also returns it for the other rules; when it
cannot, they run without replacements (a hooks-only payload has none and is
valid).
"""

from __future__ import annotations

import struct

from lp_rewrite.check.findings import Finding, Place, make
from lp_rewrite.elf import consts as C
from lp_rewrite.elf.file import Section
from lp_rewrite.errors import InputError, Location
from lp_rewrite.identify import FuncsTable, identify
from lp_rewrite.livepatch_abi import (
    FUNCS_SECTION,
    HOOK_SECTIONS,
    MAX_PAYLOAD_SIZE,
    MAX_SECTIONS,
    REQUIRED_SECTIONS,
    XEN_PAYLOAD_VERSION,
    FuncLayout,
    FuncsProblem,
    FuncsProblemKind,
    func_layout,
    parse_funcs,
    wrong_size,
    wrong_version,
)
from lp_rewrite.read import Payload


def _header_place(payload: Payload, sec: Section) -> Place:
    """The section header as a region: where a wrong size lives."""
    size = payload.elf.layout.shdr.size
    return Place(sec.name, None, payload.elf.e_shoff + sec.index * size, size)


def _empty(sec: Section) -> bool:
    return sec.sh_size == 0 or sec.sh_type == C.SHT_NOBITS


def _section_count(data: bytes) -> int | None:
    """e_shnum from the raw header (extended numbering included), or None if unreadable."""
    if len(data) < 64 or data[:4] != C.ELFMAG or data[C.EI_CLASS] not in (C.ELFCLASS32, C.ELFCLASS64):
        return None
    wide = data[C.EI_CLASS] == C.ELFCLASS64
    shoff = struct.unpack_from("<Q" if wide else "<I", data, 40 if wide else 32)[0]
    shnum: int = struct.unpack_from("<H", data, 60 if wide else 48)[0]
    if shnum == 0 and 0 < shoff <= len(data) - (64 if wide else 40):
        shnum = struct.unpack_from("<Q" if wide else "<I", data, shoff + (32 if wide else 20))[0]
    return shnum


def size_limit(size: int, unread: int | None = None) -> Finding:
    """LP011 for a file over Xen's upload limit; ``unread``: the read bound it exceeds, so nothing else was checked."""
    more = f"; not read further (over the {unread}-byte bound lp-rewrite reads)" if unread is not None else ""
    return make(
        "LP011",
        f"the file is {size} bytes, over Xen's {MAX_PAYLOAD_SIZE}-byte limit (LIVEPATCH_MAX_SIZE): "
        f"the upload is refused; strip debug sections or split the payload{more}",
    )


def limits(data: bytes) -> list[Finding]:
    """The upload and header limits, from the raw bytes: Xen checks them before anything else."""
    out = []
    if len(data) > MAX_PAYLOAD_SIZE:
        out.append(size_limit(len(data)))
    shnum = _section_count(data)
    if shnum is not None and shnum >= MAX_SECTIONS:
        out.append(
            make(
                "LP011",
                f"the file has {shnum} sections; Xen's loader accepts fewer than {MAX_SECTIONS} and refuses the "
                "payload: link with fewer sections (e.g. without -ffunction-sections for code that is not patched)",
            )
        )
    return out


def required_sections(payload: Payload) -> list[Finding]:
    elf = payload.elf
    out = []
    for name in REQUIRED_SECTIONS:
        sec = elf.section_by_name(name)
        if sec is None:
            out.append(
                make(
                    "LP009",
                    f"no {name} section: Xen refuses the payload at load; "
                    + _HOW_TO_ADD.get(name, "add it the way livepatch-build does"),
                    Place(name),
                )
            )
        elif _empty(sec):
            out.append(
                make(
                    "LP009",
                    f"{name} is empty: Xen refuses the payload at load; "
                    + _HOW_TO_ADD.get(name, "fill it the way livepatch-build does"),
                    _header_place(payload, sec),
                )
            )
    patching = [elf.section_by_name(n) for n in (FUNCS_SECTION, *HOOK_SECTIONS)]
    present = [s for s in patching if s is not None]
    if not present:
        out.append(
            make(
                "LP009",
                f"neither {FUNCS_SECTION} nor any .livepatch.hooks.* section: Xen refuses the payload "
                "('Nothing to patch'); a payload must replace a function or run a hook",
            )
        )
    for sec in present:
        if _empty(sec):
            out.append(
                make(
                    "LP009",
                    f"{sec.name} is present but empty: Xen refuses the payload; drop the section or fill it",
                    _header_place(payload, sec),
                )
            )
    return out


_HOW_TO_ADD = {
    ".livepatch.xen_depends": "add the hypervisor's build-id as a GNU build-id note (livepatch-build --xen-depends)",
    ".livepatch.depends": "add the build-id of the payload (or hypervisor) it applies on top of "
    "(livepatch-build --depends)",
    ".note.gnu.build-id": "link the payload with --build-id",
}


def funcs_table(payload: Payload) -> tuple[list[Finding], FuncsTable | None]:
    """Shape of .livepatch.funcs, and the table itself when it can be read."""
    elf = payload.elf
    funcs = elf.section_by_name(FUNCS_SECTION)
    if funcs is None or _empty(funcs) or not funcs.has_file_data:  # no table to read (SHT_NULL: no bytes)
        return [], None  # hooks only (or LP009 said it is missing/empty)
    shape = parse_funcs(elf.section_data(funcs.index), elf.layout.ptr_size)
    out = []
    if shape.layout is not None and shape.layout.version != XEN_PAYLOAD_VERSION:
        out.append(_old_version(payload, funcs, shape.layout))
    out += [_problem(payload, funcs, p) for p in shape.problems]
    if shape.problems:
        return out, None
    try:
        table = identify(payload)
    except InputError as exc:
        out.append(
            make(
                "LP010",
                f"{exc}; the replaced functions are unknown, so the relocation rules did not run",
                _place(funcs, exc.location),
            )
        )
        return out, None
    return out, table


def _place(funcs: Section, where: Location | None) -> Place:
    """Where an error of .livepatch.funcs is: the bytes it names, else the whole section."""
    if where is None or where.section != funcs.name or where.offset is None:
        return Place(funcs.name, None, funcs.sh_offset, funcs.sh_size)
    return Place(funcs.name, where.offset, funcs.sh_offset + where.offset, where.length)


def _problem(payload: Payload, funcs: Section, problem: FuncsProblem) -> Finding:
    """The LP010 finding for what :func:`~lp_rewrite.livepatch_abi.parse_funcs` found wrong, in Xen's terms."""
    k = FuncsProblemKind
    if problem.kind is k.TOO_SMALL:
        return make("LP010", f"{funcs.name} is {funcs.sh_size} bytes, too small for one entry", _place(funcs, None))
    version_byte = Place(funcs.name, problem.offset, funcs.sh_offset + (problem.offset or 0), 1)
    if problem.kind is k.UNKNOWN_VERSION:
        return make(
            "LP010",
            f"entry 0 has payload version {problem.version}; Xen requires {XEN_PAYLOAD_VERSION} "
            f"('{wrong_version(problem.version or 0)}') and refuses the payload",
            version_byte,
        )
    assert problem.first is not None
    if problem.kind is k.SIZE:
        return make(
            "LP010",
            f"size {funcs.sh_size} is not a multiple of the version-{problem.first.version} entry size "
            f"{problem.first.entry_size}: Xen refuses the section; the payload and the struct livepatch_func "
            "it was built with disagree",
            _header_place(payload, funcs),
        )
    return make(
        "LP010",
        f"entry {problem.entry} has payload version {problem.version}, entry 0 has {problem.first.version}: "
        f"Xen refuses the payload ('{wrong_version(problem.version or 0)}')",
        version_byte,
    )


def _old_version(payload: Payload, funcs: Section, layout: FuncLayout) -> Finding:
    """A version Xen 4.14 and later refuse, that this tool reads (version 1)."""
    # An error like any other version Xen refuses: only 4.7-4.13 load it, and
    # a team that targets those says so once, with --allow LP010:version-1.
    # That symbol names this finding alone, so the allow entry leaves a wrong
    # size, mixed versions or an unreadable table failing.
    allow_key = f"version-{layout.version}"
    current = func_layout(XEN_PAYLOAD_VERSION, layout.ptr_size).entry_size
    # section_ok() sizes the table with today's entry before any version is read.
    if funcs.sh_size % current:
        refusal = f"'{wrong_size(funcs.sh_size, funcs.name, current)}'"
    else:
        refusal = f"'{wrong_version(layout.version)}'"
    voff = layout.version_offset
    return make(
        "LP010",
        f"payload version {layout.version} (the {layout.entry_size}-byte layout of Xen 4.7-4.13): Xen 4.14 and "
        f"later refuse it ({refusal}); rebuild it for the hypervisor it targets, or, for a 4.7-4.13 "
        f"hypervisor, allow it with --allow LP010:{allow_key}",
        Place(funcs.name, voff, funcs.sh_offset + voff, 1),
        symbol=allow_key,
        symbol_kind=None,
    )


def check(payload: Payload) -> tuple[list[Finding], FuncsTable | None]:
    """LP009 and LP010 (the limits come first, from the raw bytes: :func:`limits`)."""
    found, table = funcs_table(payload)
    return required_sections(payload) + found, table

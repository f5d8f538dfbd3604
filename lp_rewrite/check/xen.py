"""Rules that need the hypervisor image (``--xen-syms``): LP004, LP005, LP007, LP013, LP018.

:class:`XenImage` is read once per run (a batch shares it): the runtime
symbol table (:class:`lp_rewrite.xensyms.XenSymbols`) and, on x86-64, what
CET-IBT makes of it:

* **IBT build**: Xen built with CONFIG_XEN_IBT uses ``-fcf-protection=branch
  -mmanual-endbr``, so exactly its ``cf_check`` functions start with ENDBR64
  (f3 0f 1e fa); without IBT none does. The image counts as an IBT build
  when any function in ``[_stext, _etext)`` starts with ENDBR64.
* **Sealed functions**: at boot ``seal_endbr64()`` walks every pointer-sized
  word between the linker symbols ``__initdata_cf_clobber_start`` and
  ``__initdata_cf_clobber_end`` (where xen.lds.S puts
  ``.init.data.cf_clobber`` and ``.init.rodata.cf_clobber``) and, when the
  word points into ``[_stext, _etext)`` at an ENDBR64, overwrites that
  ENDBR64. This module reads the same words from the image and computes
  the same set. When those symbols are missing, nothing counts as sealed.
* **Init sections** (LP018): a symbol or address in an output section of the
  image whose name starts with ``.init`` (``.init.text``, ``.init.data``:
  xen.lds.S gathers ``__init``, ``__initdata``, ``__initconst``,
  ``.init.setup`` and the initcall tables there) is memory that Xen unmaps
  and frees at the end of boot.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from lp_rewrite.arch import Arch, Kind, arch_for_machine
from lp_rewrite.check.context import Context, Reference
from lp_rewrite.check.findings import Finding, Place, make, symbol_kind
from lp_rewrite.check.relocs import classified
from lp_rewrite.decide import Decisions
from lp_rewrite.elf import consts as C
from lp_rewrite.errors import InputError, UsageError
from lp_rewrite.inputs import open_binary
from lp_rewrite.livepatch_abi import FUNCS_SECTION
from lp_rewrite.xensyms import XenSymbol, XenSymbols, scoped_names

_CLOBBER = ("__initdata_cf_clobber_start", "__initdata_cf_clobber_end")
_TEXT = ("_stext", "_etext")


@dataclass
class XenImage:
    path: Path
    symbols: XenSymbols
    machine: int
    ptr_size: int
    text_start: int = 0
    text: bytes = b""
    sealed: frozenset[int] = field(default_factory=frozenset)

    @cached_property
    def arch(self) -> Arch | None:
        """The image's target, which has the landing pads (None for a machine no payload targets)."""
        return arch_for_machine(self.machine)

    @property
    def arch_name(self) -> str:
        arch = self.arch
        return arch.name if arch is not None else f"e_machine {self.machine}"

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> XenImage:
        p = Path(path)
        try:
            with open_binary(p, f"--xen-syms {p}") as f:  # a FIFO or a device is refused, not read
                head = f.read(20)
        except OSError as exc:
            raise InputError(f"--xen-syms {p}: {exc.strerror or exc}") from None
        if len(head) < 20 or head[:4] != C.ELFMAG:
            raise InputError(f"--xen-syms {p}: not an ELF file")
        machine = struct.unpack_from("<H", head, 18)[0]
        ptr = 8 if head[C.EI_CLASS] == C.ELFCLASS64 else 4
        symbols = XenSymbols.from_xen_syms(p)
        image = cls(p, symbols, machine, ptr)
        image._read_text()
        if image.arch is not None and image.arch.landing_pad is not None:
            image.sealed = image._sealed(image.arch.landing_pad)
        return image

    def _read_text(self) -> None:
        start, end = (self.symbols.lookup(n) for n in _TEXT)
        if start is not None and end is not None and start.address < end.address:
            lo, hi = start.address, end.address
        else:  # no linker symbols: span the functions in .text
            spans = [s for s in self.symbols.symbols.values() if s.is_function and s.section == ".text"]
            if not spans:
                return
            lo = min(s.address for s in spans)
            hi = max(s.address + s.size for s in spans)
        self.text_start = lo
        self.text = self.symbols.read(lo, hi - lo) or b""

    def in_text(self, address: int) -> bool:
        return self.text_start <= address < self.text_start + len(self.text)

    def code(self, address: int, size: int) -> bytes:
        if not self.in_text(address):
            return b""
        off = address - self.text_start
        return self.text[off : off + size]

    def _sealed(self, pad: bytes) -> frozenset[int]:
        start, end = (self.symbols.lookup(n) for n in _CLOBBER)
        if start is None or end is None or end.address <= start.address:
            return frozenset()
        words = self.symbols.read(start.address, end.address - start.address) or b""
        fmt = "<Q" if self.ptr_size == 8 else "<I"
        n = len(words) // self.ptr_size
        targets = struct.unpack_from(f"<{n}{fmt[1]}", words) if n else ()
        return frozenset(t for t in targets if self.code(t, len(pad)) == pad)

    @cached_property
    def ibt(self) -> bool:
        arch = self.arch
        if arch is None or arch.landing_pad is None:
            return False
        pad = arch.landing_pad
        return any(s.is_function and self.code(s.address, len(pad)) == pad for s in self.symbols.symbols.values())

    def landing_pad_at(self, address: int) -> int:
        """Bytes of landing pad (ENDBR64 or its poison) at this entry: Xen patches that far in."""
        arch = self.arch
        if arch is None or arch.landing_pad is None:
            return 0
        n = len(arch.landing_pad)
        return n if self.code(address, n) in (arch.landing_pad, arch.sealed_landing_pad) else 0

    @cached_property
    def _by_base_name(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name in self.symbols.symbols:
            out.setdefault(name.rpartition("#")[2], []).append(name)
        return out

    def suggestions(self, name: str) -> list[str]:
        """Names this image has for the same base name (``foo`` / ``path/x.c#foo``)."""
        return sorted(n for n in self._by_base_name.get(name.rpartition("#")[2], []) if n != name)[:3]


def check_arch(ctx: Context, xen: XenImage) -> None:
    if xen.machine != ctx.arch.machine:
        raise UsageError(
            f"{ctx.payload.name}: an {ctx.arch.name} payload, but --xen-syms {xen.path} is {xen.arch_name}"
        )


# -- LP004 / LP005 -----------------------------------------------------------------


def _name_problem(xen: XenImage, name: str) -> str | None:
    if name in xen.symbols.ambiguous:
        return "LP005"
    if xen.symbols.lookup(name) is None:
        return "LP004"
    return None


def _unresolved_message(xen: XenImage, name: str, what: str, refusal: str = "") -> str:
    """LP004's message; ``refusal`` quotes what Xen logs when the load fails, where it names it."""
    hint = ""
    near = xen.suggestions(name)
    if near:
        hint = f" (this hypervisor has {', '.join(near)})"
    fails = f"the load fails ({refusal})" if refusal else "the load fails"
    return (
        f"{what} {name!r} is not in the hypervisor's symbol table{hint}: {fails} unless a payload loaded "
        "earlier introduces it; check the name (statics are path/file.c#name, the path relative to xen/) or "
        "build against this xen-syms"
    )


def _ambiguous_message(name: str, what: str) -> str:
    return (
        f"{what} {name!r} names more than one symbol in the hypervisor's table: Xen's lookup returns one of them, "
        "so the payload may patch or call the wrong function; give the file a unique name or use a literal "
        "old_addr"
    )


def _undefined(ctx: Context) -> list[int]:
    """The payload's undefined symbols (read off the section-index column), computed once per payload."""
    return ctx.cache("undefined", lambda c: [i for i, s in enumerate(c.syms.shndx) if i and s == C.SHN_UNDEF])


def check_names(ctx: Context, xen: XenImage) -> list[Finding]:
    syms = ctx.syms
    problems = {i: p for i in _undefined(ctx) if (p := _name_problem(xen, syms.name(i))) is not None}
    out = []
    if problems:
        first = _first_references(ctx, set(problems))
        for i, rule_id in problems.items():
            name = syms.name(i)
            place = first.get(i) or _symtab_place(ctx, i)
            what = "undefined symbol"
            unresolved = rule_id == "LP004"
            message = _unresolved_message(xen, name, what) if unresolved else _ambiguous_message(name, what)
            out.append(make(rule_id, message, place, symbol=name, symbol_kind=symbol_kind(syms.type(i))))
    if ctx.funcs is not None:
        funcs = ctx.funcs
        for rep in funcs.replacements:
            if rep.old_symbol is not None or rep.old_literal:
                continue  # old_addr is the undefined symbol above, or a literal: no name lookup
            problem = _name_problem(xen, rep.original)
            if problem is None:
                continue
            off = rep.entry * funcs.layout.entry_size + funcs.layout.name
            place = Place(FUNCS_SECTION, off, funcs.section.sh_offset + off, funcs.layout.ptr_size)
            what = f"the original of entry {rep.entry} (old_addr 0: Xen resolves the name string)"
            msg = (
                _unresolved_message(xen, rep.original, what, "'Could not resolve old address'")
                if problem == "LP004"
                else _ambiguous_message(rep.original, what)
            )
            out.append(make(problem, msg, place, symbol=rep.original))
    return out


def _first_references(ctx: Context, symbols: set[int]) -> dict[int, Place]:
    """Symbol -> where its first relocation (in any relocated section) writes."""
    out: dict[int, Place] = {}
    secs = ctx.elf.sections
    for ridx, picked in ctx.tables_against(symbols):
        target = secs.info[ridx]
        for _i, _type, s, off, _addend in ctx.entries(ridx, picked):
            if s not in out:
                out[s] = ctx.place(target, off, 4)
    return out


# -- LP013 -----------------------------------------------------------------------


def _xen_names(ctx: Context) -> dict[int, str]:
    """Named SHN_ABS symbols -> the name Xen's table gives the function they stand for (computed once per payload).

    A global (or an alias already spelled ``path/file.c#foo``) is its own
    name; a bare local is looked up as prelink's lookup_local_symbol() does,
    in the scope of the nearest preceding FILE symbol (:func:`scoped_names`).
    """
    return ctx.cache("xen names", _scoped_xen_names)


def _scoped_xen_names(ctx: Context) -> dict[int, str]:
    syms = ctx.syms
    # FILE symbols and SHN_ABS ones, from the columns (st_info's low nibble is the type); then exactly.
    columns = enumerate(zip(syms.info, syms.shndx, strict=True))
    near = [i for i, (info, s) in columns if i and (info & 0xF == C.STT_FILE or s == C.SHN_ABS)]
    wanted = [
        i
        for i in near
        if syms.type(i) == C.STT_FILE or (syms.is_absolute(i) and syms.type(i) != C.STT_SECTION and syms.name(i))
    ]
    entries = (
        (syms.name(i), syms.type(i) == C.STT_FILE, syms.bind(i) == C.STB_LOCAL and "#" not in syms.name(i))
        for i in wanted
    )
    return {i: name for i, name in zip(wanted, scoped_names(entries), strict=True) if name is not None}


def _where_it_is(xen: XenImage, address: int) -> str:
    fn = xen.symbols.function_containing(address)
    if fn is None:
        return "which is not in any function there"
    if fn.address == address:
        return f"the entry of {fn.name} there"
    return f"{address - fn.address:#x} bytes into {fn.name} there"


def _mismatch(xen: XenImage, name: str, address: int) -> str | None:
    """Why ``address`` is not where this image has ``name`` (None when it is, or ``name`` is unknown)."""
    found = xen.symbols.matches(name)
    if not found or address in {f.address for f in found}:
        return None
    has = " and ".join(f"{f.address:#x}" for f in found[:2])
    return f"{address:#x} ({_where_it_is(xen, address)}), but {xen.path} has {name} at {has}"


_REBUILD = "the payload was built against another build of the hypervisor; rebuild it against this xen-syms"


def check_addresses(ctx: Context, xen: XenImage) -> list[Finding]:
    """LP013: SHN_ABS values and literal old_addr values, against the image."""
    out = []
    names = _xen_names(ctx)
    reported: set[tuple[str, int]] = set()
    wrong = {i: why for i, name in names.items() if (why := _mismatch(xen, name, ctx.syms.value[i])) is not None}
    if wrong:
        first = _first_references(ctx, set(wrong))
        for i, why in wrong.items():
            name = names[i]
            reported.add((name, ctx.syms.value[i]))
            out.append(
                make(
                    "LP013",
                    f"the absolute symbol {ctx.name(i)!r} holds {why}: Xen uses the value as it is, so every "
                    f"reference through it reaches that address instead; {_REBUILD}",
                    first.get(i) or _symtab_place(ctx, i),
                    symbol=name,
                    symbol_kind=symbol_kind(ctx.syms.type(i)),
                )
            )
    if ctx.funcs is None:
        return out
    funcs = ctx.funcs
    for rep in funcs.replacements:
        if not rep.old_literal or (rep.original, rep.old_literal) in reported:
            continue
        why = _mismatch(xen, rep.original, rep.old_literal)
        if why is None and not xen.symbols.matches(rep.original):
            why = f"{rep.old_literal:#x} ({_where_it_is(xen, rep.old_literal)}), but {xen.path} has no {rep.original}"
        if why is None:
            continue
        off = rep.entry * funcs.layout.entry_size + funcs.layout.old_addr
        place = Place(FUNCS_SECTION, off, funcs.section.sh_offset + off, funcs.layout.ptr_size)
        out.append(
            make(
                "LP013",
                f"entry {rep.entry} ({rep.original}) has the literal old_addr {why}: Xen patches the literal, "
                f"so it overwrites the code at that address; {_REBUILD}",
                place,
                symbol=rep.original,
            )
        )
    return out


def _symtab_place(ctx: Context, i: int) -> Place:
    symtab = ctx.elf.sections[ctx.elf.symtab_index]
    entsize = ctx.elf.layout.sym.size
    return Place(symtab.name, i * entsize, symtab.sh_offset + i * entsize, entsize)


# -- LP007 -----------------------------------------------------------------------


def _ibt_problem(xen: XenImage, pad: bytes, address: int | None) -> str | None:
    if address is None or not xen.in_text(address):
        return None  # not hypervisor code (or unknown: LP004 says so)
    if address in xen.sealed:
        return "loses its ENDBR64 at boot (seal_endbr64() clobbers it: a .init.{ro,}data.cf_clobber table points at it)"
    if xen.code(address, len(pad)) != pad:
        return "does not start with ENDBR64 (it is not cf_check)"
    return None


def _address_of(xen: XenImage, name: str) -> int | None:
    sym = xen.symbols.lookup(name)
    return sym.address if sym is not None else None


_IBT_FIX = (
    "with CET-IBT an indirect call through this pointer faults with #CP; mark it cf_check in the hypervisor "
    "(and keep it out of cf_clobber tables), or hand out a pointer to a cf_check wrapper"
)


def check_ibt(ctx: Context, xen: XenImage, decisions: Decisions | None) -> list[Finding]:
    """LP007: hypervisor functions whose address the payload takes, by name or as an absolute value.

    A reference reaches the hypervisor through an undefined symbol (resolved
    by name at load) or an SHN_ABS one (prelinked payloads and --absolute
    aliases: the value is the address); a reference the rewrite will move to
    an original reaches it too, at old_addr's literal when there is one.
    """
    pad = ctx.arch.landing_pad  # the image's too: check_arch() made sure they are one target
    if pad is None or not xen.ibt:
        return []
    syms = ctx.syms
    names = _xen_names(ctx)
    wanted = set(_undefined(ctx)) | set(names)
    out = []
    for ref in ctx.references(wanted, calls=False):
        if ref.kind not in (Kind.ADDRESS, Kind.POINTER):
            continue
        if ref.absolute is not None:
            name = names.get(ref.symbol, ctx.name(ref.symbol))
            address: int | None = ref.absolute
            what = f"the hypervisor's {name} (absolute {ref.absolute:#x})"
        else:
            name = syms.name(ref.symbol)
            address = _address_of(xen, name)
            what = f"the hypervisor's {name}"
        why = _ibt_problem(xen, pad, address)
        if why is not None:
            out.append(
                make(
                    "LP007",
                    f"{ctx.where(ref.section.index, ref.offset)} takes the address of {what}, which {why}: {_IBT_FIX}",
                    ctx.place(ref.section.index, ref.offset, 4),
                    symbol=name,
                )
            )
    if decisions is not None and ctx.funcs is not None:
        for d in decisions.retargets:
            if d.replacement is None or classified(ctx, d).kind not in (Kind.ADDRESS, Kind.POINTER):
                continue
            rep = ctx.funcs.replacements[d.replacement]
            why = _ibt_problem(xen, pad, rep.old_literal or _address_of(xen, rep.original))
            if why is not None:
                out.append(
                    make(
                        "LP007",
                        f"{ctx.where(d.section, d.offset)} takes the address of {rep.original}, which the rewrite "
                        f"retargets to the hypervisor's original, which {why}: {_IBT_FIX}",
                        ctx.place(d.section, d.offset, 4),
                        symbol=rep.original,
                    )
                )
    return out


# -- LP018 -----------------------------------------------------------------------


def is_init_section(name: str | None) -> bool:
    """Whether an output section of the image is one Xen frees after boot (``.init.text``, ``.init.data``...)."""
    return name is not None and name.startswith(".init")


def _init_symbol(xen: XenImage, name: str) -> XenSymbol | None:
    """The symbol in an init section that ``name`` resolves to (for an ambiguous name, any of them)."""
    return next((s for s in xen.symbols.matches(name) if is_init_section(s.section)), None)


_FREED = (
    "Xen unmaps and frees its init sections at the end of boot, and its symbol table keeps the name, so the payload "
    "loads and the fault comes when this code runs; use what the running hypervisor keeps after boot, or build and "
    "test the payload against this xen-syms"
)


# LP018: what a reference of each kind does with the address of init memory (else: takes it).
_INIT_USE = {
    Kind.CALL: ("calls", "the call jumps into freed memory"),
    Kind.MEMORY: ("reads or writes", "the access reaches freed memory"),
}
_INIT_ADDRESS = ("takes the address of", "whatever calls, reads or writes through it reaches freed memory")


def _use_message(ctx: Context, ref: Reference, kind: Kind, what: str, section: str, more: int) -> str:
    verb, outcome = _INIT_USE.get(kind, _INIT_ADDRESS)
    also = f" ({more} more reference{'s' if more > 1 else ''} in the payload)" if more else ""
    return (
        f"{ctx.where(ref.section.index, ref.offset)} {verb} {what}, which Xen frees after boot ({section}): "
        f"{outcome}{also}. {_FREED}"
    )


def check_init(ctx: Context, xen: XenImage) -> list[Finding]:
    """LP018: references to hypervisor code and data in the init sections, and originals there.

    A symbol reaches the hypervisor undefined (resolved by name at load, to
    Xen's own symbol first) or SHN_ABS (its value is the address). One
    finding per such symbol, at its first relocation in a section Xen loads
    outside .livepatch.funcs (the place LP004 and LP013 report), saying what
    the code does there; a symbol no loaded section refers to harms nothing.
    Then one finding per .livepatch.funcs entry whose original is in an init
    section.
    """
    syms = ctx.syms
    # payload symbol -> (Xen's name, how to say it, the init section, what the name names)
    targets: dict[int, tuple[str, str, str, str | None]] = {}
    for i in _undefined(ctx):
        if syms.name(i):
            found = _init_symbol(xen, syms.name(i))
            if found is not None:
                names = "function" if found.is_function else "variable"
                targets[i] = (syms.name(i), f"the hypervisor's {syms.name(i)}", found.section, names)
    for i, name in _xen_names(ctx).items():
        held = xen.symbols.section_at(syms.value[i])
        if held is not None and is_init_section(held):
            what = f"the hypervisor's {name} (absolute {syms.value[i]:#x})"
            targets[i] = (name, what, held, symbol_kind(syms.type(i)))
    out = []
    for i, (ref, use, n) in _init_references(ctx, set(targets)).items():
        name, what, section, kind = targets[i]
        place = ctx.place(ref.section.index, ref.offset, 4)
        out.append(
            make(
                "LP018",
                _use_message(ctx, ref, use, what, section, n - 1),
                place,
                symbol=name,
                symbol_kind=kind,
            )
        )
    if ctx.funcs is not None:
        out += _init_originals(ctx, xen)
    return out


def _init_references(ctx: Context, symbols: set[int]) -> dict[int, tuple[Reference, Kind, int]]:
    """Symbol -> its first reference in a loaded section other than .livepatch.funcs, what is done with the
    address (the first reference that is not the leading half of an address pair says), and how many there are."""
    out: dict[int, tuple[Reference, Kind, int]] = {}
    if not symbols:
        return out
    secs = ctx.elf.sections

    def loaded(target: int) -> bool:
        return bool(secs.flags[target] & C.SHF_ALLOC) and secs.name(target) != FUNCS_SECTION

    for ref in ctx.references(symbols, sections=loaded):  # a type Xen refuses is left out: LP003
        s = ref.symbol
        first, kind, n = out.get(s, (ref, ref.kind, 0))
        if kind is Kind.PAGE:
            kind = ref.kind
        out[s] = (first, kind, n + 1)
    return out


def _init_originals(ctx: Context, xen: XenImage) -> list[Finding]:
    funcs = ctx.funcs
    assert funcs is not None
    out = []
    for rep in funcs.replacements:
        field = funcs.layout.old_addr
        if rep.old_literal:
            section = xen.symbols.section_at(rep.old_literal)
            how = f"old_addr {rep.old_literal:#x}"
        else:
            found = _init_symbol(xen, rep.original)
            section = found.section if found is not None else None
            if rep.old_symbol is not None:
                how = "old_addr's symbol, resolved by name"
            else:
                how = "its name string, old_addr 0"
                field = funcs.layout.name
        if section is None or not is_init_section(section):
            continue
        off = rep.entry * funcs.layout.entry_size + field
        place = Place(FUNCS_SECTION, off, funcs.section.sh_offset + off, funcs.layout.ptr_size)
        out.append(
            make(
                "LP018",
                f"entry {rep.entry} patches {rep.original} ({how}), which is in {section}: Xen frees it after boot, "
                "so the code it replaces no longer exists, and at apply Xen writes its jump into freed memory (a "
                "fault, or whatever reuses the page is corrupted); drop the entry, or patch what the running "
                "hypervisor still has",
                place,
                symbol=rep.original,
            )
        )
    return out

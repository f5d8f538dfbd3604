"""The ``verify`` certificate: a rewritten payload loads exactly like the original, but for the retargets.

Both payloads are loaded by the Xen-semantics loader (:mod:`lp_rewrite.loader`)
at the same address against the same hypervisor symbol table. Then:

* the loaded sections must be the same (names, addresses, sizes, regions);
* the sites that must be retargeted are decided from the ORIGINAL alone
  (:func:`lp_rewrite.decide.decide`, the rewriter's rule). For each, the
  expected bytes are computed by relocating the ORIGINAL's place again with
  the replacement's entry E moved to the original function's address X:
  same type, same P, same addend, and ``S' = X + (S - E)``, i.e. whatever
  offset from E the original designated, the rewrite must designate from X.
  The REWRITTEN's relocated bytes must equal that, exactly. So a site left
  pointing at the payload's copy fails (completeness), and so does one moved
  anywhere but the original (x86 PC32 depends on P, AArch64 ADRP on pages,
  Arm MOVW/MOVT on halves, REL places on their re-encoded addends: all of
  that is in the recomputation, none of it is assumed);
* every other loaded byte must be identical;
* ``prepare_payload()`` must see the same thing in both (same patched
  functions and hooks), or refuse both the same way.

The original's address X is what Xen patches: a literal ``old_addr`` as it
is, otherwise what the alias name resolves to in the table (the real
``xen-syms``, or a synthetic one shared by both payloads).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from lp_rewrite.arch import LoadError
from lp_rewrite.decide import Decisions, decide, nothing_to_retarget
from lp_rewrite.errors import InputError, VerificationError
from lp_rewrite.identify import FuncsTable, Replacement, identify
from lp_rewrite.loader import LoadedPayload, Refused, default_base, load, prepare_payload, synthetic_table
from lp_rewrite.loader.header import check_image
from lp_rewrite.loader.relocate import AppliedRelocation
from lp_rewrite.policy import Policy
from lp_rewrite.read import Payload, read_file, read_payload, symbol_label
from lp_rewrite.xensyms import XenSymbols

# `verify` imports the loader model, whose classes are dataclasses: the
# certificate, filled in as it is proven, is one too. Its values are NamedTuples.


class Site(NamedTuple):
    """One retargeted relocation, as the certificate proved it."""

    section: str
    offset: int
    address: int  # P
    type_name: str
    original: str  # the alias name
    entry: int  # E: the replacement's entry in the loaded payload
    original_address: int  # X
    before: bytes  # ORIGINAL's relocated bytes
    after: bytes  # REWRITTEN's relocated bytes (== the recomputed expectation)

    @property
    def distinguished(self) -> bool:
        """Whether these bytes differ between designating E and designating X."""
        return self.before != self.after

    def record(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "offset": self.offset,
            "address": self.address,
            "type": self.type_name,
            "original": self.original,
            "entry": self.entry,
            "original_address": self.original_address,
            "before": self.before.hex(),
            "after": self.after.hex(),
            "distinguished": self.distinguished,
        }


class SectionCount(NamedTuple):
    name: str
    address: int
    size: int
    relocations: int
    retargeted: int


@dataclass
class Certificate:
    """What ``verify`` proved about a rewritten payload."""

    original: str
    rewritten: str
    arch: str
    symbols: str  # where the table came from
    base: int
    sections: list[SectionCount] = field(default_factory=list)
    sites: list[Site] = field(default_factory=list)
    prepare: str = ""  # what prepare_payload() made of both
    # Xen refuses both payloads at this placement (nothing else was compared).
    refused_both: bool = False
    # Notes whose sh_addralign the rewrite raised (--align-notes): the ORIGINAL is
    # loaded with them aligned too, so that placement is what is compared.
    aligned_notes: list[str] = field(default_factory=list)
    # Why no site must be retargeted (a hooks-only payload, say); None when one must.
    nothing_to_retarget: str | None = None
    identical_files: bool = False

    @property
    def bytes_compared(self) -> int:
        return sum(s.size for s in self.sections)

    @property
    def blind(self) -> list[Site]:
        """Sites whose bytes are the same for E and X in this placement."""
        return [s for s in self.sites if not s.distinguished]

    def record(self) -> dict[str, Any]:
        return {
            "verified": True,
            "refused_both": self.refused_both,
            "aligned_notes": self.aligned_notes,
            "nothing_to_retarget": self.nothing_to_retarget,
            "identical_files": self.identical_files,
            "original": self.original,
            "rewritten": self.rewritten,
            "arch": self.arch,
            "symbols": self.symbols,
            "base": self.base,
            "bytes_compared": self.bytes_compared,
            "sections": [
                {
                    "name": s.name,
                    "address": s.address,
                    "size": s.size,
                    "relocations": s.relocations,
                    "retargeted": s.retargeted,
                }
                for s in self.sections
            ],
            "retargeted": [s.record() for s in self.sites],
            "indistinguishable": len(self.blind),
            "prepare_payload": self.prepare,
        }

    def text(self) -> str:
        from lp_rewrite.report import table
        from lp_rewrite.textsafe import shown

        original, rewritten, symbols, prepare = map(shown, (self.original, self.rewritten, self.symbols, self.prepare))
        if self.refused_both:
            return (
                f"certificate: Xen refuses {original} at every placement tried, and {rewritten} with it "
                f"({self.arch}, symbols from {symbols}, payload loaded at {self.base:#x}):\n  {prepare}\n"
                "equivalent: the rewrite does not change whether the payload loads"
            )
        if self.nothing_to_retarget is not None:
            same = "the files are byte-identical" if self.identical_files else "the files differ, not where Xen loads"
            head = f"certificate: {rewritten} is {original} unchanged: nothing to retarget "
            head += f"({self.nothing_to_retarget}); {same}"
        else:
            head = f"certificate: {rewritten} is {original} with {len(self.sites)} site(s) retargeted"
        lines = [
            head,
            f"  {self.arch}, symbols from {symbols}, payload loaded at {self.base:#x}",
            "",
            table(
                [
                    (s.name, f"{s.address:#x}", str(s.size), str(s.relocations), str(s.retargeted))
                    for s in self.sections
                ],
                ("section", "address", "bytes", "relocations", "retargeted"),
            ),
        ]
        if self.sites:
            lines += [
                "",
                table(
                    [
                        (
                            f"{s.section}+{s.offset:#x}",
                            s.type_name,
                            s.original,
                            f"{s.entry:#x} -> {s.original_address:#x}",
                            f"{s.before.hex()} -> {s.after.hex()}" if s.distinguished else f"{s.after.hex()} (same)",
                        )
                        for s in self.sites
                    ],
                    ("site", "type", "original", "entry -> original", "bytes"),
                ),
            ]
        if self.blind:
            lines += [
                "",
                f"{len(self.blind)} site(s) encode the same bytes for the entry and the original in every "
                "placement tried: they cannot tell the two apart (marked 'same')",
            ]
        if self.aligned_notes:
            lines += ["", f"aligned to 4 (--align-notes), contents unchanged: {', '.join(self.aligned_notes)}"]
        lines += [
            "",
            f"verified: {self.bytes_compared} loaded bytes in {len(self.sections)} sections identical but for "
            f"{len(self.sites)} retargeted site(s); prepare_payload: {prepare}",
        ]
        return "\n".join(lines)


def _fail(rewritten: str, msg: str) -> VerificationError:
    return VerificationError(f"{rewritten}: not a verified rewrite: {msg}")


def _read(source: str | os.PathLike[str] | bytes | Payload, name: str | None) -> Payload:
    if isinstance(source, Payload):
        return source
    data = source if isinstance(source, bytes) else read_file(source)
    label = name or ("<bytes>" if isinstance(source, bytes) else os.fspath(source))
    check_image(data, label)
    return read_payload(data, name=label)


def certify(
    original: str | os.PathLike[str] | bytes | Payload,
    rewritten: str | os.PathLike[str] | bytes | Payload,
    *,
    table: XenSymbols | None = None,
    base: int | None = None,
    policy: Policy | None = None,
    rewritten_name: str | None = None,
) -> Certificate:
    """Prove REWRITTEN is ORIGINAL with exactly the required retargets, or raise.

    Raises :class:`VerificationError` (exit 1) naming the first difference,
    or :class:`InputError` (exit 2) when the ORIGINAL itself cannot be
    loaded or analysed.

    A site whose bytes come out the same for E and X in one placement (E and
    X sharing their low 12 bits under an ``*_LO12`` type, say) proves
    nothing there, so further placements are tried (other synthetic
    addresses, other load addresses) until every site tells them apart. What
    no placement separates is listed as such (:attr:`Certificate.blind`):
    with a real ``xen-syms`` and Xen's page-aligned load address, those
    bytes are the same whichever address the site designates.
    """
    policy = policy or Policy()
    o = _read(original, None)
    if not isinstance(rewritten, bytes | Payload):
        # A file that cannot be read at all (missing, a FIFO, no permission) is bad input, not a failed proof.
        rewritten_name = rewritten_name or os.fspath(rewritten)
        rewritten = read_file(rewritten)
    try:
        r = _read(rewritten, rewritten_name)
    except InputError as exc:
        raise _fail(rewritten_name or str(rewritten), f"it does not load: {exc}") from None
    if (o.arch.name, o.elf.elfclass) != (r.arch.name, r.elf.elfclass):
        raise _fail(r.name, f"it is a {r.arch.name} object, the original is {o.arch.name}")
    try:
        funcs = identify(o, absent_ok=True)
    except InputError as exc:
        raise exc.prefixed(o.name) from None
    decisions = decide(o, funcs, policy)
    best: Certificate | None = None
    for attempt, shift in enumerate(_BASE_SHIFTS):
        if attempt and base is not None and table is not None:
            break  # nothing left to vary
        tbl = table if table is not None else synthetic_table([o, r], variant=attempt)
        at = base if base is not None else default_base(tbl) + shift
        cert = _certify_at(o, r, tbl, at, funcs, decisions, policy)
        if best is None or _weakness(cert) < _weakness(best):
            best = cert
        if _weakness(best) == (False, 0):
            break
    assert best is not None
    best.nothing_to_retarget = nothing_to_retarget(funcs, decisions)
    best.identical_files = o.data == r.data
    return best


def _same_file_but_for_the_edits(o: Payload, r: Payload, policy: Policy, refusal: str) -> None:
    """With no loaded image to compare, REWRITTEN must be byte for byte what the rewrite makes of ORIGINAL.

    The rewrite is deterministic and proves its own output, so this needs the
    options the payload was rewritten with.
    """
    from lp_rewrite.pipeline import rewrite

    why = f"Xen refuses it ({refusal}), and it is not the rewrite of the original with these options"
    try:
        expected = rewrite(o.data, policy=policy).output
    except (InputError, VerificationError) as exc:
        raise _fail(r.name, f"{why}: {exc}") from None
    if expected != r.data:
        at = next((i for i, (x, y) in enumerate(zip(expected, r.data, strict=False)) if x != y), None)
        where = f"byte {at:#x} differs" if at is not None else f"{len(r.data)} bytes, not {len(expected)}"
        raise _fail(r.name, f"{why} ({where})")


def _refused_when_loaded(
    o: Payload, r: Payload, table: XenSymbols, base: int, policy: Policy, refused: Refused
) -> Certificate:
    """Xen's loader refuses ORIGINAL itself here (an undefined ``.LC1`` that create-diff-object
    left behind is an "Unknown symbol", say): REWRITTEN must be refused here too, and be
    byte for byte the rewrite of ORIGINAL, since no loaded image can be compared."""
    try:
        load(r, table, base, prepare=False)
    except Refused as exc:
        after = exc.xen_message
    else:
        raise _fail(r.name, f"Xen would load it where it refuses the original ({refused.xen_message})")
    before = refused.xen_message
    how = f"both when loaded ({before})"
    if after != before:
        how = f"the original when loaded ({before}), this one ({after})"
    return _refused_both(o, r, table, base, policy, after, how)


def _refused_both(
    o: Payload, r: Payload, table: XenSymbols, base: int, policy: Policy, refusal: str, how: str
) -> Certificate:
    """The certificate when Xen refuses both: REWRITTEN must then be byte for byte the rewrite of ORIGINAL."""
    _same_file_but_for_the_edits(o, r, policy, refusal)
    cert = Certificate(o.name, r.name, o.arch.name, table.source, base, refused_both=True)
    cert.prepare = how
    return cert


def _weakness(cert: Certificate) -> tuple[bool, int]:
    """How little a certificate proves: nothing when both are refused, then by blind sites."""
    return cert.refused_both, len(cert.blind)


# Load addresses tried after the first (page steps: they move E's 16-bit
# halves and pages, never its low 12 bits).
_BASE_SHIFTS: Final = (0, 0x3000, 0x17000, 0x2B000)


def _certify_at(
    o: Payload, r: Payload, table: XenSymbols, base: int, funcs: FuncsTable, decisions: Decisions, policy: Policy
) -> Certificate:
    aligned, notes = _notes_aligned(o, policy)
    try:
        lo = load(aligned, table, base, prepare=False)
    except Refused as exc:
        return _refused_when_loaded(o, r, table, base, policy, exc)
    try:
        lr = load(r, table, base, prepare=False)
    except Refused as exc:
        # A branch to the original that cannot reach it from here, say. The
        # original's own patch branch then cannot reach it either when it is
        # prepare_payload() that refuses the original (livepatch_verify_distance):
        # the upload fails both ways, and no placement was found where it does not.
        before = _prepare_refusal(lo)
        if before is None:
            raise _fail(r.name, f"Xen would refuse it where it loads the original: {exc}") from None
        how = f"the original by prepare_payload() ({before}), this one when relocated ({exc.xen_message})"
        return _refused_both(o, r, table, base, policy, exc.xen_message, how)
    _same_layout(lo, lr)
    cert = Certificate(o.name, r.name, o.arch.name, table.source, base, aligned_notes=notes)
    applied = {(a.reloc_section, a.index): a for a in lo.relocations}
    covered: dict[int, list[tuple[int, int]]] = {}
    for d in decisions.retargets:
        assert d.replacement is not None
        rep = funcs.replacements[d.replacement]
        site = applied[(d.reloc_section, d.index)]
        entry = lo.sections[rep.section].address + rep.offset
        site_proof = _prove_site(lo, lr, site, entry, _original_address(rep, table, r.name), rep.alias_name)
        cert.sites.append(site_proof)
        covered.setdefault(site.section, []).append((site.offset, site.offset + site.width))
    _same_elsewhere(lo, lr, covered)
    per_section = Counter(a.section for a in lo.relocations)
    moved = Counter(d.section for d in decisions.retargets)
    for index, placed in sorted(lo.sections.items()):
        cert.sections.append(SectionCount(placed.name, placed.address, placed.size, per_section[index], moved[index]))
    cert.prepare = _same_preparation(lo, lr)
    return cert


def _notes_aligned(o: Payload, policy: Policy) -> tuple[Payload, list[str]]:
    """ORIGINAL as ``rewrite --align-notes`` lays it out (the notes' sh_addralign raised), and those notes.

    Only section headers differ, and section indices do not: the decisions
    made on ORIGINAL hold for it, and every loaded byte is still compared.
    """
    if not policy.align_notes:
        return o, []
    from lp_rewrite.elf.editor import ElfEditor
    from lp_rewrite.notes import alignment_edits

    edits = alignment_edits(o.elf)
    if not edits:
        return o, []
    editor = ElfEditor(o.elf)  # the same header edit apply() makes
    for index, value in edits.items():
        editor.set_section_field(index, "sh_addralign", value)
    return read_payload(editor.to_bytes(), name=o.name), [o.elf.sections.name(i) for i in sorted(edits)]


def _original_address(rep: Replacement, table: XenSymbols, rewritten: str) -> int:
    """X: the address Xen patches for this replacement.

    A literal ``old_addr`` (prelinked payloads) is used as it is; otherwise
    Xen resolves the name (the ``old_addr`` symbol's, or the ``name`` string).
    """
    if rep.old_literal:
        return rep.old_literal
    found = table.lookup(rep.alias_name)
    if found is None or not found.address:
        raise _fail(rewritten, f"the original {rep.alias_name!r} is not in the symbol table ({table.source})")
    return found.address


def _prove_site(lo: LoadedPayload, lr: LoadedPayload, site: AppliedRelocation, entry: int, x: int, alias: str) -> Site:
    arch = lo.payload.arch
    placed = lo.sections[site.section]
    where = f"{placed.name}+{site.offset:#x} ({arch.type_name(site.rtype)})"
    expected = bytearray(site.before)
    mask = (1 << (8 * lo.payload.elf.layout.ptr_size)) - 1
    # The ORIGINAL's place relocated again with E moved to X (S' = X + (S - E)).
    try:
        arch.relocate(site.rtype, expected, 0, (x + site.s - entry) & mask, site.a, site.p)
    except LoadError as exc:
        msg = str(exc).format(section=placed.name, index="?", rela="?")
        raise _fail(lr.name, f"{where}: the original {alias} at {x:#x} cannot be reached from here: {msg}") from None
    got = lr.section_bytes(site.section)[site.offset : site.offset + site.width]
    if got != bytes(expected):
        if got == site.after:
            why = f"still designates the payload's copy at {entry:#x}, not the original {alias} at {x:#x}"
        else:
            why = f"expected {bytes(expected).hex()} ({alias} at {x:#x}), got {got.hex()}"
        raise _fail(lr.name, f"{where}: {why}")
    return Site(placed.name, site.offset, site.p, arch.type_name(site.rtype), alias, entry, x, site.after, got)


def _same_layout(lo: LoadedPayload, lr: LoadedPayload) -> None:
    a = {i: (p.name, p.region, p.address, p.size) for i, p in lo.sections.items()}
    b = {i: (p.name, p.region, p.address, p.size) for i, p in lr.sections.items()}
    if a != b:
        first = next(i for i in sorted(set(a) | set(b)) if a.get(i) != b.get(i))
        raise _fail(lr.name, f"loaded section [{first}] differs: {a.get(first)} in the original, {b.get(first)} here")


def _same_elsewhere(lo: LoadedPayload, lr: LoadedPayload, covered: dict[int, list[tuple[int, int]]]) -> None:
    for index, placed in sorted(lo.sections.items()):
        x = bytearray(lo.section_bytes(index))
        y = bytearray(lr.section_bytes(index))
        for start, end in covered.get(index, ()):
            x[start:end] = y[start:end] = bytes(end - start)
        if x == y:
            continue
        off = next(i for i in range(len(x)) if x[i] != y[i])
        raise _fail(lr.name, f"{placed.name}+{off:#x}: {_describe(lo, index, off)} differs from the original's")


def _describe(lo: LoadedPayload, section: int, offset: int) -> str:
    """Which relocation of the original wrote this byte (for the failure message)."""
    arch = lo.payload.arch
    for a in lo.relocations:
        if a.section == section and a.offset <= offset < a.offset + a.width:
            sym = symbol_label(lo.payload, a.symbol)
            return (
                f"the site of {arch.type_name(a.rtype)} against {sym}{a.a:+#x} (not one that must be retargeted) "
                f"at {lo.sections[section].name}+{a.offset:#x}"
            )
    return "a byte no relocation writes"


def _prepare_refusal(loaded: LoadedPayload) -> str | None:
    """Xen's message when prepare_payload() refuses this loaded payload, else None."""
    try:
        prepare_payload(loaded)
    except Refused as exc:
        return exc.xen_message
    return None


def _same_preparation(lo: LoadedPayload, lr: LoadedPayload) -> str:
    mo, mr = _prepare_refusal(lo), _prepare_refusal(lr)
    if mo is None and mr is not None:
        raise _fail(lr.name, f"prepare_payload() refuses it where it accepts the original: {mr}")
    if mo is not None:
        if mr != mo:
            raise _fail(lr.name, f"prepare_payload() refuses the original ({mo}) but not the same way here ({mr})")
        return f"both refused the same way ({mo})"
    if lo.functions != lr.functions or lo.load_hooks != lr.load_hooks or lo.unload_hooks != lr.unload_hooks:
        raise _fail(lr.name, "prepare_payload() reads different functions or hooks than from the original")
    return f"both accepted ({len(lo.functions)} function(s), {len(lo.load_hooks) + len(lo.unload_hooks)} hook(s))"

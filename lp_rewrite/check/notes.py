"""Rules LP016 and LP017: the notes Xen reads (alignment) and the signature note.

LP016 (misaligned-note) asks :func:`lp_rewrite.notes.misaligned_notes`
where Xen's loader puts each note it parses (the placement of
``move_payload()``, from :mod:`lp_rewrite.loader.placement`) and reports one
that lands on an address that is not 4-aligned, on the targets whose
hypervisor checks alignment (:attr:`lp_rewrite.arch.Arch.alignment_checking`).

LP017 (signed-before-rewrite) is a verdict on the whole report: a signed
payload that still needs a rewrite (an active LP001, or an LP016 that
``rewrite --align-notes`` fixes) cannot get it without invalidating its
signature. A signed payload with nothing to rewrite is fine, and reported
as nothing.
"""

from __future__ import annotations

from lp_rewrite.check.context import Context
from lp_rewrite.check.findings import Finding, Place, make
from lp_rewrite.notes import NOTE_ALIGN, signature
from lp_rewrite.notes import misaligned_notes as placed_misaligned
from lp_rewrite.read import Payload

# Rules whose fix is a rewrite (lp-rewrite rewrite, with --align-notes for LP016).
NEEDS_REWRITE = ("LP001", "LP016")


def misaligned_notes(ctx: Context) -> list[Finding]:
    how = ctx.arch.alignment_checking
    if how is None:
        return []  # x86-64 reads a misaligned note as is
    elf = ctx.elf
    out = []
    for note in placed_misaligned(elf, ctx.payload.name):
        sec = note.section
        header = elf.layout.shdr.size
        out.append(
            make(
                "LP016",
                f"section [{sec.index}] {sec.name}: Xen reads this note's 32-bit header words in "
                f"xen_build_id_check() from an address that is not {NOTE_ALIGN}-aligned: {note.describe()}; {how}, "
                "so the hypervisor takes a Data Abort at upload. Fix: lp-rewrite rewrite --align-notes "
                f"(sh_addralign {NOTE_ALIGN}, contents unchanged), or objcopy --set-section-alignment "
                f"{sec.name}={NOTE_ALIGN}, or build the note with .balign {NOTE_ALIGN}",
                Place(sec.name, None, elf.e_shoff + sec.index * header, header),
                symbol=sec.name,
                symbol_kind=None,
            )
        )
    return out


def signed_before_rewrite(payload: Payload, findings: list[Finding]) -> list[Finding]:
    """LP017 when the payload is signed and an active finding needs a rewrite."""
    sig = signature(payload.elf)
    if sig is None:
        return []
    pending = [f for f in findings if f.suppressed is None and f.rule.id in NEEDS_REWRITE]
    if not pending:
        return []
    rules = ", ".join(sorted({f.rule.id for f in pending}))
    sec = sig.section
    return [
        make(
            "LP017",
            f"the payload is signed ({sig.describe()}) and still needs a rewrite ({len(pending)} {rules} "
            "finding(s)): the signature covers the whole file, so any rewrite invalidates it and Xen's "
            "signature check refuses the result. Rewrite the unsigned payload (lp-rewrite rewrite), then sign it",
            Place(sec.name, None, sec.sh_offset if sec.has_file_data else None, sec.sh_size or None),
            symbol=sec.name,
            symbol_kind=None,
        )
    ]

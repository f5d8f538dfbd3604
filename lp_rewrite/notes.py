"""The ELF notes Xen reads from a payload: where its loader puts them, and the signature note.

**Alignment.** Xen parses three sections as GNU build-id notes with
``xen_build_id_check()``, which reads the note header's 32-bit words
(``namesz``, ``descsz``, ``type``): ``.livepatch.xen_depends``,
``.livepatch.depends`` and ``.note.gnu.build-id``, each found by name (the
first section of that name, ``livepatch_elf_sec_by_name()``), whatever its
type (``objcopy --add-section`` makes the two depends sections SHT_PROGBITS).
It reads each where it is:

* the loaded copy, for an SHF_ALLOC section: ``move_payload()`` puts it at
  ``ROUNDUP(offset, sh_addralign)`` of its region (RO for a note), and the
  region starts on a page (:func:`lp_rewrite.loader.placement.section_offsets`),
  so the address is 4-aligned at every load address exactly when the region
  offset is. An ``sh_addralign`` of 1 (what ``objcopy --add-section`` gives)
  places the note right after whatever precedes it;
* the uploaded file itself (a page-aligned vmalloc copy), at ``sh_offset``:
  ``.livepatch.xen_depends`` in Xen 4.20 and later, where
  ``check_xen_buildid()`` runs before ``move_payload()`` (xen.git
  ``fa49f4be41``), and any of the three that is not SHF_ALLOC (not moved).

Xen looks no further than ``sh_size <= sizeof(Elf_Note)`` (12) before the
first read, so a smaller section is never read (and is refused).

Where the hypervisor runs with alignment checking (32-bit Arm: ``HSCTLR.A``),
a word read from an address that is not 4-aligned is a Data Abort, in the
hypervisor, at upload. AArch64 Xen reads it without a fault (seen on Xen
4.17 under QEMU: the e2e uploads such a payload), and x86-64 checks
alignment only at CPL 3 (``EFLAGS.AC``), so there it is read as is.
:func:`alignment_edits` is what ``rewrite --align-notes`` does about it:
``sh_addralign`` 4 (what GNU ld gives a build-id note), contents unchanged;
the writer then also aligns the section's file offset.

**Signature.** The livepatch signature design posted to xen-devel in 2025
(Ross Lagerwall et al., "livepatch: Verify livepatch signatures", and
XenServer's ``livepatch-sign``) puts the signature in an SHT_NOTE section
``.note.Xen.signature``: note name ``Xen``, type 0, a descriptor of
``{u16 version; u8 sig_algo; u8 hash_algo; u32 sig_len; u8 sig[]}``,
computed over the whole file with the signature zeroed. Any change to the
file invalidates it. :func:`signature` finds it by that section name, or as
an SHT_NOTE section whose first note is named ``Xen`` with type 0 (a renamed
section: ``livepatch-sign`` takes the product name as a parameter).
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from lp_rewrite.elf import consts as C
from lp_rewrite.elf.file import ElfFile, Section
from lp_rewrite.livepatch_abi import BUILD_ID_SECTION, DEPENDS_SECTION, XEN_DEPENDS_SECTION

# The alignment xen_build_id_check() needs: Elf_Note is three 32-bit words.
NOTE_ALIGN: Final = 4
NOTE_HEADER_SIZE: Final = 12
# The notes Xen parses, in the order it reads them at upload.
BUILD_ID_NOTES: Final = (XEN_DEPENDS_SECTION, BUILD_ID_SECTION, DEPENDS_SECTION)
# Read from the uploaded file, before placement, by Xen 4.20 and later.
READ_IN_PLACE_FROM_4_20: Final = XEN_DEPENDS_SECTION

SIGNATURE_SECTION: Final = ".note.Xen.signature"
SIGNATURE_NOTE_NAME: Final = b"Xen"
SIGNATURE_NOTE_TYPE: Final = 0


def read_notes(elf: ElfFile) -> list[Section]:
    """The sections Xen parses as build-id notes (the first of each name, large enough to be read)."""
    out = []
    for name in BUILD_ID_NOTES:
        sec = elf.section_by_name(name)
        if sec is not None and sec.has_file_data and sec.sh_size > NOTE_HEADER_SIZE:
            out.append(sec)
    return out


# NamedTuples, not frozen dataclasses: a rewrite imports this module, and creating
# a dataclass costs about a millisecond of its start-up.
class MisalignedNote(NamedTuple):
    """A note Xen reads from an address that is not 4-aligned."""

    section: Section
    region: str | None  # where move_payload() copies it (None: not SHF_ALLOC, not copied)
    region_offset: int | None  # its offset in that region: the address modulo the page
    loaded: bool  # misaligned in the loaded copy (every Xen version)
    in_file: bool  # misaligned in the uploaded file, where Xen reads it in place

    def describe(self) -> str:
        """Where Xen reads it from, and why that address is not 4-aligned."""
        sec = self.section
        parts = []
        if self.loaded:
            assert self.region is not None and self.region_offset is not None
            parts.append(
                f"move_payload() places it at offset {self.region_offset:#x} of the {self.region.upper()} region "
                f"(sh_addralign {sec.sh_addralign}), an address {_residue(self.region_offset)} at every "
                "page-aligned load address"
            )
        if self.in_file:
            when = (
                "Xen 4.20 and later parse it in the uploaded file, before placement (check_xen_buildid())"
                if sec.name == READ_IN_PLACE_FROM_4_20 and sec.alloc
                else "Xen parses it in the uploaded file (it is not SHF_ALLOC, so it is not copied)"
            )
            parts.append(f"{when}, at file offset {sec.sh_offset:#x}, {_residue(sec.sh_offset)}")
        return "; ".join(parts)


def _residue(n: int) -> str:
    return f"{n % NOTE_ALIGN} byte(s) past a 4-byte boundary"


def misaligned_notes(elf: ElfFile, name: str) -> list[MisalignedNote]:
    """The notes Xen reads at an address that is not 4-aligned.

    Empty when Xen refuses the placement itself (a section both writable and
    executable: ``move_payload()`` stops before any note is read).
    """
    # The loader model is imported here: a rewrite asks only for signature() and alignment_edits().
    from lp_rewrite.loader.placement import section_offsets
    from lp_rewrite.loader.refusal import Refused

    try:
        offsets, _sizes = section_offsets(elf, name)
    except Refused:
        return []
    out = []
    for sec in read_notes(elf):
        placed = offsets.get(sec.index)
        region, off = placed if placed is not None else (None, None)
        loaded = off is not None and off % NOTE_ALIGN != 0
        in_place = sec.name == READ_IN_PLACE_FROM_4_20 or not sec.alloc
        in_file = in_place and sec.sh_offset % NOTE_ALIGN != 0
        if loaded or in_file:
            out.append(MisalignedNote(sec, region, off, loaded, in_file))
    return out


def alignment_edits(elf: ElfFile) -> dict[int, int]:
    """Section index -> the sh_addralign ``rewrite --align-notes`` gives it.

    Every note Xen reads whose alignment is below 4 gets 4, whether or not
    it happens to land aligned in this layout: the next tool that adds a
    section in front of it must not make it land elsewhere. (An alignment of
    0 places a section at its region's start, aligned, or over an earlier
    section, which rewrite refuses before this.)
    """
    return {sec.index: NOTE_ALIGN for sec in read_notes(elf) if sec.sh_addralign < NOTE_ALIGN}


class SignatureNote(NamedTuple):
    """A livepatch signature note, and how it was recognised."""

    section: Section
    how: str  # "section name" or "note name Xen, type 0"

    def describe(self) -> str:
        return f"section [{self.section.index}] {self.section.name}" + (
            "" if self.section.name == SIGNATURE_SECTION else f" (a note named Xen of type {SIGNATURE_NOTE_TYPE})"
        )


def _first_note(data: bytes) -> tuple[bytes, int] | None:
    """(name, type) of the first note in a note section's bytes, when it is well formed."""
    if len(data) < NOTE_HEADER_SIZE:
        return None
    namesz, _descsz, ntype = struct.unpack_from("<III", data, 0)
    if namesz == 0 or NOTE_HEADER_SIZE + namesz > len(data):
        return None
    name = data[NOTE_HEADER_SIZE : NOTE_HEADER_SIZE + namesz].rstrip(b"\0")
    return name, ntype


def signature(elf: ElfFile) -> SignatureNote | None:
    """The payload's signature note, or None when it is not signed."""
    secs = elf.sections
    named = secs.find(SIGNATURE_SECTION)
    if named is not None:
        return SignatureNote(secs[named], "section name")
    for i, sh_type in enumerate(secs.type):  # columns: a stress object has 100k sections
        if i and sh_type == C.SHT_NOTE and secs.has_file_data(i):
            first = _first_note(bytes(elf.section_data(i)[: NOTE_HEADER_SIZE + 8]))
            if first == (SIGNATURE_NOTE_NAME, SIGNATURE_NOTE_TYPE):
                return SignatureNote(secs[i], "note name Xen, type 0")
    return None

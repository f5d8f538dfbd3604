"""What ``lp-rewrite check`` reports: rules (stable ids and help text) and findings.

Every rule is stated here once, with the id that SARIF consumers, allow
lists and CI logs key on. Ids never change meaning and are never reused;
a retired rule keeps its number.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from lp_rewrite.arch import arm
from lp_rewrite.elf import consts as C
from lp_rewrite.livepatch_abi import XEN_PAYLOAD_VERSION, func_layout

# The entry sizes the LP010 help names, from the one statement of the ABI.
_V2_64, _V2_32 = (func_layout(XEN_PAYLOAD_VERSION, p).entry_size for p in (8, 4))


class Severity(enum.Enum):
    """SARIF's result levels, in increasing order of gravity."""

    NOTE = "note"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def at_least(self, other: Severity) -> bool:
        return self.rank >= other.rank


_RANK = {Severity.NOTE: 1, Severity.WARNING: 2, Severity.ERROR: 3}


@dataclass(frozen=True)
class Rule:
    id: str  # LPnnn: stable
    name: str  # kebab-case, also stable; accepted wherever an id is
    severity: Severity  # default level; a finding may differ (see its message)
    summary: str  # one line
    help: str  # what happens on the hypervisor, and how to fix it
    needs_xen_syms: bool = False


RULES: tuple[Rule, ...] = (
    Rule(
        "LP001",
        "not-rewritten",
        Severity.ERROR,
        "A relocation still binds to the payload's copy of a replaced function.",
        "The relocation designates the entry of a function the payload replaces, outside the sections "
        "that must describe the new code. Xen binds it to the payload's copy: a pointer stored this way "
        "keeps pointing into the payload after revert, and into freed memory after unload, where the "
        "next call faults. Run `lp-rewrite rewrite` on the payload (with the same --keep-section / "
        "--no-default-keep options as this check), or pass the options the payload was rewritten with.",
    ),
    Rule(
        "LP002",
        "escaping-new-function",
        Severity.ERROR,
        "The address of a payload-only function is stored or handed out.",
        "The function exists only in the payload (it replaces nothing), and its address is stored in data "
        "or materialised in code (lea, adrp+add, adr, movw+movt), e.g. by a hook that registers it. No "
        "rewrite can help: there is no original to point at. Once the payload is unloaded the hypervisor "
        "keeps a pointer into freed memory and faults when it calls it. Unregister it in an unload or "
        "revert hook (or do not hand it out), then record the reviewed exception with --allow SYMBOL, "
        "--allow-file FILE or the payload's .lp_rewrite.allow section.",
    ),
    Rule(
        "LP003",
        "unsupported-relocation",
        Severity.ERROR,
        "A relocation type Xen's loader does not apply on this architecture.",
        "Xen's livepatch loader applies a fixed set of relocation types per architecture and refuses the "
        "whole payload at load time ('Unhandled relocation'). Build the payload the way Xen builds its "
        "own code: -fpic with hidden visibility on x86-64 and AArch64 (no GOT), -marm (no Thumb) on "
        "32-bit Arm, and no -mcmodel=kernel.",
    ),
    Rule(
        "LP004",
        "unresolved-symbol",
        Severity.ERROR,
        "An undefined symbol (or an original) that the hypervisor's symbol table does not have.",
        "Xen resolves every undefined symbol, and every original named only by its .livepatch.funcs "
        "name string, by exact name in its own symbol table at load time: 'Unknown symbol' or 'Could "
        "not resolve old address', and the load fails (unless a payload loaded earlier introduces the "
        "name). Statics are named path/file.c#name with the path relative to xen/. Check the name "
        "against this xen-syms, or build the payload for the hypervisor it will be loaded on.",
        needs_xen_syms=True,
    ),
    Rule(
        "LP005",
        "ambiguous-symbol",
        Severity.ERROR,
        "A name the payload resolves names more than one hypervisor symbol.",
        "Two symbols share the name in the hypervisor's table (typically a static in a file compiled "
        "twice under one FILE name). Xen's lookup returns one of them, possibly not the one meant: the "
        "payload may patch, or point at, the wrong function. Give the duplicated file a unique name "
        "(EMIT_FILE / CONFIG_ENFORCE_UNIQUE_SYMBOLS), or patch by a literal old_addr.",
        needs_xen_syms=True,
    ),
    Rule(
        "LP006",
        "original-too-short",
        Severity.ERROR,
        "The original function is shorter than the jump that patches it.",
        "Xen overwrites the original's entry with a jump to the new code: 5 bytes on x86-64 (after the "
        "ENDBR64, so 9 when the function starts with one), one 4-byte instruction on Arm. Xen refuses "
        "an entry whose old_size is smaller; when old_size claims more than the function really has, "
        "the jump overwrites the next function. Do not patch this function directly: patch its callers, "
        "or make it longer in the hypervisor.",
    ),
    Rule(
        "LP007",
        "ibt-no-endbr",
        Severity.ERROR,
        "A hypervisor function whose address the payload takes is not a legal indirect-branch target.",
        "With CET-IBT (CONFIG_XEN_IBT), an indirect call must land on ENDBR64. The hypervisor is built "
        "with -mmanual-endbr, so only cf_check functions have one, and seal_endbr64() clobbers it at "
        "boot for every function referenced from .init.{ro,}data.cf_clobber. A pointer to such a "
        "function that the payload stores (including a rewritten reference to a replaced original) "
        "faults with #CP when called indirectly. Mark the original cf_check in the hypervisor (and keep "
        "it out of cf_clobber tables), or store a pointer to a cf_check wrapper instead.",
        needs_xen_syms=True,
    ),
    Rule(
        "LP008",
        "hidden-self-reference",
        Severity.ERROR,
        "Code computes a replaced function's entry address with no relocation.",
        "The assembler resolved a PC-relative address computation (lea, adr, add/sub pc) to a function "
        "in the same section, so the object keeps no relocation for it and no relocation-level rewrite "
        "can move it to the original: the address stays that of the payload's copy and dangles after "
        "unload. Build with -ffunction-sections so that each function has its own section, or take the "
        "address in another function's section.",
    ),
    Rule(
        "LP009",
        "missing-section",
        Severity.ERROR,
        "A section Xen's loader requires is missing or empty.",
        "Xen refuses a payload without .livepatch.xen_depends (the hypervisor's build-id), "
        ".livepatch.depends (the build-id it applies on top of) or .note.gnu.build-id (its own, "
        "unique), and one that has neither .livepatch.funcs nor a hook section ('Nothing to patch'). "
        "Link with --build-id and add the dependency notes the way livepatch-build does.",
    ),
    Rule(
        "LP010",
        "bad-funcs-table",
        Severity.ERROR,
        ".livepatch.funcs cannot be loaded as it is.",
        f"Xen reads .livepatch.funcs as an array of struct livepatch_func ({_V2_64} bytes on 64-bit, {_V2_32} on "
        f"32-bit, version {XEN_PAYLOAD_VERSION} since Xen 4.14) and refuses a size that is not a multiple of the "
        "entry size "
        "or an entry with another version ('Wrong version'). Rebuild the payload with the livepatch_func "
        "layout of the hypervisor it targets. Version 1 (Xen 4.7-4.13) is an error too; a team that "
        "targets those releases allows it with --allow LP010:version-1 (that finding's symbol: a wrong "
        "size or mixed versions still fail).",
    ),
    Rule(
        "LP011",
        "payload-limits",
        Severity.ERROR,
        "The payload is larger than Xen's loader accepts.",
        "Xen refuses a payload file over 2 MiB (LIVEPATCH_MAX_SIZE) and one with 1024 or more sections. "
        "Split the payload, or strip debug sections and merge sections before loading it.",
    ),
    Rule(
        "LP012",
        "unreadable-payload",
        Severity.ERROR,
        "The file could not be read as a livepatch payload.",
        "Xen would refuse it before looking further (or the checker could not analyse a part of it, "
        "which lp-rewrite rewrite refuses too). The message names the field; fix the build that produced "
        "it. The check is then incomplete, so the command exits 2 (bad input), not 1, after writing the "
        "whole report: in a batch the other files are still checked.",
    ),
    Rule(
        "LP013",
        "address-mismatch",
        Severity.ERROR,
        "An address the payload holds is not where the hypervisor has the function it names.",
        "A prelinked payload (livepatch-build --prelink, or lp-rewrite rewrite --absolute) carries "
        "hypervisor addresses itself: literal old_addr values, which Xen patches as they are, and SHN_ABS "
        "symbols, whose values Xen uses without a lookup. Each must be the start of the function its name "
        "names in this xen-syms (for a name that stands for several functions, one of them). Otherwise "
        "the payload was built against another build of the hypervisor: Xen overwrites whatever code is "
        "at that address, and pointers and calls through the symbol go there too. Rebuild the payload "
        "against the xen-syms of the hypervisor it will be loaded on.",
        needs_xen_syms=True,
    ),
    Rule(
        "LP014",
        "misencoded-branch",
        Severity.ERROR,
        "Xen's loader encodes this branch to land 4 bytes before its target (32-bit Arm).",
        f"Xen's arm32 perform_rel() encodes {arm.BRANCH_NAMES} with val >>= 2; val &= 0x00FFFFFE, "
        "which clears bit 0 of the 24-bit word offset: a B or BL whose offset is an odd number of words "
        "lands 4 bytes short and executes the instruction before its target (often the previous "
        "function's last one). Xen loads a payload at a page-aligned address, so the parity is known at "
        "build time: always for targets in the payload, and with --xen-syms for hypervisor functions. Build "
        "the payload with -mlong-calls (calls through a register need no branch relocation), or fix Xen "
        "(the mask should be 0x00FFFFFF). No other architecture is affected.",
    ),
    Rule(
        "LP015",
        "misapplied-relocation",
        Severity.ERROR,
        "A relocation Xen's loader applies, but to another value than its type means.",
        "Xen accepts the relocation and loads the payload, but writes a wrong value at the place: its "
        f"32-bit Arm loader ignores the addend of {arm.MOVE_NAMES} (it loads S instead of "
        "S+A, e.g. the start of an array instead of an element), and ORs a RELA branch or MOVW/MOVT result "
        "into stale immediate bits when r_addend is 0. The code then uses a wrong address. lp-rewrite "
        "rewrite refuses such a payload too. Build with -mword-relocations (addresses come from literal "
        f"pools, {arm.POINTER_NAME}, whose addend Xen applies), or take the address of the symbol itself.",
    ),
    Rule(
        "LP016",
        "misaligned-note",
        Severity.ERROR,
        "Xen reads a build-id note from an address that is not 4-aligned (32-bit Arm).",
        "Xen parses .livepatch.xen_depends, .livepatch.depends and .note.gnu.build-id with "
        "xen_build_id_check(), which reads the note header's 32-bit words. move_payload() copies each "
        "SHF_ALLOC section to ROUNDUP(offset, sh_addralign) of its region, and regions start on a page, so "
        "a note of sh_addralign 1 (what objcopy --add-section gives, as livepatch-build and Xen's own test "
        "payloads add the depends notes) lands wherever the previous section ended; Xen 4.20 and later "
        "also parse .livepatch.xen_depends in the uploaded file, at its file offset. The check computes "
        "that placement. On 32-bit Arm the hypervisor runs with alignment checking (HSCTLR.A) and takes a "
        "Data Abort at upload (seen on the real hypervisor with xen_hello_world). AArch64 Xen reads the "
        "same unaligned note without a fault (seen on the real hypervisor, Xen 4.17), and x86-64 checks "
        "alignment only in user mode: no finding there. Fix: lp-rewrite rewrite --align-notes "
        "(sh_addralign 4, contents unchanged), objcopy --set-section-alignment NAME=4, or .balign 4 in "
        "the note's source.",
    ),
    Rule(
        "LP017",
        "signed-before-rewrite",
        Severity.ERROR,
        "The payload is signed but still needs a rewrite.",
        "A livepatch signature (.note.Xen.signature: note name Xen, type 0, as posted to xen-devel in 2025 "
        "and made by XenServer's livepatch-sign) is computed over the whole file. This payload has one and "
        "still has findings whose fix is a rewrite (LP001, or LP016 with --align-notes): any rewrite changes "
        "the signed bytes, so the rewritten payload fails the signature check, and lp-rewrite rewrite "
        "refuses it. Rewrite the unsigned payload, then sign the result. A signed payload with nothing to "
        "rewrite is fine and gets no finding.",
    ),
    Rule(
        "LP018",
        "init-symbol",
        Severity.ERROR,
        "The payload uses hypervisor code or data that Xen frees after boot.",
        "Xen frees its init sections (.init.text, .init.data: __init functions, __initdata, __initconst) at "
        "the end of boot (init_done() on x86, free_init_memory() on Arm): they are unmapped and the pages "
        "reused. Its symbol table keeps their names, so a payload that calls such a function, reads or "
        "writes such data, or takes its address loads without complaint, and faults (or hits whatever "
        "reuses the memory) when that code runs; a .livepatch.funcs entry whose original is init code "
        "patches memory that no longer holds it. Seen on Xen 4.20, which made register_keyhandler() "
        "__init: a payload built against 4.17 that registers a debug key from its load hook takes a "
        "FATAL PAGE FAULT in register_keyhandler at apply. Reported once per symbol, at its first "
        "relocation in a section Xen loads, and once per .livepatch.funcs entry. Use an interface the "
        "running hypervisor keeps after boot (build and test the payload against the xen-syms of the "
        "hypervisor it will be loaded on), or drop the entry.",
        needs_xen_syms=True,
    ),
)

RULE_BY_ID: dict[str, Rule] = {r.id: r for r in RULES}
# The rule for what could not be read or analysed: it turns a report incomplete (exit 2).
UNREADABLE: Final = "LP012"
RULE_BY_NAME: dict[str, Rule] = {r.name: r for r in RULES}


def rule(key: str) -> Rule:
    """A rule by id (``LP002``) or name (``escaping-new-function``); KeyError if neither."""
    found = RULE_BY_ID.get(key.upper()) or RULE_BY_NAME.get(key.lower())
    if found is None:
        raise KeyError(key)
    return found


@dataclass
class Finding:
    """One problem at one place, with what happens and how to fix it."""

    rule: Rule
    message: str
    severity: Severity
    section: str | None = None
    offset: int | None = None  # in the section
    file_offset: int | None = None  # in the file: sh_offset + offset
    length: int | None = None  # bytes at file_offset the finding is about
    symbol: str | None = None
    # What the symbol names, as a SARIF logicalLocation kind ("function",
    # "variable"); None when the finding does not know (a relocation's symbol,
    # an undefined name, an allow key).
    symbol_kind: str | None = "function"
    suppressed: str | None = None  # which allow entry suppressed it, and why

    @property
    def where(self) -> str:
        if self.section is None:
            return "-"
        if self.offset is None:
            return self.section
        return f"{self.section}+{self.offset:#x}"

    def record(self) -> dict[str, Any]:
        return {
            "rule": self.rule.id,
            "name": self.rule.name,
            "severity": self.severity.value,
            "message": self.message,
            "section": self.section,
            "offset": self.offset,
            "file_offset": self.file_offset,
            "length": self.length,
            "symbol": self.symbol,
            "suppressed": self.suppressed,
        }


@dataclass(frozen=True)
class Place:
    """Where a finding is: section and offset, and the bytes in the file."""

    section: str | None = None
    offset: int | None = None
    file_offset: int | None = None
    length: int | None = None


def make(
    rule_id: str,
    message: str,
    place: Place = Place(),
    *,
    symbol: str | None = None,
    symbol_kind: str | None = "function",
    severity: Severity | None = None,
) -> Finding:
    r = RULE_BY_ID[rule_id]
    return Finding(
        r,
        message,
        severity or r.severity,
        section=place.section,
        offset=place.offset,
        file_offset=place.file_offset,
        length=place.length,
        symbol=symbol,
        symbol_kind=symbol_kind,
    )


def symbol_kind(stt: int) -> str | None:
    """The SARIF logicalLocation kind of an ELF symbol type (STT_*), where there is one."""
    return {C.STT_FUNC: "function", C.STT_OBJECT: "variable", C.STT_TLS: "variable"}.get(stt)


@dataclass
class PayloadReport:
    """Everything found in one payload (or why it could not be read)."""

    path: str
    arch: str | None = None
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None  # the one-line reason it could not be read
    size: int | None = None

    def active(self) -> list[Finding]:
        return [f for f in self.findings if f.suppressed is None]

    def failing(self, fail_on: Severity) -> list[Finding]:
        return [f for f in self.active() if f.severity.at_least(fail_on)]


def counts(findings: Iterable[Finding]) -> dict[str, int]:
    """Active findings per severity, plus the suppressed ones."""
    out = {s.value: 0 for s in reversed(Severity)}
    out["allowed"] = 0
    for f in findings:
        if f.suppressed is not None:
            out["allowed"] += 1
        else:
            out[f.severity.value] += 1
    return out

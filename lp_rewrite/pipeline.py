"""The whole rewrite: read -> identify -> decide -> apply -> verify -> write."""

from __future__ import annotations

import gc
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lp_rewrite.apply import Plan, apply, plan
from lp_rewrite.decide import Decisions, decide
from lp_rewrite.elf import consts as C
from lp_rewrite.errors import InputError, UsageError
from lp_rewrite.identify import FuncsTable, identify
from lp_rewrite.policy import Policy
from lp_rewrite.read import Payload, read_payload, unsupported_relocations
from lp_rewrite.verify import check_rewrite
from lp_rewrite.write import write_atomic


@dataclass
class Analysis:
    """A payload with its replacements and the decision for each relocation."""

    payload: Payload
    funcs: FuncsTable
    decisions: Decisions


@dataclass
class RewriteResult(Analysis):
    plan: Plan
    output: bytes
    written: Path | None

    @property
    def changed(self) -> bool:
        return self.plan.changes

    def retargets_per_section(self) -> Counter[str]:
        names = self.payload.elf.sections
        return Counter(names[d.section].name for d in self.plan.retargets)


def analyse(
    source: str | os.PathLike[str] | bytes, policy: Policy | None = None, *, everything: bool = False
) -> Analysis:
    """Read a payload and decide every relocation (nothing is written)."""
    policy = policy or Policy()
    payload = read_payload(source, xen_limits=policy.xen_limits)
    try:
        funcs = identify(payload)
    except InputError as exc:
        raise InputError(f"{payload.name}: {exc}") from None
    return Analysis(payload, funcs, decide(payload, funcs, policy, everything=everything))


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic collector for one rewrite.

    A stress object makes millions of short-lived objects and no cycles
    worth collecting; the collector's passes over the big heap cost ~10%.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def rewrite(
    source: str | os.PathLike[str] | bytes,
    output: str | os.PathLike[str] | None = None,
    *,
    in_place: bool = False,
    policy: Policy | None = None,
    backup_suffix: str | None = None,
    before_rename: Callable[[Payload, Path], None] | None = None,
) -> RewriteResult:
    """Rewrite a payload; return the decisions and what was written.

    With neither ``output`` nor ``in_place``, nothing is written (the new
    bytes are in the result). ``before_rename`` gets the parsed input and the
    temporary output file, and may raise to stop the rename.
    """
    policy = policy or Policy()
    if in_place and output is not None:
        raise UsageError("give either an output path or in-place, not both")
    if in_place and isinstance(source, bytes):
        raise UsageError("in-place needs a file path")
    if backup_suffix and not in_place:
        raise UsageError("a backup is only made for an in-place rewrite")
    with _no_cyclic_gc():
        return _rewrite(source, output, in_place, policy, backup_suffix, before_rename)


def _refuse_misplaced_sections(payload: Payload) -> None:
    """Refuse a loaded section Xen would place over another one.

    move_payload() puts each SHF_ALLOC section at ROUNDUP(offset, sh_addralign),
    and ROUNDUP(x, 0) is 0: a non-empty section with alignment 0 lands at the
    start of its region, over what is there. No toolchain emits one; rewriting
    it would hand Xen a payload it loads wrongly.
    """
    secs = payload.elf.sections
    for i, align in enumerate(secs.addralign):
        if align == 0 and i and secs.flags[i] & C.SHF_ALLOC and secs.size[i]:
            raise InputError(
                f"{payload.name}: section [{i}] {secs.name(i)!r} is SHF_ALLOC with sh_addralign 0: Xen's loader "
                "would place it at the start of its region, over other sections"
            )


def _rewrite(
    source: str | os.PathLike[str] | bytes,
    output: str | os.PathLike[str] | None,
    in_place: bool,
    policy: Policy,
    backup_suffix: str | None,
    before_rename: Callable[[Payload, Path], None] | None,
) -> RewriteResult:
    analysis = analyse(source, policy)
    payload = analysis.payload
    _refuse_misplaced_sections(payload)
    bad = unsupported_relocations(payload)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise InputError(f"{payload.name}: {bad[0].describe()}{more}")
    try:
        edits = plan(payload, analysis.funcs, analysis.decisions, policy)
        data = apply(payload, analysis.funcs, edits)
    except InputError as exc:  # names read late, tables Xen would load: still about this input
        raise InputError(f"{payload.name}: {exc}") from None
    if edits.changes:
        looked_at = {d.reloc_section for d in analysis.decisions.items}
        check_rewrite(payload, analysis.funcs, edits, data, policy, looked_at)
    dest: Path | None = None
    if in_place:
        assert not isinstance(source, bytes)
        dest = Path(source)
    elif output is not None:
        dest = Path(output)
    if dest is not None and not (in_place and not edits.changes):
        mode_from = None if isinstance(source, bytes) else Path(source)
        hook = None
        if before_rename is not None:
            hook_fn = before_rename

            def hook(tmp: Path) -> None:
                hook_fn(payload, tmp)

        write_atomic(dest, data, mode_from=mode_from, backup_suffix=backup_suffix, before_rename=hook)
    return RewriteResult(payload, analysis.funcs, analysis.decisions, edits, data, dest)

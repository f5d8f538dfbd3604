"""The whole rewrite: read -> identify -> decide -> apply -> verify -> write."""

from __future__ import annotations

import gc
import mmap
import os
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lp_rewrite.apply import Plan, apply, apply_chunks, plan
from lp_rewrite.decide import Decisions, decide, nothing_to_retarget
from lp_rewrite.elf.writer import Chunk, Pieces
from lp_rewrite.errors import InputError, UsageError, VerificationError
from lp_rewrite.identify import FuncsTable, identify
from lp_rewrite.policy import Policy
from lp_rewrite.read import Payload, misapplied_relocations, read_payload, unsupported_relocations
from lp_rewrite.selfcheck import check_rewrite
from lp_rewrite.write import write_atomic


class Analysis:
    """A payload with its replacements and the decision for each relocation."""

    def __init__(self, payload: Payload, funcs: FuncsTable, decisions: Decisions) -> None:
        self.payload = payload
        self.funcs = funcs
        self.decisions = decisions


class RewriteResult(Analysis):
    """An analysis with the plan made of it, the bytes it gives, and where they were written."""

    def __init__(
        self,
        payload: Payload,
        funcs: FuncsTable,
        decisions: Decisions,
        plan: Plan,
        output: bytes | None,
        written: Path | None,
    ) -> None:
        super().__init__(payload, funcs, decisions)
        self.plan = plan
        self._output = output
        self.written = written

    @property
    def output(self) -> bytes:
        """The rewritten bytes. A written output is not kept (the pieces written
        were let go once the file was proven to be them): it is made again from
        the input and the plan, the same way, only when asked for."""
        if self._output is None:
            self._output = apply(self.payload, self.funcs, self.plan) if self.plan.changes else self.payload.data
        return self._output

    @property
    def changed(self) -> bool:
        return self.plan.changes

    @property
    def why_unchanged(self) -> str | None:
        """Why the rewrite changed nothing (None when it changed the payload)."""
        if self.changed:
            return None
        return nothing_to_retarget(self.funcs, self.decisions)

    def retargets_per_section(self) -> Counter[str]:
        secs = self.payload.elf.sections
        # By index, then named: a name read through a Section object would keep one for each section.
        named: Counter[str] = Counter()
        for i, n in Counter(self.plan.retargets.column("section")).items():
            named[secs.name(i)] += n  # two sections may share a name
        return named


def analyse(
    source: str | os.PathLike[str] | bytes, policy: Policy | None = None, *, everything: bool = False
) -> Analysis:
    """Read a payload and decide its relocations (nothing is written).

    By default only relocations that can reach a replacement are materialised
    as decisions (the rest are counted); ``everything`` gives one per relocation.
    A payload Xen would relocate to wrong values is refused (InputError).
    """
    policy = policy or Policy()
    payload = read_payload(source, xen_limits=policy.xen_limits)
    try:
        _refuse_misapplied(payload)
        funcs = identify(payload, absent_ok=True)  # hooks only: nothing to rewrite, not an error
    except InputError as exc:
        raise exc.prefixed(payload.name) from None
    decisions = decide(payload, funcs, policy, everything=everything)
    payload.elf.sections.forget()
    return Analysis(payload, funcs, decisions)


def _refuse_misapplied(payload: Payload) -> None:
    """Xen loads such a payload with a wrong value at the place, before and
    after any rewrite: neither reading of it can be the one that runs."""
    bad = misapplied_relocations(payload)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise InputError(f"{bad[0].describe()}{more}")


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
    everything: bool = False,
) -> RewriteResult:
    """Rewrite a payload; return the decisions and what was written.

    With neither ``output`` nor ``in_place``, nothing is written (the new
    bytes are in the result). ``before_rename`` gets the parsed input and the
    temporary output file, and may raise to stop the rename. The result's
    ``decisions`` hold the relocations that can reach a replacement (the
    others are only counted); ``everything=True`` gives one decision per
    relocation, as ``explain`` shows, at the cost of a row of columns (about 49
    bytes) per relocation; a Decision object is made when one is read.
    """
    policy = policy or Policy()
    if in_place and output is not None:
        raise UsageError("give either an output path or in-place, not both")
    if in_place and isinstance(source, bytes):
        raise UsageError("in-place needs a file path")
    if backup_suffix is not None and (not backup_suffix or "/" in backup_suffix):
        raise UsageError(f"--backup {backup_suffix!r}: the backup suffix must be a non-empty file-name suffix")
    if backup_suffix and not in_place:
        raise UsageError("a backup is only made for an in-place rewrite")
    with _no_cyclic_gc():
        return _rewrite(source, output, in_place, policy, backup_suffix, before_rename, everything)


def _refuse_misplaced_sections(payload: Payload) -> None:
    """Refuse a payload whose loaded sections Xen would place over one another.

    move_payload() puts each SHF_ALLOC section at ROUNDUP(offset, sh_addralign),
    and ROUNDUP(x, 0) is 0 (see :func:`lp_rewrite.loader.placement.overlap`). No
    toolchain emits one; rewriting it would hand Xen a payload it loads wrongly.
    """
    if 0 not in payload.elf.sections.addralign[1:]:
        return  # the only way to overlap (and the stress objects' 100k sections skip the walk)
    from lp_rewrite.loader.placement import overlap
    from lp_rewrite.loader.refusal import Refused

    try:
        found = overlap(payload.elf, payload.name)
    except Refused:
        return  # Xen refuses the payload anyway, the same way before and after the rewrite
    if found is not None:
        secs = payload.elf.sections
        i, other, zero = found
        raise InputError(
            f"{payload.name}: section [{i}] {secs.name(i)!r} would be placed over section [{other}] "
            f"{secs.name(other)!r} by Xen's loader: section [{zero}] {secs.name(zero)!r} is SHF_ALLOC with "
            "sh_addralign 0, which moves the placement back to the start of its region"
        )


def _refuse_signed(payload: Payload) -> None:
    """A signature covers the whole file (lp_rewrite/notes.py): a rewrite that changes it breaks it.

    Only a rewrite that would change the file is refused: a signed payload
    with nothing to do passes through byte-identical, signature intact.
    """
    from lp_rewrite.notes import signature

    found = signature(payload.elf)
    if found is not None:
        raise InputError(f"payload is signed ({found.describe()}): rewrite before signing")


def _rewrite(
    source: str | os.PathLike[str] | bytes,
    output: str | os.PathLike[str] | None,
    in_place: bool,
    policy: Policy,
    backup_suffix: str | None,
    before_rename: Callable[[Payload, Path], None] | None,
    everything: bool,
) -> RewriteResult:
    analysis = analyse(source, policy, everything=everything)
    payload = analysis.payload
    _refuse_misplaced_sections(payload)
    bad = unsupported_relocations(payload)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise InputError(f"{payload.name}: {bad[0].describe()}{more}")
    try:
        edits = plan(payload, analysis.funcs, analysis.decisions, policy)
        if edits.changes:
            _refuse_signed(payload)
        pieces: Pieces | list[Chunk] = apply_chunks(payload, analysis.funcs, edits) if edits.changes else [payload.data]
    except InputError as exc:  # names read late, tables Xen would load: still about this input
        raise exc.prefixed(payload.name) from None
    dest: Path | None = None
    if in_place:
        assert not isinstance(source, bytes)
        dest = Path(source)
    elif output is not None:
        dest = Path(output)
    if dest is None or (in_place and not edits.changes):
        data = b"".join(pieces) if edits.changes else payload.data
        if edits.changes:  # nothing is written: the bytes in the result are what is proven
            prove_edit(analysis, edits, data, policy)
        return RewriteResult(payload, analysis.funcs, analysis.decisions, edits, data, None if dest is None else dest)
    hook_fn = before_rename

    def check_written(tmp: Path) -> None:
        # The proof is of the file about to be renamed into place, read back
        # from disk, not of the pieces handed to the writer.
        _check_written(analysis, edits, pieces, policy, tmp)
        if hook_fn is not None:
            hook_fn(payload, tmp)

    # The input as it was read: its mode for the output; in place, the file that must still be
    # there to be replaced (with its owner kept), and the bytes the backup holds.
    snap = payload.source
    write_atomic(
        dest,
        pieces,
        mode_from=snap,
        backup_suffix=backup_suffix,
        before_rename=check_written,
        expect=snap if in_place else None,
        original=payload.data if in_place and backup_suffix else None,
    )
    return RewriteResult(payload, analysis.funcs, analysis.decisions, edits, None, dest)


def prove_edit(analysis: Analysis, edits: Plan, data: bytes | mmap.mmap, policy: Policy) -> None:
    """Parse ``data`` and prove it is the input with exactly the planned edits (raises VerificationError)."""
    reps = {r.section for r in analysis.funcs.replacements}
    # The relocation sections deciding looked at (decisions about relocations
    # that cannot reach a replacement are only there with `everything`).
    items = analysis.decisions.items
    # An array, held through the self-check: a set of a stress object's 8.5k table indices costs 0.7 MB.
    looked_at = array(
        "I",
        sorted(
            {
                table
                for table, target in zip(items.column("reloc_section"), items.column("target_section"), strict=True)
                if target in reps  # -1 (no target section) is in no replacement's
            }
        ),
    )
    check_rewrite(analysis.payload, analysis.funcs, edits, data, policy, looked_at)


def _check_written(analysis: Analysis, edits: Plan, pieces: Pieces | list[Chunk], policy: Policy, tmp: Path) -> None:
    """The self-check, on the temporary output file as it is on disk.

    The file is read back in windows and must be the pieces byte for byte
    (padding and unchanged copies included), and the pieces are then let go
    (``clear()``); the proof parses the file itself, mapped read-only: the
    output is never held whole in memory.
    """
    try:
        at = _first_difference(tmp, pieces)
    except OSError as exc:
        raise VerificationError(f"self-check of the rewritten payload failed: cannot read it back: {exc}") from None
    if at is not None:
        raise VerificationError(
            f"self-check of the rewritten payload failed: the written file is not what was planned ({at})"
        )
    # The file is the pieces: they go before the proof parses it (a stress
    # object's header table and edited tables, megabytes held through the
    # self-check's peak otherwise). The writer is done with them; the result
    # makes the bytes again if asked for (RewriteResult.output).
    pieces.clear()
    if edits.changes:
        try:
            with tmp.open("rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise VerificationError(f"self-check of the rewritten payload failed: cannot map it: {exc}") from None
        prove_edit(analysis, edits, mapped, policy)  # the mapping is released with the last view of it


_WINDOW = 1 << 20


def _first_difference(path: Path, pieces: Iterable[Chunk]) -> str | None:
    """Where the file at ``path`` first differs from the pieces laid end to end, or None when it is them."""
    window = bytearray(_WINDOW)  # read into, and compared as a bytearray: memcmp (memoryviews compare per item)
    with path.open("rb", buffering=0) as f:
        pos = 0
        for piece in pieces:
            view = memoryview(piece)
            for lo in range(0, view.nbytes, _WINDOW):
                want = view[lo : lo + _WINDOW]
                got = memoryview(window)[: want.nbytes]
                n = f.readinto(got)
                if n != want.nbytes or window[: want.nbytes] != want:
                    at = next((i for i in range(n) if got[i] != want[i]), None)
                    if at is None:
                        return f"{pos + n} bytes, not {_size(pieces)}"
                    return f"byte {pos + at:#x} differs"
                pos += want.nbytes
        if f.read(1):
            return f"more than {_size(pieces)} bytes"
    return None


def _size(pieces: Iterable[Chunk]) -> int:
    """How many bytes the pieces hold (for a message: pieces may be made as they are iterated)."""
    return sum(memoryview(p).nbytes for p in pieces)

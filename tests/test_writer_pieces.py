"""The writer's output is made as it is iterated (lp_rewrite/elf/writer.py, Pieces):
every iteration gives the same bytes, the header table in any number of pieces is
the one table, edited fields included, and nothing is left once the pieces are let go."""

from __future__ import annotations

from pathlib import Path

import pytest

from lp_rewrite.apply import apply, apply_chunks, plan
from lp_rewrite.elf import writer
from lp_rewrite.pipeline import analyse
from lp_rewrite.policy import Policy
from tests.conftest import COMMITTED, TESTDATA

CASES = [
    (COMMITTED / "x86_64" / "keyhandler.livepatch", Policy()),
    (COMMITTED / "arm" / "keyhandler.livepatch", Policy()),
    (COMMITTED / "x86_64" / "static_section.livepatch", Policy(local_aliases=True)),  # sh_info of .symtab moves
    (TESTDATA / "notes" / "arm" / "keyhandler_misaligned.livepatch", Policy(align_notes=True)),  # sh_addralign
]


@pytest.mark.parametrize(("path", "policy"), CASES, ids=lambda c: getattr(c, "name", ""))
@pytest.mark.parametrize("per_piece", [1, 2, 7, writer._HEADERS_PER_PIECE])
def test_the_pieces_are_the_output_each_time_they_are_read(
    path: Path, policy: Policy, per_piece: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = analyse(path, policy)
    edits = plan(a.payload, a.funcs, a.decisions, policy)
    assert edits.changes
    whole = apply(a.payload, a.funcs, edits)  # joined at once, with the default slices of the header table
    monkeypatch.setattr(writer, "_HEADERS_PER_PIECE", per_piece)
    pieces = apply_chunks(a.payload, a.funcs, edits)
    assert b"".join(pieces) == whole
    assert b"".join(pieces) == whole  # made again, the same
    headers = len(a.payload.elf.sections)
    assert sum(1 for _ in pieces) >= -(-headers // per_piece) + 1  # the ELF header, the header table's slices
    pieces.clear()
    assert list(pieces) == []

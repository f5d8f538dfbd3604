"""Decisions are kept as columns (lp_rewrite/decide.py, DecisionList): every
Decision read from them must carry the values a Decision object held, for
every relocation, and a value beyond a column's typecode must survive exactly.
Short lists keep their decisions as tuples and long ones as columns: the tests
run with lists that make their columns at 1 and 3 decisions too, so that every
list here is read from tuples and from columns, and grows across the change."""

from __future__ import annotations

from pathlib import Path

import pytest

from lp_rewrite import decide
from lp_rewrite.apply import plan
from lp_rewrite.decide import Decision, DecisionList, Decisions, Reason
from lp_rewrite.pipeline import analyse
from lp_rewrite.policy import Policy
from tests import oracle
from tests.conftest import COMMITTED

FIXTURES = [COMMITTED / arch / "keyhandler.livepatch" for arch in ("x86_64", "aarch64", "arm")] + [
    COMMITTED / "x86_64" / "jump_table.livepatch"
]
FIELDS = Decision.__slots__
TUPLES_MAX = [1, 3, decide._TUPLES_MAX]  # decisions a list keeps as tuples before it makes columns


@pytest.fixture(params=TUPLES_MAX, ids=lambda n: f"tuples{n}")
def tuples_max(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Runs a test with lists that make their columns once they hold ``n`` decisions."""
    n: int = request.param
    monkeypatch.setattr(decide, "_TUPLES_MAX", n)
    return n


def _raw(name: str, value: int | None) -> int:
    """What column() gives for a field's value (None is -1 where a field may be None)."""
    return -1 if value is None else value


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_decision_read_from_the_columns_is_the_relocation_it_decides(path: Path, tuples_max: int) -> None:
    items = analyse(path, Policy(), everything=True).decisions.items
    expected = {(r.reloc_section_index, r.index): r for r in oracle.Payload(path).relocations()}
    seen = list(items)
    assert len(seen) == len(items) == len(expected)
    for d in seen:
        r = expected[(d.reloc_section, d.index)]
        assert (d.section, d.offset, d.rtype, d.symbol, d.addend) == (
            r.section_index,
            r.offset,
            r.rtype,
            r.symbol,
            r.addend,
        )
        assert isinstance(d.reason, Reason)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_columns_indexing_selection_and_copies_agree(path: Path, tuples_max: int) -> None:
    decisions = analyse(path, Policy(), everything=True).decisions
    items = decisions.items
    objects = list(items)
    assert any(d.target_section is None for d in objects), "the fixture has a relocation of an undefined symbol"
    assert any(d.replacement is None for d in objects) and any(d.replacement is not None for d in objects)
    resolved = [d.target_section is not None for d in objects]
    for name in FIELDS:
        column = list(items.column(name))
        if name == "reason":
            assert column == [list(Reason).index(d.reason) for d in objects]
        elif name == "target_offset":  # meaningful where there is a target section
            assert [v for v, ok in zip(column, resolved, strict=True) if ok] == [
                d.target_offset for d in objects if d.target_section is not None
            ]
        else:
            assert column == [_raw(name, getattr(d, name)) for d in objects], name
    for k in (0, 1, len(objects) - 1, -1, -len(objects)):
        assert items[k] == objects[k]
    assert items[2:7] == objects[2:7]
    with pytest.raises(IndexError):
        items[len(objects)]
    # A copy made one Decision at a time is equal, and so is its own list of objects.
    again = DecisionList(objects)
    assert again == items and items == objects and list(again) == objects
    assert Decisions(objects, decisions.counts, decisions.total) == decisions
    retargets = decisions.retargets
    assert list(retargets) == [d for d in objects if d.retarget] and retargets
    assert list(retargets.column("offset")) == [d.offset for d in objects if d.retarget]
    assert retargets[-1] == [d for d in objects if d.retarget][-1]
    with pytest.raises(TypeError):
        retargets.append(objects[0])  # a selection shares its columns: it does not grow


def test_values_beyond_a_column_and_none_are_kept_exactly(tuples_max: int) -> None:
    small = Decision(1, 2, 3, 4, 5, 6, -7, 8, 9, 10, 0, Reason.RETARGET)
    unresolved = Decision(1, 3, 3, 12, 5, 0, 0, 0, None, None, None, Reason.KEEP_NOT_REPLACED)
    # A REL addend read as a word and a target offset summed past 64 bits.
    huge = Decision(
        2**32, 2**33, 7, 2**64 - 1, 2**32 + 1, 2**40, 2**64 - 3, -(2**70), 2**40, 2**65 + 5, 2**35, Reason.KEEP_BODY
    )
    out = DecisionList([small, unresolved])
    out.append(huge)
    out.add(1, 4, 3, 16, 5, 0, 0, 0, 9, None, None, Reason.KEEP_NOT_REPLACED)  # no offset: no target either
    assert list(out) == [
        small,
        unresolved,
        huge,
        Decision(1, 4, 3, 16, 5, 0, 0, 0, None, None, None, Reason.KEEP_NOT_REPLACED),
    ]
    assert out[1].target_section is None and out[1].target_offset is None and out[1].replacement is None
    assert list(out.select(Reason.KEEP_BODY)) == [huge]


def test_a_list_read_while_it_grows_and_its_selections_keep_their_rows(tuples_max: int) -> None:
    """Reads between appends (rows in the columns and in tuples at once), selections made
    at each length, then a value beyond its column once there are columns."""

    def row(k: int) -> Decision:
        if k % 2:
            return Decision(1, k, 3, 4 * k, 5, 6, k - 3, -4, 9, 0x10 + k, k % 3, Reason.RETARGET)
        return Decision(1, k, 3, 4 * k, 5, 6, k - 3, 0, None, None, None, Reason.KEEP_NOT_REPLACED)

    out = DecisionList()
    seen: list[Decision] = []
    selections = []
    for k in range(10):
        out.append(row(k))
        seen.append(row(k))
        assert len(out) == k + 1 and out[-1] == seen[-1] and out[0] == seen[0] and list(out) == seen
        selections.append((out.select(Reason.RETARGET), [d for d in seen if d.retarget]))

    def check() -> None:
        for selected, want in selections:
            assert len(selected) == len(want) and list(selected) == want
            assert list(selected.column("target_offset")) == [d.target_offset for d in want]
        assert len(out) == len(seen) and list(out) == seen  # reading a selection changed nothing
        assert list(out.select(Reason.RETARGET)) == [d for d in seen if d.retarget]

    check()
    huge = Decision(1, 10, 3, 40, 5, 6, 2**64 - 3, 0, 9, 2**65, 0, Reason.RETARGET)
    out.append(huge)
    seen.append(huge)
    assert list(out) == seen and list(out.column("addend")) == [d.addend for d in seen]
    assert list(out.column("target_section")) == [_raw("", d.target_section) for d in seen]
    check()


def test_a_plan_finds_each_tables_retargets_in_the_order_of_the_plan(tuples_max: int) -> None:
    policy = Policy()
    a = analyse(COMMITTED / "x86_64" / "keyhandler.livepatch", policy)
    edits = plan(a.payload, a.funcs, a.decisions, policy)
    objects = list(edits.retargets)
    assert len(edits.new_addends) == len(objects) > 0
    tables = edits.by_table()
    assert sorted(k for rows in tables.values() for k in rows) == list(range(len(objects)))
    for table, rows in tables.items():
        assert list(rows) == sorted(rows) and all(objects[k].reloc_section == table for k in rows)


def test_retargets_are_counted_per_section_name_shared_names_summed() -> None:
    from types import SimpleNamespace
    from typing import Any, cast

    from lp_rewrite.apply import Plan
    from lp_rewrite.pipeline import RewriteResult

    def at(section: int) -> Decision:
        return Decision(9, 0, section, 0, 1, 1, 0, 0, section, 0, 0, Reason.RETARGET)

    names = {1: ".data.a", 2: ".data.b", 3: ".data.a"}  # sections 1 and 3 share a name
    payload = SimpleNamespace(elf=SimpleNamespace(sections=SimpleNamespace(name=names.__getitem__)))
    edits = Plan(DecisionList([at(1), at(2), at(3), at(3)]))
    result = RewriteResult(cast(Any, payload), cast(Any, None), Decisions(), edits, None, None)
    assert result.retargets_per_section() == {".data.a": 3, ".data.b": 1}

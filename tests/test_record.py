"""Value semantics without dataclasses (lp_rewrite/record.py): what Policy, a frozen
record, and Plan, a mutable one, promise their callers."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest

from lp_rewrite.apply import Plan
from lp_rewrite.errors import UsageError
from lp_rewrite.policy import Policy


def test_a_policy_is_immutable_and_equal_and_hashed_by_value() -> None:
    p = Policy(keep_sections=(".x",), absolute=True, rename_template="{name}.z", xen_syms=Path("/x"))
    same = Policy(keep_sections=(".x",), absolute=True, rename_template="{name}.z", xen_syms=Path("/x"))
    assert p == same and hash(p) == hash(same) and {p: 1}[same] == 1
    assert p != Policy() and p != object()
    with pytest.raises(AttributeError):
        p.absolute = False
    with pytest.raises(AttributeError):
        del p.absolute
    assert (p.keep_sections, p.absolute, p.rename_template, p.xen_limits) == ((".x",), True, "{name}.z", True)


def test_a_policy_copies_and_pickles_field_by_field() -> None:
    p = Policy(keep_sections=(".x",), local_aliases=True, rename_template="{name}.z", align_notes=True)
    for again in (copy.copy(p), copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert again == p
        assert (again.local_aliases, again.rename_template, again.align_notes) == (True, "{name}.z", True)
    assert "rename_template='{name}.z'" in repr(p)


def test_a_policy_still_checks_its_template() -> None:
    with pytest.raises(UsageError):
        Policy(rename_template="{name}")


def test_a_mutable_record_compares_by_value_and_is_unhashable() -> None:
    a, b = Plan(), Plan()
    assert a == b
    b.renames[1] = "x"
    assert a != b
    with pytest.raises(TypeError):
        hash(a)

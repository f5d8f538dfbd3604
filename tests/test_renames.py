"""A renamed replacement never takes a name the payload already has: the
collisions are found among the names that can collide (apply._names_among),
never a set of every name (a stress object's 64k strings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lp_rewrite.apply import _names_among
from lp_rewrite.pipeline import analyse, rewrite
from lp_rewrite.policy import Policy
from tests.conftest import COMMITTED

X86 = COMMITTED / "x86_64"


@pytest.mark.parametrize(
    ("fixture", "template", "expected"),
    [
        ("cold_split_O2", "{name}.cold", ["check_value.cold.1"]),
        ("entry_alias", "{name}_table", ["tick.localalias_table", "tick_alias_table", "tick_table.1"]),
        ("entry_alias", "{name}.localalias", ["tick.localalias.1", "tick_alias.localalias"]),
        ("static_section", "{name}_table", ["handler_table.1"]),
    ],
)
def test_a_new_name_the_payload_already_has_gets_a_suffix(
    fixture: str, template: str, expected: list[str], tmp_path: Path
) -> None:
    policy = Policy(rename_template=template)
    result = rewrite(X86 / f"{fixture}.livepatch", tmp_path / "out", policy=policy)  # proven by the self-check
    assert sorted(result.plan.renames.values()) == expected


@pytest.mark.parametrize("path", sorted(X86.glob("*.livepatch"))[:12], ids=lambda p: p.name)
def test_the_names_that_may_collide_are_those_of_every_name(path: Path) -> None:
    syms = analyse(path, Policy()).payload.elf.symbols
    every = {syms.name(i) for i in range(syms.count)}
    stems = {n for n in every if n} | {n.rpartition(".")[0] for n in every if "." in n} | {"absent", ""}
    for some in (stems, set(sorted(stems)[::3]), {"absent"}):
        assert _names_among(syms, some) == {n for n in every if n in some or n.rpartition(".")[0] in some}

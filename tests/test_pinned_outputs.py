"""What the tool does to every committed payload is pinned (testdata/pinned-outputs.json).

A redesign must not change a rewrite's bytes, a refusal's message, a
decision or a check finding on any of them: scripts/pin_outputs.py computes
them all again and this test names every difference. A change of behaviour
that is meant regenerates the file (``scripts/pin_outputs.py``) in the same
commit.
"""

from __future__ import annotations

import json

from tests.conftest import load_script


def test_outputs_match_the_pinned_ones() -> None:
    pin = load_script("pin_outputs")
    pinned = json.loads(pin.PINNED.read_text())
    now = pin.pin_all()
    assert len(now) > 100, "the pinned set lost its payloads"
    diff = pin.differences(pinned, now)
    assert not diff, "outputs differ from testdata/pinned-outputs.json:\n" + "\n".join(diff[:40])


def test_a_changed_output_is_named() -> None:
    """The comparison itself: a changed hash, a missing and an extra payload are each reported."""
    pin = load_script("pin_outputs")
    pinned = {"a": {"rewrite default": "changed 00"}, "b": {"check": "x"}}
    now = {"a": {"rewrite default": "changed 11"}, "c": {"check": "x"}}
    diff = pin.differences(pinned, now)
    assert diff == [
        "b: no longer a pinned payload",
        "c: not pinned (run scripts/pin_outputs.py)",
        "a: rewrite default: was 'changed 00', now 'changed 11'",
    ]

"""``lp-rewrite check``: a CI gate for livepatch payloads.

Each rule family has its module (:mod:`.structure`, :mod:`.relocs`,
:mod:`.escape`, :mod:`.hidden`, :mod:`.trampoline`, :mod:`.branches`,
:mod:`.xen`); rules, ids
and help text live in :mod:`.findings`; :mod:`.run` checks one payload,
:mod:`.batch` many; :mod:`.render` and :mod:`.sarif` write the reports.

Python API::

    from lp_rewrite.check import CheckOptions, check_payload
    report = check_payload("fix.livepatch")
    for f in report.active():
        print(f.rule.id, f.where, f.message)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["CheckOptions", "check_payload"]

if TYPE_CHECKING:
    from lp_rewrite.check.run import CheckOptions, check_payload


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lp_rewrite.check import run

        return getattr(run, name)
    raise AttributeError(name)

"""The ``lp-rewrite`` command line: one module per command, registered on one app.

``main`` registers only the command it runs (start-up time is a build hook's
budget); ``app`` from here has every command, for embedding and tests.
"""

from __future__ import annotations

from typing import Any

from lp_rewrite.cli.shared import main, register

__all__ = ["app", "main"]


def __getattr__(name: str) -> Any:
    if name == "app":
        return register()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

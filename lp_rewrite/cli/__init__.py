"""The ``lp-rewrite`` command line: one module per command, registered on one app."""

from __future__ import annotations

from lp_rewrite.cli import check, explain, rewrite, verify  # noqa: F401  (each module registers its command)
from lp_rewrite.cli.app import app, main

__all__ = ["app", "main"]

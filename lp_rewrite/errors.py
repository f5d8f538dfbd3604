"""Exceptions that map to the command line's exit codes."""

from __future__ import annotations


class LpRewriteError(Exception):
    """Base class: a one-line, user-facing failure."""

    exit_code = 2


class InputError(LpRewriteError):
    """The input is not something the tool can process (exit 2)."""


class UsageError(LpRewriteError):
    """Options that contradict each other or the input (exit 2)."""


class VerificationError(LpRewriteError):
    """A rewritten payload failed its proof (exit 1)."""

    exit_code = 1

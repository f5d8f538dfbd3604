"""Exceptions that map to the command line's exit codes.

An error may say where in the input it is (:class:`Location`): a section, an
offset in it, the bytes concerned, a symbol. The message stays one line for
the user; the location is for callers that point at the bytes (``check``'s
findings). Context (the entry, the payload's name) is put in front of the
message once, where it is known: :meth:`LpRewriteError.prefixed`.
"""

from __future__ import annotations

from typing import NamedTuple, Self


# A NamedTuple, not a frozen dataclass: this module is imported on every start,
# and creating a dataclass costs about a millisecond there (plus the
# dataclasses module itself).
class Location(NamedTuple):
    """Where an error is: a section, and within it the bytes at ``offset`` (all of it when None)."""

    section: str
    offset: int | None = None
    length: int | None = None
    symbol: str | None = None  # the symbol the error is about, if any

    def __str__(self) -> str:
        return self.section if self.offset is None else f"{self.section}+{self.offset:#x}"


class LpRewriteError(Exception):
    """Base class: a one-line, user-facing failure."""

    exit_code = 2
    location: Location | None = None

    def prefixed(self, context: str) -> Self:
        """The same error (class, location) with ``context: `` in front of its message."""
        out = type(self).__new__(type(self))  # no __init__: subclasses take other arguments
        out.__dict__.update(self.__dict__)
        out.args = (f"{context}: {self}",)
        return out


class InputError(LpRewriteError):
    """The input is not something the tool can process (exit 2)."""

    def __init__(self, message: str, *, location: Location | None = None) -> None:
        super().__init__(message)
        self.location = location


class UsageError(LpRewriteError):
    """Options that contradict each other or the input (exit 2)."""


class VerificationError(LpRewriteError):
    """A rewritten payload failed its proof (exit 1)."""

    exit_code = 1

"""Reviewed exceptions: which findings a team has looked at and accepted.

An entry is ``[RULE:]SYMBOL [reason...]``. RULE is a rule id or name and
defaults to LP002 (escaping-new-function), the finding reviewers are
expected to accept case by case; SYMBOL is the name the finding shows, or
``*`` for every finding of that rule. Entries come from three places:

* ``--allow ENTRY`` on the command line (repeatable);
* ``--allow-file FILE``: one entry per line; a ``#`` that begins a word
  starts a comment (``common/x.c#name`` is a name);
* the payload's own ``.lp_rewrite.allow`` section: NUL- or newline-separated
  entries, so that the exception travels with the code that needs it. Make
  it non-ALLOC (``.pushsection .lp_rewrite.allow, "", %progbits``) so that
  Xen does not load it. These entries can only allow LP002 for a named
  symbol: the payload is the thing under review, so it must not be able to
  silence a finding that makes Xen refuse it (``LP009:*``) or one the
  reviewers did not see (``*``). Everything else needs --allow or
  --allow-file, which live with the CI configuration.

A suppressed finding is still reported (SARIF ``suppressions``, JSON
``suppressed``) but never fails the check. A malformed entry on the command
line or in a file is a usage error; one in a payload is ignored, and so is
one for another rule or for ``*``, which leaves its finding in place (fail
closed).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from lp_rewrite.check.findings import Finding, rule
from lp_rewrite.errors import UsageError

ALLOW_SECTION: Final = ".lp_rewrite.allow"
# The rule an entry without RULE: names, and the only one a payload's own
# section may allow (symbol by symbol): the finding reviewers accept case by case.
DEFAULT_RULE: Final = "LP002"
_COMMENT: Final = re.compile(r"(?:^|\s)#")


@dataclass(frozen=True)
class AllowEntry:
    rule: str  # rule id
    symbol: str  # exact name, or "*"
    source: str  # where the entry came from
    reason: str = ""

    def matches(self, finding: Finding) -> bool:
        if finding.rule.id != self.rule:
            return False
        return self.symbol == "*" or finding.symbol == self.symbol

    def describe(self) -> str:
        why = f": {self.reason}" if self.reason else ""
        return f"allowed by {self.source}{why}"


def parse_entry(text: str, source: str) -> AllowEntry:
    """Parse one entry; raise ValueError when it is malformed."""
    head, _sep, reason = text.strip().partition(" ")
    if not head:
        raise ValueError("empty entry")
    rule_id, symbol = DEFAULT_RULE, head
    prefix, colon, rest = head.partition(":")
    if colon:
        with contextlib.suppress(KeyError):  # not a rule: the colon is part of the name
            rule_id, symbol = rule(prefix).id, rest
    if not symbol:
        raise ValueError(f"{text.strip()!r} names no symbol")
    return AllowEntry(rule_id, symbol, source, reason.strip())


@dataclass(frozen=True)
class AllowList:
    entries: tuple[AllowEntry, ...] = ()

    @classmethod
    def build(cls, options: Iterable[str] = (), files: Iterable[str | os.PathLike[str]] = ()) -> AllowList:
        """From --allow values and --allow-file files (UsageError when malformed)."""
        out: list[AllowEntry] = []
        for value in options:
            try:
                out.append(parse_entry(value, "--allow"))
            except ValueError as exc:
                raise UsageError(f"--allow {value!r}: {exc}") from None
        for path in files:
            out.extend(_read_file(Path(path)))
        return cls(tuple(out))

    def with_payload_section(self, data: bytes, label: str) -> AllowList:
        """Add the entries of a payload's .lp_rewrite.allow section.

        Malformed entries, and entries a payload may not make (another rule
        than LP002, or ``*``), are skipped: their findings stay.
        """
        extra = []
        for raw in data.replace(b"\0", b"\n").split(b"\n"):
            text = raw.decode("utf-8", "replace").strip()
            if not text or text.startswith("#"):
                continue
            try:
                entry = parse_entry(text, f"{label} {ALLOW_SECTION}")
            except ValueError:
                continue
            if entry.rule == DEFAULT_RULE and entry.symbol != "*":
                extra.append(entry)
        return AllowList(self.entries + tuple(extra)) if extra else self

    def match(self, finding: Finding) -> AllowEntry | None:
        for entry in self.entries:
            if entry.matches(finding):
                return entry
        return None


_MAX_ALLOW_FILE = 16 * 1024 * 1024


def _read_file(path: Path) -> list[AllowEntry]:
    try:
        # Bounded (a FIFO from a process substitution is fine; /dev/zero is not read forever).
        with open(path, "rb") as f:
            raw = f.read(_MAX_ALLOW_FILE + 1)
        if len(raw) > _MAX_ALLOW_FILE:
            raise UsageError(f"--allow-file {path}: longer than {_MAX_ALLOW_FILE} bytes")
        lines = raw.decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"--allow-file {path}: {why}") from None
    out = []
    for n, line in enumerate(lines, 1):
        # A comment starts at a '#' that begins a word: "file.c#name" is a name.
        text = _COMMENT.split(line, maxsplit=1)[0].strip()
        if not text:
            continue
        try:
            out.append(parse_entry(text, f"{path}:{n}"))
        except ValueError as exc:
            raise UsageError(f"{path}:{n}: {exc}") from None
    return out

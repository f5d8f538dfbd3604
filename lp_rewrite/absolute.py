"""Addresses for SHN_ABS aliases: the form an alias takes in a prelinked payload.

``livepatch-build --prelink`` writes each ``old_addr`` as a literal
(``create-diff-object --resolve``) and then has ``prelink`` turn every
undefined symbol of the linked payload into an ``SHN_ABS`` one holding its
``xen-syms`` address, so nothing is left for Xen to resolve by name. An alias
added to such a payload follows suit: ``SHN_ABS``, valued at the original's
address (Xen's loader keeps an ``SHN_ABS`` value as it is, and
``build_symbol_table()`` ignores such symbols, so a defined ``foo`` cannot
clash with Xen's).

Where the address comes from, for each original:

* ``old_addr``'s literal, when there is one: it is the very address Xen
  patches, so it *is* the original. Given ``xen-syms``, the name must resolve
  there to that same address (a payload prelinked against another build is
  refused); when the name stands for several functions, the literal must be
  one of them, and says which. Without ``xen-syms`` the literal is trusted
  as it stands.
* otherwise ``xen-syms`` (required): the name as Xen's runtime table spells it
  (:mod:`lp_rewrite.xensyms`), so a static ``path/file.c#foo`` is found in
  the scope of its FILE symbol, as ``prelink`` finds it. A name that stands
  for two different addresses is refused, naming both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from lp_rewrite.errors import InputError, UsageError
from lp_rewrite.livepatch_abi import FUNCS_SECTION
from lp_rewrite.xensyms import XenSymbol, XenSymbols


# A value, as a NamedTuple (this path imports xensyms, whose classes are dataclasses: no start-up is won here).
class AbsoluteRequest(NamedTuple):
    """One replaced function that needs an absolute alias."""

    name: str  # the original, as Xen's symbol table names it
    literal: int  # old_addr's literal value, 0 when there is none
    entry: int  # its .livepatch.funcs entry, for messages


def _describe(sym: XenSymbol) -> str:
    where = f" in {sym.section}" if sym.section else ""
    return f"{sym.address:#x}{where} (size {sym.size})"


def _lookup(table: XenSymbols, req: AbsoluteRequest) -> int:
    where = f"{FUNCS_SECTION} entry {req.entry}"
    candidates = table.matches(req.name)
    if not candidates:
        raise InputError(f"{where}: {req.name!r} is not in {table.source}'s symbol table, so it has no address")
    addresses = [c.address for c in candidates]
    if req.literal:
        if req.literal in addresses:
            # The literal is what Xen patches; when the name is ambiguous it says which one is meant.
            return req.literal
        has = " and ".join(_describe(c) for c in candidates[:2])
        raise InputError(
            f"{where}: old_addr is {req.literal:#x}, but {table.source} has {req.name!r} at {has}: the payload "
            "was prelinked against another build"
        )
    if len(addresses) > 1:
        first, second = candidates[0], candidates[1]
        more = f" (and {len(addresses) - 2} more)" if len(addresses) > 2 else ""
        scope = f" in the scope of FILE {req.name.partition('#')[0]!r}" if "#" in req.name else ""
        raise InputError(
            f"{where}: {req.name!r} is ambiguous in {table.source}: two symbols{scope} match, at "
            f"{_describe(first)} and at {_describe(second)}{more}; no single address can be chosen "
            "(a literal old_addr would say which)"
        )
    return addresses[0]


def resolve_addresses(requests: Sequence[AbsoluteRequest], xen_syms: Path | None) -> dict[str, int]:
    """Original name -> the address its SHN_ABS alias holds."""
    out: dict[str, int] = {}
    literal_of: dict[str, AbsoluteRequest] = {}
    for req in requests:
        if not req.literal:
            continue
        prior = literal_of.setdefault(req.name, req)
        if prior.literal != req.literal:
            raise InputError(
                f"{FUNCS_SECTION} entries {prior.entry} and {req.entry} give {req.name!r} two addresses "
                f"({prior.literal:#x} and {req.literal:#x})"
            )
    if xen_syms is None:
        missing = next((r for r in requests if not r.literal), None)
        if missing is not None:
            raise UsageError(
                f"--absolute: {FUNCS_SECTION} entry {missing.entry} ({missing.name}) has no literal old_addr; "
                "give --xen-syms FILE to look its address up"
            )
        return {r.name: r.literal for r in requests}
    table = XenSymbols.from_xen_syms(xen_syms)
    for req in requests:
        out[req.name] = _lookup(table, req)
    return out

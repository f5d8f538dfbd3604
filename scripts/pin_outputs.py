#!/usr/bin/env python3
"""Pin what the tool does to every committed payload, so a redesign can prove it changed nothing.

For each ``*.livepatch`` under testdata/ (the fixtures, the note and check
payloads, the emulation payloads) it records:

* per rewrite policy (default, ``--align-notes``, ``--local-aliases`` on
  x86-64, ``--absolute``): the SHA-256 of the output and whether it changed,
  or the refusal's message;
* every decision of ``analyse(..., everything=True)`` (what ``explain``
  shows), hashed;
* ``check``'s findings (rule, severity, place, symbol, message, suppression),
  hashed, against the payload's own architecture's check image
  (testdata/check/<arch>/xen-syms) as ``--xen-syms``, or its refusal.

    scripts/pin_outputs.py            # rewrite testdata/pinned-outputs.json
    scripts/pin_outputs.py --check    # compare; exit 1 and name what differs

tests/test_pinned_outputs.py runs the comparison. Regenerate the file only
for a change of behaviour that is meant, and say so in the commit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lp_rewrite.check import CheckOptions, check_payload  # noqa: E402
from lp_rewrite.check.xen import XenImage  # noqa: E402
from lp_rewrite.errors import LpRewriteError  # noqa: E402
from lp_rewrite.pipeline import analyse, rewrite  # noqa: E402
from lp_rewrite.policy import Policy  # noqa: E402

TESTDATA = ROOT / "testdata"
PINNED = TESTDATA / "pinned-outputs.json"
# The directories whose payloads are pinned (the fixture sources' builds, committed).
DIRS = ("build", "check/x86_64", "check/aarch64", "check/arm", "notes", "emu/build")
POLICIES: dict[str, Policy] = {
    "default": Policy(),
    "align-notes": Policy(align_notes=True),
    "local-aliases": Policy(local_aliases=True),
    "absolute": Policy(absolute=True),
}
ARCH_DIRS = ("x86_64", "aarch64", "arm")


def payloads() -> list[Path]:
    out: list[Path] = []
    for d in DIRS:
        out.extend(sorted((TESTDATA / d).rglob("*.livepatch")))
    return out


def arch_of(path: Path) -> str:
    (arch,) = [p for p in path.relative_to(TESTDATA).parts if p in ARCH_DIRS]
    return arch


def digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def refusal(exc: LpRewriteError) -> str:
    return f"refused ({type(exc).__name__}): {exc}"


def pin_one(path: Path, images: dict[str, XenImage]) -> dict[str, str]:
    data = path.read_bytes()
    pins: dict[str, str] = {}
    arch = arch_of(path)
    for name, policy in POLICIES.items():
        if name == "local-aliases" and arch != "x86_64":
            continue  # x86-64 only (a usage error elsewhere)
        try:
            result = rewrite(data, policy=policy)
            pins[f"rewrite {name}"] = (
                f"{'changed' if result.changed else 'unchanged'} {hashlib.sha256(result.output).hexdigest()}"
            )
        except LpRewriteError as exc:
            pins[f"rewrite {name}"] = refusal(exc)
    try:
        decisions = analyse(data, everything=True).decisions
        pins["explain"] = digest(
            [
                (
                    d.reloc_section,
                    d.index,
                    d.section,
                    d.offset,
                    d.rtype,
                    d.symbol,
                    d.addend,
                    d.bias,
                    d.target_section,
                    d.target_offset,
                    d.replacement,
                    d.reason.value,
                )
                for d in decisions
            ]
        )
    except LpRewriteError as exc:
        pins["explain"] = refusal(exc)
    try:
        report = check_payload(data, CheckOptions(xen=images[arch]), name=path.name)
        pins["check"] = digest(
            [
                (
                    f.rule.id,
                    f.severity.value,
                    f.section,
                    f.offset,
                    f.file_offset,
                    f.length,
                    f.symbol,
                    f.message,
                    f.suppressed,
                )
                for f in report.findings
            ]
        )
    except LpRewriteError as exc:
        pins["check"] = refusal(exc)
    return pins


def pin_all() -> dict[str, dict[str, str]]:
    images = {arch: XenImage.load(TESTDATA / "check" / arch / "xen-syms") for arch in ARCH_DIRS}
    return {str(p.relative_to(TESTDATA)): pin_one(p, images) for p in payloads()}


def differences(pinned: dict[str, dict[str, str]], now: dict[str, dict[str, str]]) -> list[str]:
    out = [f"{name}: no longer a pinned payload" for name in sorted(set(pinned) - set(now))]
    out += [f"{name}: not pinned (run scripts/pin_outputs.py)" for name in sorted(set(now) - set(pinned))]
    for name in sorted(set(pinned) & set(now)):
        for key in sorted(set(pinned[name]) | set(now[name])):
            was, is_ = pinned[name].get(key), now[name].get(key)
            if was != is_:
                out.append(f"{name}: {key}: was {was!r}, now {is_!r}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the pinned file instead of writing it")
    args = ap.parse_args()
    now = pin_all()
    if args.check:
        diff = differences(json.loads(PINNED.read_text()), now)
        for line in diff:
            print(line)
        return 1 if diff else 0
    PINNED.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    print(f"pinned {len(now)} payloads into {PINNED.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

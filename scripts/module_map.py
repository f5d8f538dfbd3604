#!/usr/bin/env python3
"""The package's module map and its longest functions (for design reviews and closing notes).

scripts/module_map.py              # one line per module: path, lines, first docstring line
scripts/module_map.py --longest 15 # then the 15 longest functions, by lines
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lp_rewrite"


def modules() -> list[tuple[str, int, str]]:
    """(path relative to the repo, lines, first line of the module docstring) for every module."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        out.append((str(path.relative_to(ROOT)), len(text.splitlines()), doc.strip().splitlines()[0] if doc else ""))
    return out


def longest(n: int) -> list[tuple[int, str]]:
    """The n longest functions and methods: (lines, module:qualified name)."""
    found: list[tuple[int, str]] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        _functions(ast.parse(path.read_text()), f"{path.relative_to(ROOT)}:", found)
    return sorted(found, reverse=True)[:n]


def _functions(node: ast.AST, prefix: str, found: list[tuple[int, str]]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            found.append(((child.end_lineno or child.lineno) - child.lineno + 1, f"{prefix}{child.name}"))
            _functions(child, f"{prefix}{child.name}.", found)
        elif isinstance(child, ast.ClassDef):
            _functions(child, f"{prefix}{child.name}.", found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--longest", type=int, default=0, help="also list the N longest functions")
    args = ap.parse_args()
    for path, lines, doc in modules():
        print(f"{path:<40} {lines:>5}  {doc}")
    if args.longest:
        print()
        for lines, name in longest(args.longest):
            print(f"{lines:>5}  {name}")


if __name__ == "__main__":
    main()

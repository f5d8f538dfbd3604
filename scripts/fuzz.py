#!/usr/bin/env python3
"""The long fuzz run: the command line of the fuzzer package, scripts/lp_fuzz/ (its doc: ``--help``).

    python scripts/fuzz.py --runs 1000000 --jobs 2            # the long run
    python scripts/fuzz.py --engine builtin --runs 20000      # quick, reproducible
    python scripts/fuzz.py --replay fuzz-crashes/             # re-run saved crashes

The seed variants are re-exported for the tests that build objects with
them (tests/test_robustness.py, test_atomic.py, test_determinism.py,
test_local_aliases.py); tests/test_fuzz.py imports the package itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Fuzz the tree this script belongs to, whatever an editable install points at.
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "scripts"))

from lp_fuzz.cli import main  # noqa: E402 - after the path above
from lp_fuzz.seeds import (  # noqa: E402
    add_section,
    all_seeds,
    append_blob,
    edit_sections,
    extended_numbering,
    section_index,
    with_symtab_shndx,
)
from lp_fuzz.target import independent_reader_refuses  # noqa: E402

__all__ = [
    "add_section",
    "all_seeds",
    "append_blob",
    "edit_sections",
    "extended_numbering",
    "independent_reader_refuses",
    "main",
    "section_index",
    "with_symtab_shndx",
]

if __name__ == "__main__":
    sys.exit(main())

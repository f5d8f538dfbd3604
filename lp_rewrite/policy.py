"""What the user chose: the keep list, alias binding, and the rename scheme."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lp_rewrite.errors import UsageError
from lp_rewrite.livepatch_abi import ALWAYS_KEEP, DEFAULT_KEEP

# Replacement symbols are renamed so that no defined symbol carries the
# original's name next to the alias. GCC never emits this suffix.
DEFAULT_RENAME_TEMPLATE = "{name}.lp_new"


@dataclass(frozen=True)
class Policy:
    """Options of one rewrite (all defaults are what livepatch-build wants)."""

    keep_sections: tuple[str, ...] = ()  # added to the defaults
    default_keep: bool = True
    local_aliases: bool = False
    rename_template: str = DEFAULT_RENAME_TEMPLATE
    # Refuse local aliases where `ld -r` cannot carry them. Only tests turn
    # this off, to build the objects that show why.
    linker_check: bool = True
    # SHN_ABS aliases holding the original's address, for prelinked payloads
    # (lp_rewrite/absolute.py). A replacement whose old_addr is a literal gets
    # one anyway; `absolute` asks for one everywhere.
    absolute: bool = False
    # Refuse objects Xen's loader would refuse by size (1024 sections); off for
    # intermediate objects and stress tests.
    xen_limits: bool = True
    xen_syms: Path | None = None  # resolves and cross-checks absolute aliases
    # Raise sh_addralign of the notes Xen reads to 4 (lp_rewrite/notes.py): a
    # header edit the self-check and `verify` expect with the same option.
    align_notes: bool = False

    def __post_init__(self) -> None:
        t = self.rename_template
        if t.count("{name}") != 1 or t == "{name}":
            raise UsageError(f"rename template {t!r} must contain {{name}} exactly once, plus something else")
        try:
            t.format(name="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise UsageError(f"rename template {t!r} is not a valid template ({exc})") from None

    def keep_patterns(self) -> tuple[str, ...]:
        base = ALWAYS_KEEP + (DEFAULT_KEEP if self.default_keep else ())
        return base + tuple(p for p in self.keep_sections if p not in base)

    def renamed(self, name: str) -> str:
        return self.rename_template.format(name=name)

    def is_renamed(self, name: str) -> bool:
        """Whether ``name`` already has the shape the template produces."""
        pre, post = self.rename_template.split("{name}")
        pattern = re.escape(pre) + r".+" + re.escape(post) + r"(\.\d+)?"
        return re.fullmatch(pattern, name) is not None

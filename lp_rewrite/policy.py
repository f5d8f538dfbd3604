"""What the user chose: the keep list, alias binding, and the rename scheme."""

from __future__ import annotations

import re
from pathlib import Path

from lp_rewrite.errors import UsageError
from lp_rewrite.livepatch_abi import ALWAYS_KEEP, DEFAULT_KEEP
from lp_rewrite.record import FrozenRecord

# Replacement symbols are renamed so that no defined symbol carries the
# original's name next to the alias. GCC never emits this suffix.
DEFAULT_RENAME_TEMPLATE = "{name}.lp_new"


# A frozen record (immutable, compared, hashed and shown by value), not a
# dataclass: creating one costs about a millisecond of every start-up.
class Policy(FrozenRecord):
    """Options of one rewrite (all defaults are what livepatch-build wants)."""

    __slots__ = (
        "absolute",
        "align_notes",
        "default_keep",
        "keep_sections",
        "linker_check",
        "local_aliases",
        "rename_template",
        "xen_limits",
        "xen_syms",
    )

    keep_sections: tuple[str, ...]  # added to the defaults
    default_keep: bool
    local_aliases: bool
    rename_template: str
    # Refuse local aliases where `ld -r` cannot carry them. Only tests turn
    # this off, to build the objects that show why.
    linker_check: bool
    # SHN_ABS aliases holding the original's address, for prelinked payloads
    # (lp_rewrite/absolute.py). A replacement whose old_addr is a literal gets
    # one anyway; `absolute` asks for one everywhere.
    absolute: bool
    # Refuse objects Xen's loader would refuse by size (1024 sections); off for
    # intermediate objects and stress tests.
    xen_limits: bool
    xen_syms: Path | None  # resolves and cross-checks absolute aliases
    # Raise sh_addralign of the notes Xen reads to 4 (lp_rewrite/notes.py): a
    # header edit the self-check and `verify` expect with the same option.
    align_notes: bool

    def __init__(
        self,
        keep_sections: tuple[str, ...] = (),
        default_keep: bool = True,
        local_aliases: bool = False,
        rename_template: str = DEFAULT_RENAME_TEMPLATE,
        linker_check: bool = True,
        absolute: bool = False,
        xen_limits: bool = True,
        xen_syms: Path | None = None,
        align_notes: bool = False,
    ) -> None:
        t = rename_template
        if t.count("{name}") != 1 or t == "{name}":
            raise UsageError(f"rename template {t!r} must contain {{name}} exactly once, plus something else")
        try:
            t.format(name="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise UsageError(f"rename template {t!r} is not a valid template ({exc})") from None
        self._freeze(
            keep_sections=keep_sections,
            default_keep=default_keep,
            local_aliases=local_aliases,
            rename_template=rename_template,
            linker_check=linker_check,
            absolute=absolute,
            xen_limits=xen_limits,
            xen_syms=xen_syms,
            align_notes=align_notes,
        )

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

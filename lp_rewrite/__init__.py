"""lp_rewrite: build-time rewriting of Xen livepatch payloads.

A payload that replaces a hypervisor function carries its own copy of it, and
relocations in the payload bind to that copy. Where the payload stores such an
address, the hypervisor keeps a pointer into payload memory that is freed on
unload. ``rewrite`` renames the copy, imports the original under its Xen
symbol-table name, and retargets every reference to the copy's entry point
except in the sections that must describe the new code.

Python API::

    from lp_rewrite import rewrite, Policy
    result = rewrite("fix.livepatch", "fix.rewritten.livepatch", everything=True)
    for d in result.decisions:  # with everything=True: one per relocation
        print(d.reason.value)

``rewrite`` and ``analyse`` decide, by default, only the relocations that can
reach a replacement (the rest are counted in ``decisions.counts``), which
keeps a million-relocation object fast; ``everything=True`` returns every
decision, as ``explain`` and ``rewrite -v`` show.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Policy", "__version__", "analyse", "rewrite"]

if TYPE_CHECKING:
    from lp_rewrite.pipeline import analyse, rewrite
    from lp_rewrite.policy import Policy


def __getattr__(name: str) -> Any:
    # Lazy: `import lp_rewrite` stays cheap for the command line.
    if name in ("rewrite", "analyse"):
        from lp_rewrite import pipeline

        return getattr(pipeline, name)
    if name == "Policy":
        from lp_rewrite.policy import Policy

        return Policy
    raise AttributeError(name)

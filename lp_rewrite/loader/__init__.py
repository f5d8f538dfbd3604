"""A model of Xen's payload loader: what the hypervisor does between upload and apply.

It follows ``xen/common/livepatch.c``, ``livepatch_elf.c`` and the per-arch
``livepatch.c`` files: header checks, placement of SHF_ALLOC sections into
RX/RW/RO regions at an address the caller chooses, symbol resolution against
a hypervisor symbol table, relocation with exactly Xen's types and range
checks, then the ``.livepatch.funcs``/hook facts Xen reads from the result.
Every refusal is a :class:`Refused` carrying Xen's log line.

``verify`` loads an original and a rewritten payload with it and compares the
bytes; the emulation tests map what it produces into an emulated CPU.
"""

from lp_rewrite.loader.image import LoadedPayload, MisdirectedBranch, PatchFunction, load, prepare_payload
from lp_rewrite.loader.placement import PlacedSection, Region
from lp_rewrite.loader.refusal import Refused
from lp_rewrite.loader.relocate import AppliedRelocation
from lp_rewrite.loader.symbols import default_base, synthetic_table, wanted_names

__all__ = [
    "AppliedRelocation",
    "LoadedPayload",
    "MisdirectedBranch",
    "PatchFunction",
    "PlacedSection",
    "Refused",
    "Region",
    "default_base",
    "load",
    "prepare_payload",
    "synthetic_table",
    "wanted_names",
]

"""The one error the loader raises: Xen would refuse this payload.

The message is Xen's log line for the refusal (``livepatch: NAME: ...``, the
``LIVEPATCH`` prefix included) with the concrete values filled in, so it can
be compared with a real hypervisor's console. Where Xen refuses without
logging anything, the message says so and names the return code.
"""

from __future__ import annotations

from lp_rewrite.errors import InputError


class Refused(InputError):
    """Xen's loader would refuse the payload (exit 2 on the command line)."""

    def __init__(self, payload: str, xen_message: str) -> None:
        super().__init__(f"livepatch: {payload}: {xen_message}")
        self.payload = payload
        self.xen_message = xen_message

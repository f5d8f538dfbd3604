/*
 * The bug from the xen-devel thread: the payload replaces hv_original and
 * its load hook registers "hv_original" as a callback. Unrewritten, the
 * hypervisor keeps a pointer to the payload's copy, which faults once the
 * payload is reverted and unloaded.
 */
#include "fixture.h"
#include "emu.h"

noinline int hv_original(int x)
{
    return x + 2000;
}

static void lp_load(void)
{
    register_handler(hv_original);
}
LIVEPATCH_LOAD_HOOK(lp_load);

LIVEPATCH_FUNC(lp_hv_original, "hv_original", hv_original, 0);

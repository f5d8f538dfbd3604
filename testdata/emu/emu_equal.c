/*
 * Pointer equality: &hv_original taken by payload code must equal the
 * hypervisor's &hv_original. The hook stores the payload's pointer in
 * hypervisor data (the hypervisor compares it) and compares it with the
 * hypervisor's pointer itself.
 */
#include "fixture.h"
#include "emu.h"

noinline int hv_original(int x)
{
    return x + 2000;
}

static void lp_load(void)
{
    hv_seen = hv_original;
    hv_payload_says_equal = hv_original_address() == hv_original;
}
LIVEPATCH_LOAD_HOOK(lp_load);

LIVEPATCH_FUNC(lp_hv_original, "hv_original", hv_original, 0);

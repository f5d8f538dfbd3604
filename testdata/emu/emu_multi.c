/*
 * Several replaced functions stored at once, two global and one static (Xen
 * names it "common/hv.c#hv_local"), through a table in the payload's own
 * data: the hypervisor copies the pointers out of it, so the relocated data
 * words are what it keeps.
 */
#include "fixture.h"
#include "emu.h"

noinline int hv_original(int x)
{
    return x + 2000;
}

noinline int hv_second(int x)
{
    return 3 * x + 2000;
}

static noinline int hv_local(int x)
{
    return x + 6000;
}

static const handler_fn lp_table[3] = { hv_original, hv_second, hv_local };

static void lp_load(void)
{
    register_table(lp_table, 3);
}
LIVEPATCH_LOAD_HOOK(lp_load);

LIVEPATCH_FUNC(lp_hv_original, "hv_original", hv_original, 0);
LIVEPATCH_FUNC(lp_hv_second, "hv_second", hv_second, 0);
LIVEPATCH_FUNC(lp_hv_local, "common/hv.c#hv_local", hv_local, 0);

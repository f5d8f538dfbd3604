/*
 * A replacement that is also the payload's load and unload hook. Xen calls
 * the hooks through .livepatch.hooks.* while the payload is loaded, and the
 * load hook runs before the patch is applied, when the original is still
 * the old code: the hook tables must keep the payload's apply_fix. The
 * pointer install_fix stores in the hypervisor must move to the original.
 */
#include "fixture.h"

extern void (*hv_hook)(void);

noinline void apply_fix(void)
{
    printk("apply_fix\n");
}

noinline void install_fix(void)
{
    hv_hook = apply_fix;
}

LIVEPATCH_LOAD_HOOK(apply_fix);
LIVEPATCH_UNLOAD_HOOK(apply_fix);

LIVEPATCH_FUNC(lp_apply_fix, "apply_fix", apply_fix, 0);

/*
 * Shaped like Xen's in-tree test payload xen_action_hooks_nofunc: action
 * hooks (pre-apply, apply, revert, post-revert) and no .livepatch.funcs at
 * all. It replaces no function, so a rewrite has nothing to do: the payload
 * must come out byte-identical.
 */
#include "fixture.h"

static unsigned int applied;

static int pre_apply_hook(struct payload *p)
{
    printk("%s: pre-apply %p\n", __func__, p);
    return 0;
}

static int apply_hook(struct payload *p)
{
    applied++;
    printk("%s: applied %u times\n", __func__, applied);
    return 0;
}

static int revert_hook(struct payload *p)
{
    applied--;
    printk("%s: reverted\n", __func__);
    return 0;
}

static void post_revert_hook(struct payload *p)
{
    printk("%s: %u applied\n", __func__, applied);
}

LIVEPATCH_ACTION_HOOK(preapply, action_fn, pre_apply_hook);
LIVEPATCH_ACTION_HOOK(apply, action_fn, apply_hook);
LIVEPATCH_ACTION_HOOK(revert, action_fn, revert_hook);
LIVEPATCH_ACTION_HOOK(postrevert, post_fn, post_revert_hook);

/*
 * old_addr is set by a relocation against the undefined original (as Xen's
 * in-tree tests do with `.old_addr = xen_extra_version`). That undefined
 * symbol is reused as the alias; no new symbol is needed.
 */
#include "fixture.h"

extern void target_fn(int);

noinline void target_fn_v2(int x)
{
    printk("target_fn v2 %d\n", x);
}

void (*const v2_table[])(int) = { target_fn_v2 };

LIVEPATCH_FUNC(lp_target, "target_fn", target_fn_v2, target_fn);

/*
 * The replacement has a different name from the original (as Xen's in-tree
 * xen_hello_world replaces xen_extra_version): the alias is named after the
 * `name` string, never after the replacement symbol.
 */
#include "fixture.h"

noinline void fresh_impl(int x)
{
    printk("fresh_impl %d\n", x);
}

noinline void install_fresh(void)
{
    hv_callback = fresh_impl;
}

LIVEPATCH_FUNC(lp_fresh, "old_impl", fresh_impl, 0);

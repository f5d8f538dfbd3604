/*
 * A function that exists only in the payload (replaces nothing) and whose
 * address is stored: the rewriter cannot help it and leaves it alone (the
 * `check` command flags it instead).
 */
#include "fixture.h"

noinline void brand_new(int x)
{
    printk("brand new %d\n", x);
}

void (*const new_table[])(int) = { brand_new };

noinline void install_new(void)
{
    hv_callback = brand_new;
}

noinline void patched(int x)
{
    brand_new(x);
}

LIVEPATCH_FUNC(lp_patched, "patched", patched, 0);

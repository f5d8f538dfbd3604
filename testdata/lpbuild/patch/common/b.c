/*
 * What create-diff-object keeps of the patched common/b.c: the changed global
 * gfoo() and its changed caller b_poll(); helper() did not change and stays
 * an undefined STB_LOCAL `common/b.c#helper`. A load hook shows that
 * strip_metadata_symbols' `livepatch_load_data_*` symbol goes away.
 */
#include "lpbuild.h"

extern void helper(int x); /* unchanged static of common/b.c (see a.c) */

noinline void gfoo(int x)
{
    printk("patched gfoo %d\n", x);
}

noinline void b_poll(int x)
{
    helper(x);
    gfoo(x);
    hv_poll(gfoo, x + 1);
}

static void b_load(void)
{
    printk("b loaded\n");
}
/* Xen's LIVEPATCH_LOAD_HOOK(): a weak pointer named livepatch_load_data_<fn>. */
void (*const __attribute__((__weak__, __section__(".livepatch.hooks.load"), __used__))
     livepatch_load_data_b_load)(void) = b_load;

LP_FUNC(gfoo, "gfoo");
LP_FUNC(b_poll, "b_poll");

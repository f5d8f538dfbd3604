/*
 * Replaces the global do_work(). The payload stores the replacement's address
 * in a data table, takes it in code (stored into the hypervisor), and calls
 * it: all four references must be retargeted to the original.
 */
#include "fixture.h"

extern int counter;

noinline void do_work(int x)
{
    counter += x * 2;
    printk("new do_work %d\n", x);
}

/* A stored data pointer (R_X86_64_64 / R_AARCH64_ABS64 / R_ARM_ABS32). */
void (*const work_table[])(int) = { do_work };

/* Address taken in code and stored in the hypervisor (lea / adrp+add / movw+movt). */
noinline void install(void)
{
    hv_callback = do_work;
}

/* Direct calls (call / bl), the second one a tail call. */
noinline void caller(int y)
{
    do_work(y);
    do_work(y + 1);
}

LIVEPATCH_FUNC(lp_do_work, "do_work", do_work, 0);

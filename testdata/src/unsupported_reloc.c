/*
 * Built -fno-pic -mcmodel=kernel on x86-64, as Xen payloads must *not* be:
 * the absolute address load is R_X86_64_32S, which Xen's loader refuses
 * ("Unhandled relocation 11"). The rewriter refuses it too, naming the place.
 */
#include "fixture.h"

noinline void victim(int x)
{
    printk("victim %d\n", x);
}

noinline void install_victim(void)
{
    hv_callback = victim;
}

LIVEPATCH_FUNC(lp_victim, "victim", victim, 0);

/*
 * e2e scenario "replaced global": replace Xen's GLOBAL keyhandler dump_runq
 * (common/sched/cpupool.c, normally on debug key 'r').
 *
 * The replacement is named dump_runq exactly like the original, the way a
 * payload built from a patched source file is.  So the load hook's
 * register_keyhandler('Z', dump_runq, ...) relocation binds to the payload's
 * own copy: after REVERT + UNLOAD the keyhandler table points into freed
 * payload text and pressing 'Z' makes Xen jump there.  lp-rewrite retargets
 * that reference to Xen's original dump_runq (resolved by name at load), so
 * with the rewritten payload 'Z' runs the original after UNLOAD.
 */
#include "lp_e2e.h"

#define KEY 'Z'

void dump_runq(unsigned char key)
{
    printk("lp-e2e: NEW dump_runq (key '%c') running from payload\n", key);
}

static void lp_e2e_global_load_hook(void)
{
    register_keyhandler(KEY, dump_runq,
                        LP_E2E_XEN_STRING("lp-e2e: dump_runq via payload hook"), 0);
    printk("lp-e2e: global load hook registered key '%c'\n", KEY);
}

/* LIVEPATCH_LOAD_HOOK(): an array of void (*)(void), run at APPLY. */
static void (*const lp_e2e_global_load_hooks[])(void)
    __section(".livepatch.hooks.load") = { lp_e2e_global_load_hook };

LP_E2E_FUNC(lp_e2e_global_func, "dump_runq", dump_runq);

/*
 * e2e payload "cumulative successor" of replaced_global: it replaces the same
 * GLOBAL dump_runq with another marker, as a cumulative patch built later
 * from the same tree does, and registers nothing.  Built twice
 * (scripts/e2e/build-payloads.sh): cumulative_replace depends on Xen itself
 * and is applied with `xen-livepatch replace` (xapi's flow, which then unloads
 * the superseded replaced_global); cumulative_stacked depends on
 * replaced_global's build-id and is applied on top of it.
 *
 * Once replaced_global is unloaded, key 'Z' (registered by replaced_global's
 * load hook) must still work: with the raw replaced_global it points into the
 * freed payload; rewritten, it points at Xen's dump_runq, whose entry jumps
 * to this payload's copy while it is applied.
 */
#include "lp_e2e.h"

void dump_runq(unsigned char key)
{
    printk("lp-e2e: NEW2 dump_runq (key '%c') running from the cumulative payload\n", key);
}

LP_E2E_FUNC(lp_e2e_cumulative_func, "dump_runq", dump_runq);

/*
 * `lp-rewrite check`, rule LP002: addresses of payload-only functions (they
 * replace nothing) that can outlive the payload.
 *
 * - fresh_cb: a load hook hands its address to the hypervisor;
 * - reviewed_cb: stored in a data table, but listed in the payload's own
 *   allow-list section (.lp_rewrite.allow), so the finding is suppressed;
 * - called_only: only ever called, which is fine;
 * - lp_load itself is a payload-only function too, but the hook table that
 *   points at it is what hooks are for.
 */
#include "fixture.h"

/* A reviewed exception, in the payload itself (not loaded: no "a" flag). */
#define LP_REWRITE_ALLOW(entry) \
    asm(".pushsection .lp_rewrite.allow, \"\", %progbits\n\t.asciz \"" entry "\"\n\t.popsection")

noinline void fresh_cb(int x)
{
    printk("fresh %d\n", x);
}

noinline void reviewed_cb(int x)
{
    printk("reviewed %d\n", x);
}

noinline void called_only(int x)
{
    printk("called %d\n", x);
}

static void lp_load(void)
{
    register_callback(fresh_cb);
}
LIVEPATCH_LOAD_HOOK(lp_load);

void (*const reviewed_table[])(int) = { reviewed_cb };
LP_REWRITE_ALLOW("reviewed_cb stays registered only while the payload is applied (revert hook unregisters it)");

noinline void patched(int x)
{
    called_only(x);
}

LIVEPATCH_FUNC(lp_patched, "patched", patched, 0);

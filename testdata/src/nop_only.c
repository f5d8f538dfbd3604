/*
 * Only NOP entries (new_addr = 0: Xen overwrites old_size bytes at the
 * original with NOPs): the payload replaces no function, so a rewrite has
 * nothing to do and the payload must come out byte-identical. A load hook
 * prints.
 */
#include "fixture.h"

#define NOP_ENTRY(ident, orig)                                               \
    static const char ident##_name[] = orig;                                 \
    struct livepatch_func __funcs_entry ident = {                            \
        .name = ident##_name,                                                \
        .new_addr = 0,                                                       \
        .old_addr = 0,                                                       \
        .new_size = 8,                                                       \
        .old_size = 8,                                                       \
        .version = LIVEPATCH_PAYLOAD_VERSION,                                \
    }

NOP_ENTRY(lp_nop_debug, "legacy_debug_hook");
NOP_ENTRY(lp_nop_trace, "common/trace.c#trace_probe");

static void nop_loaded(void)
{
    printk("NOPs in place\n");
}
LIVEPATCH_LOAD_HOOK(nop_loaded);

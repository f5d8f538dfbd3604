/*
 * A NOP entry (new_addr = 0: Xen overwrites old_size bytes at old_addr with
 * NOPs) next to a real replacement. The NOP entry replaces no function.
 */
#include "fixture.h"

noinline void tick(int x)
{
    printk("new tick %d\n", x);
}

noinline void install_tick(void)
{
    hv_callback = tick;
}

static const char nop_name[] = "legacy_debug_hook";
struct livepatch_func __funcs_entry lp_nop = {
    .name = nop_name,
    .new_addr = 0,
    .old_addr = 0,
    .new_size = 5,
    .old_size = 5,
    .version = LIVEPATCH_PAYLOAD_VERSION,
};

LIVEPATCH_FUNC(lp_tick, "tick", tick, 0);

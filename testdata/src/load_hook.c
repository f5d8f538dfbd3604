/*
 * The bug from the xen-devel thread: a load hook registers the replaced
 * function as a callback. Unrewritten, the hypervisor keeps a pointer into
 * the payload, which faults once the payload is reverted and unloaded.
 */
#include "fixture.h"

noinline void on_event(int x)
{
    printk("new on_event %d\n", x);
}

static void lp_load(void)
{
    register_callback(on_event);
}
LIVEPATCH_LOAD_HOOK(lp_load);

LIVEPATCH_FUNC(lp_on_event, "on_event", on_event, 0);

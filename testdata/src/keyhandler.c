/*
 * The bundled example: a payload that replaces Xen's debug-key handler
 * dump_runq() and whose load hook registers it for key 'Z'. Without the
 * rewrite the hypervisor's keyhandler table points into the payload after
 * it is unloaded, and pressing 'Z' faults.
 */
#include "fixture.h"

typedef void keyhandler_fn_t(unsigned char key);
extern void register_keyhandler(unsigned char key, keyhandler_fn_t *fn, const char *desc, _Bool diagnostic);

noinline void dump_runq(unsigned char key)
{
    printk("'%c' pressed -> dumping run queues (patched)\n", key);
}

static void lp_load(void)
{
    register_keyhandler('Z', dump_runq, "dump run queues (patched)", 1);
}
LIVEPATCH_LOAD_HOOK(lp_load);

LIVEPATCH_FUNC(lp_dump_runq, "dump_runq", dump_runq, 0);

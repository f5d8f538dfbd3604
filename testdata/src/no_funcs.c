/* Hooks only: a payload with no .livepatch.funcs replaces nothing. */
#include "fixture.h"

static void only_hook(void)
{
    printk("hook only\n");
}
LIVEPATCH_LOAD_HOOK(only_hook);

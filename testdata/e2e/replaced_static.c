/*
 * e2e scenario "replaced static": replace the STATIC keyhandler show_handlers
 * of common/keyhandler.c (normally debug key 'h'; it only prints the key
 * table).  Xen's runtime symbol table names it
 * "common/keyhandler.c#show_handlers", which is the .livepatch.funcs name.
 *
 * The payload's copy is a static function of the same name, so the load
 * hook's reference to it is a relocation against the section symbol
 * .text.show_handlers (x86-64 and arm64 GCC/gas do that for local
 * functions): the rewriter must recognise a section symbol + addend as the
 * replacement's entry point.
 */
#include "lp_e2e.h"

#define KEY 'Y'

static void show_handlers(unsigned char key)
{
    printk("lp-e2e: NEW show_handlers (key '%c') running from payload\n", key);
}

static void lp_e2e_static_load_hook(void)
{
    register_keyhandler(KEY, show_handlers,
                        LP_E2E_XEN_STRING("lp-e2e: show_handlers via payload hook"), 0);
    printk("lp-e2e: static load hook registered key '%c'\n", KEY);
}

static void (*const lp_e2e_static_load_hooks[])(void)
    __section(".livepatch.hooks.load") = { lp_e2e_static_load_hook };

LP_E2E_FUNC(lp_e2e_static_func, "common/keyhandler.c#show_handlers", show_handlers);

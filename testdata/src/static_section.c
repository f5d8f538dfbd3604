/*
 * Replaces a static function of common/static_section.c: Xen's symbol table
 * names it "common/static_section.c#handler". On x86-64 and AArch64 the
 * assembler references static functions through their section symbol
 * (.text.handler + A), so the entry test must work on section symbols.
 */
#include "fixture.h"

static noinline void handler(int x)
{
    printk("new handler %d\n", x);
}

static void (*const handlers[])(int) = { handler };

noinline void install_handler(void)
{
    register_callback(handler);
}

noinline void *handler_table(void)
{
    return (void *)handlers;
}

LIVEPATCH_FUNC(lp_handler, "common/static_section.c#handler", handler, 0);

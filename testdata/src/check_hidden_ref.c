/*
 * `lp-rewrite check`, rule LP008: a reference to a replaced function's entry
 * with no relocation. Built without -ffunction-sections, handler() and
 * install_handler() share .text, so the assembler resolves &handler itself
 * (x86: lea handler(%rip); AArch64 -mcmodel=tiny: adr) and no relocation is
 * left for a rewrite to retarget. The Arm build (check_hidden_ref_arm.S)
 * does the same with `adr`.
 */
#include "fixture.h"

static noinline void handler(int x)
{
    printk("new handler %d\n", x);
}

noinline void install_handler(void)
{
    register_callback(handler);
}

LIVEPATCH_FUNC(lp_handler, "common/check_hidden_ref.c#handler", handler, 0);

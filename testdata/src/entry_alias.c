/*
 * More than one defined symbol at a replacement's entry. tick has default
 * visibility and the payload is built -fno-semantic-interposition, so on
 * x86-64 and AArch64 (-fpic) GCC adds tick.localalias and calls through it
 * (GAS then writes the call against the .text.tick section symbol);
 * tick_alias is a second name for the same code on every architecture.
 * Every reference to the entry, through any of them, must move, and every
 * one of those symbols must be renamed.
 */
#include "fixture.h"

__attribute__((__visibility__("default"))) noinline void tick(int x)
{
    printk("tick %d\n", x);
}

extern void tick_alias(int) __attribute__((__alias__("tick")));

void (*const tick_table[2])(int) = { tick, tick_alias };

noinline void run_ticks(void)
{
    tick(1);
    tick_alias(2);
    register_callback(tick_alias);
}

LIVEPATCH_FUNC(lp_tick, "tick", tick, 0);

/*
 * The replacement is not at the start of its section: built without
 * -ffunction-sections, second_fn sits at offset k > 0 in .text and static
 * references to it are `.text + k` (RELA). Retargeting must turn the addend
 * into A - k relative to the alias.
 */
#include "fixture.h"

static noinline int first_fn(int x)
{
    printk("first %d\n", x);
    return x + 1;
}

static noinline int second_fn(int x)
{
    printk("second %d\n", x);
    return x * 7;
}

int (*const offset_table[])(int) = { first_fn, second_fn };

/*
 * In its own section: a caller in .text itself would reach second_fn with a
 * PC-relative operand the assembler resolves, leaving no relocation at all.
 */
__attribute__((__section__(".text.install_second"))) noinline void install_second(void)
{
    register_callback((void (*)(int))second_fn);
}

LIVEPATCH_FUNC(lp_second, "common/nonzero_offset.c#second_fn", second_fn, 0);

/*
 * Compiled twice (VARIANT 1 and 2) into two objects whose FILE symbol is the
 * same common/dup.c, as a multiply-compiled Xen source is: the static twin()
 * then exists twice under one FILE scope, which no name lookup can resolve.
 */
#include "lpbuild.h"

#define PASTE(a, b) a##b
#define USER(v) PASTE(dup_user_, v)

static cf_check noinline void twin(int x)
{
    printk("twin %d\n", x * VARIANT);
}

noinline void USER(VARIANT)(void)
{
    register_callback(twin);
}

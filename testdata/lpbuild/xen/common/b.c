/* The miniature hypervisor's common/b.c: a global function and its caller. */
#include "lpbuild.h"

static noinline void helper(int x)
{
    printk("helper %d\n", x);
}

noinline void gfoo(int x)
{
    printk("gfoo %d\n", x);
}

noinline void b_poll(int x)
{
    helper(x);
    gfoo(x);
}

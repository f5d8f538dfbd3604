/* The miniature hypervisor's common/a.c: two statics and a global user. */
#include "lpbuild.h"

static int a_count;

static noinline void foo(int x)
{
    a_count += x;
    printk("foo %d\n", x);
}

static noinline void bar(int x)
{
    a_count -= x;
    printk("bar %d\n", x);
}

noinline void a_init(void)
{
    register_callback(foo);
    register_callback(bar);
}

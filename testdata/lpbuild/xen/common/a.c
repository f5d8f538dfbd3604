/*
 * The miniature hypervisor's common/a.c: two statics and a global user. Both
 * statics are registered as callbacks, so they are cf_check (ENDBR64 on x86);
 * common/b.c's gfoo is only ever called directly, and has none.
 */
#include "lpbuild.h"

static int a_count;

static cf_check noinline void foo(int x)
{
    a_count += x;
    printk("foo %d\n", x);
}

static cf_check noinline void bar(int x)
{
    a_count -= x;
    printk("bar %d\n", x);
}

noinline void a_init(void)
{
    register_callback(foo);
    register_callback(bar);
}

/*
 * What create-diff-object keeps of the patched common/a.c: the changed
 * functions foo() (a static) and a_init(), a new table, and references to
 * what did not change. bar() and a_count stay in the hypervisor: they are
 * only declared here, and scripts/lpbuild_mini.py turns the undefined
 * symbols into the undefined STB_LOCAL `common/a.c#bar` /
 * `common/a.c#a_count` that create-diff-object leaves for them.
 *
 * Every reference to foo() and to gfoo() (replaced in common/b.c, bound to
 * the payload's copy by `ld -r`) outside .livepatch.funcs is a stored or
 * taken address that must reach the original after the rewrite.
 */
#include "lpbuild.h"

/*
 * Unchanged statics of common/a.c. Declared extern (hidden, like everything
 * here) so that GCC addresses them PC-relative as it did when they were
 * defined; scripts/lpbuild_mini.py gives the undefined symbols back their
 * local binding and Xen name, as create-diff-object does.
 */
extern void bar(int x);
extern int a_count;
extern void gfoo(int x); /* replaced by common/b.c's payload object */

static cf_check noinline __attribute__((__used__)) void foo(int x)
{
    a_count += 2 * x;
    printk("patched foo %d\n", x);
    bar(x);
}

/* New in the patch: a table of handlers, one of them the replaced foo. */
static void (*const a_handlers[])(int) = { foo, bar };

noinline void a_init(void)
{
    register_callback(foo);
    register_callback(bar);
    hv_callback = gfoo;
    hv_table = (void *)a_handlers;
}

LP_FUNC(foo, "common/a.c#foo");
LP_FUNC(a_init, "a_init");

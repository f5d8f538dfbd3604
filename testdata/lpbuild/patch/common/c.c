/*
 * A file the patch adds: livepatch-build copies such an object into the
 * payload as it is (no create-diff-object, no .livepatch.funcs). Its
 * references to gfoo() bind to common/b.c's replacement in `ld -r`.
 */
#include "lpbuild.h"

extern void gfoo(int x);

void (*const c_handlers[])(int) = { gfoo };

noinline void c_run(int x)
{
    gfoo(x);
    printk("c_run %d\n", x);
}

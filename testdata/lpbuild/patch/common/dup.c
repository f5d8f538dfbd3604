/*
 * A patch to twin() of the multiply compiled common/dup.c: its name
 * `common/dup.c#twin` stands for two functions in xen-syms, so no absolute
 * address can be chosen for it (livepatch-build-tools' lookup fails the same
 * way).
 */
#include "lpbuild.h"

static noinline __attribute__((__used__)) void twin(int x)
{
    printk("patched twin %d\n", x);
}

noinline void dup_keep(void)
{
    register_callback(twin);
}

LP_FUNC(twin, "common/dup.c#twin");

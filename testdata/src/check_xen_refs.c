/*
 * `lp-rewrite check --xen-syms testdata/check/<arch>/xen-syms`, rules LP004-LP007:
 * what only the hypervisor's symbol table and image can tell.
 *
 * - no_such_fn is not in the hypervisor: the load fails (LP004), and so does
 *   resolving the original "common/kernel.c#not_there" (LP004);
 * - "common/dup.c#twice" names two functions there (LP005);
 * - tiny is 3 bytes on x86, tiny_endbr 7 with ENDBR64: the jump does not fit
 *   (LP006); and do_work's entry says old_size 2, which Xen refuses on every
 *   architecture;
 * - x86 with IBT: plain_fn (replaced, so its reference is retargeted to the
 *   original) has no ENDBR64 and sealed_fn's is clobbered at boot, so an
 *   indirect call through either faults (LP007); ibt_fn is fine.
 */
#include "fixture.h"

extern void sealed_fn(int);
extern void ibt_fn(int);
extern void no_such_fn(int);

noinline void plain_fn(int x)
{
    printk("new plain_fn %d\n", x);
}

noinline int tiny(void)
{
    return 2;
}

noinline int tiny_endbr(void)
{
    return 3;
}

noinline int twice_v2(int x)
{
    return x * 3;
}

noinline void not_there_v2(void)
{
    printk("not there\n");
}

noinline void do_work_v2(int x)
{
    printk("do_work v2 %d\n", x);
}

noinline void install_all(void)
{
    register_callback(plain_fn);
    register_callback(sealed_fn);
    register_callback(ibt_fn);
    no_such_fn(1);
}

LIVEPATCH_FUNC(lp_plain_fn, "plain_fn", plain_fn, 0);
LIVEPATCH_FUNC(lp_tiny, "tiny", tiny, 0);
LIVEPATCH_FUNC(lp_tiny_endbr, "tiny_endbr", tiny_endbr, 0);
LIVEPATCH_FUNC(lp_twice, "common/dup.c#twice", twice_v2, 0);
LIVEPATCH_FUNC(lp_not_there, "common/kernel.c#not_there", not_there_v2, 0);

/* An entry whose old_size is smaller than any trampoline. */
static const char lp_do_work_name[] = "do_work";
struct livepatch_func __funcs_entry lp_do_work = {
    .name = lp_do_work_name,
    .new_addr = (void *)do_work_v2,
    .old_size = 2,
    .version = LIVEPATCH_PAYLOAD_VERSION,
};

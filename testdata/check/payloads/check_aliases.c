/*
 * `lp-rewrite check --xen-syms testdata/check/<arch>/xen-syms` on a payload
 * *after* `lp-rewrite rewrite`: what the hypervisor makes of the aliases the
 * rewrite adds (undefined symbols named like the originals).
 *
 * - twice_v2 replaces "common/dup.c#twice", which names two functions in the
 *   hypervisor: the alias is ambiguous (LP005 through the undefined symbol);
 * - gone_v2 replaces "common/kernel.c#gone", which the hypervisor does not
 *   have: the alias does not resolve (LP004 through the undefined symbol);
 * - x86 with IBT: sealed_data_fn is referenced from .init.data.cf_clobber (a
 *   writable cf_clobber table), so its ENDBR64 is gone after boot (LP007).
 *
 * install() stores both replacements' addresses, so that the rewrite
 * retargets them to the aliases.
 */
#include "fixture.h"

extern void sealed_data_fn(int);

noinline void twice_v2(int x)
{
    printk("twice v2 %d\n", x);
}

noinline void gone_v2(int x)
{
    printk("gone v2 %d\n", x);
}

noinline void install(void)
{
    register_callback(twice_v2);
    register_callback(gone_v2);
    register_callback(sealed_data_fn);
}

LIVEPATCH_FUNC(lp_twice, "common/dup.c#twice", twice_v2, 0);
LIVEPATCH_FUNC(lp_gone, "common/kernel.c#gone", gone_v2, 0);

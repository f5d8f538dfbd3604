/*
 * `lp-rewrite check --xen-syms testdata/check/<arch>/xen-syms`, rule LP018:
 * hypervisor code and data that Xen frees at the end of boot (.init.text,
 * .init.data), as register_keyhandler() is on Xen 4.20.
 *
 * - uses_init_code calls init_only_fn (in .init.text): the call jumps into
 *   freed memory;
 * - reads_init_data reads init_only_data (in .init.data);
 * - saved_setup keeps a pointer to init_setup_fn;
 * - two entries patch init functions: init_only_fn by its name string
 *   (old_addr 0), init_setup_fn through an old_addr symbol;
 * - uses_text_code calls printk and register_keyhandler, which stay in .text:
 *   nothing to say about them.
 */
#include "fixture.h"

typedef void keyhandler_fn_t(unsigned char key);
extern void register_keyhandler(unsigned char key, keyhandler_fn_t *fn, const char *desc, _Bool diag);
extern void dump_runq(unsigned char key);
extern void init_only_fn(int);
extern void init_setup_fn(int);
extern int init_only_data;

void (*saved_setup)(int) = init_setup_fn;

noinline void uses_init_code(void)
{
    init_only_fn(1);
    init_only_fn(2);
}

noinline int reads_init_data(void)
{
    return init_only_data + 1;
}

noinline void uses_text_code(void)
{
    printk("text %d\n", 1);
    register_keyhandler('Z', dump_runq, "runq", 1);
}

noinline void init_only_fn_v2(int x)
{
    printk("init_only_fn v2 %d\n", x);
}

noinline void init_setup_fn_v2(int x)
{
    printk("init_setup_fn v2 %d\n", x);
}

LIVEPATCH_FUNC(lp_init_only, "init_only_fn", init_only_fn_v2, 0);
LIVEPATCH_FUNC(lp_init_setup, "init_setup_fn", init_setup_fn_v2, init_setup_fn);

/*
 * A stand-in for a hypervisor image, for `lp-rewrite check --xen-syms`.
 *
 * It is linked the way xen-syms is (see scripts/build_check_xen.py): FILE
 * symbols are paths relative to xen/ (CONFIG_ENFORCE_UNIQUE_SYMBOLS), code
 * is built with -fcf-protection=branch -mmanual-endbr on x86 (CONFIG_XEN_IBT:
 * only `cf_check` functions start with ENDBR64), and the linker script puts
 * .init.{ro,}data.cf_clobber between __initdata_cf_clobber_start and
 * __initdata_cf_clobber_end, whose pointers seal_endbr64() walks at boot,
 * and __init code and __initdata data in .init.text and .init.data, which
 * Xen frees at the end of boot.
 *
 * Each function exists for one question the checker asks.
 */
/* Xen's compiler.h: extern declarations are hidden too (no GOT). */
#pragma GCC visibility push(hidden)

#if defined(__x86_64__)
#define cf_check __attribute__((__cf_check__))
#else
#define cf_check
#endif
#define noinline __attribute__((__noinline__, __noclone__))
#define __initconst_cf_clobber __attribute__((__section__(".init.rodata.cf_clobber"), __used__))
#define __initdata_cf_clobber __attribute__((__section__(".init.data.cf_clobber"), __used__))
#define __used __attribute__((__used__))
#define __init __attribute__((__section__(".init.text")))
#define __initdata __attribute__((__section__(".init.data")))

int counter;
void (*hv_callback)(int);
volatile int sink;

noinline void printk(const char *fmt, ...)
{
    sink = fmt[0];
}

noinline void register_callback(void (*fn)(int))
{
    hv_callback = fn;
}

typedef void keyhandler_fn_t(unsigned char key);
noinline void register_keyhandler(unsigned char key, keyhandler_fn_t *fn, const char *desc, _Bool diag)
{
    sink = key + diag + desc[0];
    (void)fn;
}

/* Addresses of these are taken in the hypervisor itself: cf_check (ENDBR64). */
cf_check noinline void do_work(int x)
{
    counter += x * 2;
    printk("do_work %d\n", x);
}

cf_check noinline void dump_runq(unsigned char key)
{
    printk("dump_runq %c\n", key);
}

cf_check noinline void on_event(int x)
{
    printk("on_event %d\n", x);
}

/* Never address-taken in the hypervisor: no ENDBR64 under -mmanual-endbr. */
noinline void plain_fn(int x)
{
    counter += x;
    printk("plain_fn %d\n", x);
}

/* Address-taken, and kept a legal indirect-branch target after boot. */
cf_check noinline void ibt_fn(int x)
{
    counter -= x;
    printk("ibt_fn %d\n", x);
}

/* Address-taken only from a cf_clobber table: seal_endbr64() clobbers its ENDBR64. */
cf_check noinline void sealed_fn(int x)
{
    counter ^= x;
    printk("sealed_fn %d\n", x);
}

/* The same through a writable table (Xen's __initdata_cf_clobber, .init.data.cf_clobber). */
cf_check noinline void sealed_data_fn(int x)
{
    counter |= x;
    printk("sealed_data_fn %d\n", x);
}

/* Shorter than the 5-byte jump (x86: xor %eax,%eax; ret). */
noinline int tiny(void)
{
    return 0;
}

/* Long enough for the jump, not for the jump after ENDBR64 (4 + 5 bytes). */
cf_check noinline int tiny_endbr(void)
{
    return 0;
}

/* File-scoped: Xen's symbol table calls it common/kernel.c#helper. */
static noinline void helper(int x)
{
    printk("helper %d\n", x);
}

struct boot_ops {
    void (*hook)(int);
    void (*other)(int);
};

/* Like Xen's __initconst_cf_clobber ops tables: sealed_fn's ENDBR64 goes at boot. */
static const struct boot_ops __initconst_cf_clobber boot_ops = { .hook = sealed_fn };

static struct boot_ops __initdata_cf_clobber boot_data_ops = { .hook = sealed_data_fn };

/* Ordinary data: ibt_fn and do_work stay legal targets. */
void (*const __used live_ops[])(int) = { ibt_fn, do_work, on_event };

/* Boot-time only, like register_keyhandler() since Xen 4.20: freed after boot. */
noinline __init void init_only_fn(int x)
{
    counter += x;
    printk("init_only_fn %d\n", x);
}

/* Another: a payload patches it, and keeps a pointer to it. */
noinline __init void init_setup_fn(int x)
{
    counter -= x;
    printk("init_setup_fn %d\n", x);
}

/* Boot-time data (__initdata): freed with it. */
int __initdata init_only_data = 42;

extern void dup_entry1(void);
extern void dup_entry2(void);

void start(void)
{
    boot_ops.hook(1);
    boot_data_ops.hook(5);
    helper(2);
    plain_fn(3);
    sink = tiny() + tiny_endbr();
    register_keyhandler('Z', dump_runq, "runq", 1);
    init_only_fn(init_only_data);
    init_setup_fn(4);
    dup_entry1();
    dup_entry2();
    for ( ;; )
        ;
}

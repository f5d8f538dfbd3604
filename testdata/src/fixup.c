/*
 * An exception-table fixup: .fixup code jumps back into the body of the
 * replaced function (Xen's get_unsafe()/put_unsafe() pattern). The jump-back
 * and the .ex_table words point inside the body and stay; the stored pointer
 * to the entry moves.
 */
#include "fixture.h"

extern int (*hv_reader)(const int *);

noinline int guarded_read(const int *p)
{
    int v;

    printk("reading %p\n", p);
#if defined(__x86_64__)
    asm volatile ( "1: movl (%1), %0\n"
                   "2:\n"
                   ".pushsection .fixup, \"ax\"\n"
                   "3: movl $-1, %0\n"
                   "   jmp 2b\n"
                   ".popsection\n"
                   ".pushsection .ex_table, \"a\"\n"
                   "   .balign 4\n"
                   "   .long 1b - ., 3b - .\n"
                   ".popsection\n"
                   : "=r" (v) : "r" (p) );
#elif defined(__aarch64__)
    asm volatile ( "1: ldr %w0, [%1]\n"
                   "2:\n"
                   ".pushsection .fixup, \"ax\"\n"
                   "3: mov %w0, #-1\n"
                   "   b 2b\n"
                   ".popsection\n"
                   ".pushsection .ex_table, \"a\"\n"
                   "   .balign 4\n"
                   "   .long 1b - ., 3b - .\n"
                   ".popsection\n"
                   : "=r" (v) : "r" (p) );
#else
    asm volatile ( "1: ldr %0, [%1]\n"
                   "2:\n"
                   ".pushsection .fixup, \"ax\"\n"
                   "3: mvn %0, #0\n"
                   "   b 2b\n"
                   ".popsection\n"
                   ".pushsection .ex_table, \"a\"\n"
                   "   .balign 4\n"
                   "   .long 1b - ., 3b - .\n"
                   ".popsection\n"
                   : "=r" (v) : "r" (p) );
#endif
    return v + 1;
}

noinline void install_reader(void)
{
    hv_reader = guarded_read;
}

LIVEPATCH_FUNC(lp_guarded_read, "guarded_read", guarded_read, 0);

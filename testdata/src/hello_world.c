/*
 * Shaped like Xen's in-tree test payload xen_hello_world: xen_hello_world()
 * replaces xen_extra_version() (a different name), old_addr is a relocation
 * against the undefined original, an alternative sits at the very entry
 * (.altinstructions -> entry + 0), an exception-table fixup jumps back into
 * the body, a BUG frame points into the body, and load/unload hooks print.
 * Its only references to the replacement's entry are in .livepatch.funcs
 * and .altinstructions, so a correct rewriter changes nothing at all.
 */
#include "fixture.h"

extern const char *xen_extra_version(void);
static unsigned long cnt;

#if defined(__x86_64__)
#define ALT_AT_ENTRY                                                         \
    asm volatile ( "661: .byte 0x0f,0x1f,0x84,0x00,0x00,0x00,0x00,0x00\n"   \
                   "662:\n"                                                  \
                   ".pushsection .altinstructions, \"a\"\n"                  \
                   " .long 661b - ., 663f - .\n"                             \
                   " .word 0x1ff\n"                                          \
                   " .byte 662b - 661b, 664f - 663f, 0, 0\n"                 \
                   ".popsection\n"                                           \
                   ".pushsection .altinstr_replacement, \"ax\"\n"            \
                   "663: nop\n"                                              \
                   "664:\n"                                                  \
                   ".popsection\n" )
#define FAULTING_READ(v, p)                                                  \
    asm volatile ( "1: movq (%1), %0\n"                                      \
                   "2:\n"                                                    \
                   ".pushsection .fixup, \"ax\"\n"                           \
                   "3: movq $-14, %0\n"                                      \
                   "   jmp 2b\n"                                             \
                   ".popsection\n"                                           \
                   ".pushsection .ex_table, \"a\"\n"                         \
                   " .balign 4\n"                                            \
                   " .long 1b - ., 3b - .\n"                                 \
                   ".popsection\n"                                           \
                   : "=r" (v) : "r" (p) )
#define BUG_FRAME                                                            \
    asm volatile ( "1: ud2\n"                                                \
                   ".pushsection .bug_frames.2, \"a\"\n"                     \
                   " .balign 4\n"                                            \
                   " .long 1b - ., 0\n"                                      \
                   ".popsection\n" )
#else
#if defined(__aarch64__)
#define NOP_INSN "nop"
#define BRK_INSN "brk #0x1"
#else
#define NOP_INSN "mov r0, r0"
#define BRK_INSN ".word 0xe7f000f2"
#endif
#define ALT_AT_ENTRY                                                         \
    asm volatile ( "661: " NOP_INSN "\n"                                     \
                   "662:\n"                                                  \
                   ".pushsection .altinstructions, \"a\"\n"                  \
                   " .long 661b - ., 663f - .\n"                             \
                   " .short 0x1ff\n"                                         \
                   " .byte 662b - 661b, 664f - 663f\n"                       \
                   ".popsection\n"                                           \
                   ".pushsection .altinstr_replacement, \"ax\"\n"            \
                   "663: " NOP_INSN "\n"                                     \
                   "664:\n"                                                  \
                   ".popsection\n" )
extern const volatile unsigned long *hv_probe_addr;
#define FAULTING_READ(v, p) ((void)(p), (v) = *hv_probe_addr)
#define BUG_FRAME                                                            \
    asm volatile ( "1: " BRK_INSN "\n"                                       \
                   ".pushsection .bug_frames.2, \"a\"\n"                     \
                   " .balign 4\n"                                            \
                   " .long 1b - ., 0, 0, 0\n"                                \
                   ".popsection\n" )
#endif

noinline const char *xen_hello_world(void)
{
    unsigned long tmp = 0;

    ALT_AT_ENTRY;
    FAULTING_READ(tmp, (const void *)0x8000000000000000UL);
    if ( tmp != (unsigned long)-14 )
        BUG_FRAME;
    return "Hello World";
}

static void apply_hook(void)
{
    printk("Hook executing.\n");
}

static void revert_hook(void)
{
    printk("Hook unloaded.\n");
}

static void hi_func(void)
{
    printk("%s: Hi! (called %lu times)\n", __func__, ++cnt);
}

LIVEPATCH_LOAD_HOOK(apply_hook);
LIVEPATCH_LOAD_HOOK(hi_func);
LIVEPATCH_UNLOAD_HOOK(revert_hook);

static const char __attribute__((section(".modinfo"), used)) modinfo[] = "LIVEPATCH_RULEZ";

LIVEPATCH_FUNC(livepatch_xen_hello_world, "xen_extra_version", xen_hello_world, xen_extra_version);

/*
 * `lp-rewrite check`, rule LP003: relocations Xen's loader does not apply,
 * one per architecture, from mistakes a payload build can make.
 *
 * - x86-64 and AArch64: an extern object with default visibility is reached
 *   through the GOT under -fpic (R_X86_64_REX_GOTPCRELX,
 *   R_AARCH64_ADR_GOT_PAGE / LD64_GOT_LO12_NC);
 * - 32-bit Arm: Thumb code (R_ARM_THM_CALL).
 */
#include "fixture.h"

#if defined(__arm__)
__attribute__((__target__("thumb"))) noinline void thumb_caller(int x)
{
    printk("thumb %d\n", x);
}
#else
extern int exported_counter __attribute__((__visibility__("default")));

noinline int read_exported(void)
{
    return exported_counter;
}
#endif

noinline void victim(int x)
{
    printk("new victim %d\n", x);
}

LIVEPATCH_FUNC(lp_victim, "victim", victim, 0);

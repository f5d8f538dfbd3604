/*
 * e2e payload for Xen 4.20 (x86): the cumulative successor of nmi_static (same
 * function, another marker, no hook), like cumulative_global.c for
 * replaced_global.  Built twice: nmi_cumulative_replace depends on Xen and is
 * applied with `xen-livepatch replace`; nmi_cumulative_stacked depends on
 * nmi_static and is applied on top of it.
 */
#include "lp_e2e.h"

struct cpu_user_regs;

static int microcode_nmi_callback(const struct cpu_user_regs *regs, int cpu)
{
    printk("lp-e2e: NEW2 microcode_nmi_callback (NMI on CPU%d) running from the cumulative payload\n", cpu);
    return 1;
}

LP_E2E_FUNC(lp_e2e_nmi2_func, "arch/x86/cpu/microcode/core.c#microcode_nmi_callback", microcode_nmi_callback);

/*
 * e2e payload for Xen 4.20 (x86): the scenario of replaced_static, with the
 * NMI callback as the stored pointer.  Xen 4.20 registers debug keys only at
 * boot (register_keyhandler() is __init, key_table read-only after init), so
 * a payload cannot store a keyhandler any more; set_nmi_callback() is still
 * callable, and debug key 'N' (do_nmi_trigger) raises an NMI on demand.
 *
 * Replaces the static microcode_nmi_callback (arch/x86/cpu/microcode/core.c,
 * only installed while microcode loads), under its own name, so the
 * set_nmi_callback(microcode_nmi_callback) below binds to the payload's copy:
 * after REVERT + UNLOAD, the NMI handler calls into freed payload text.
 * lp-rewrite retargets that reference to Xen's original (resolved by name),
 * which returns 0 outside a microcode load: Xen then reports the NMI as one
 * of unknown reason and carries on.
 *
 * The callback is installed from a tasklet the load hook schedules, not from
 * the hook itself: load hooks run while livepatch has the NMI callback
 * swapped out (arch_livepatch_mask() ... unmask() restores the saved one),
 * and an apply/revert action hook would forbid the cumulative `replace`.
 */
#include "lp_e2e.h"

struct cpu_user_regs;
typedef int nmi_callback_t(const struct cpu_user_regs *regs, int cpu);
nmi_callback_t *set_nmi_callback(nmi_callback_t *callback);
struct tasklet;
void tasklet_init(struct tasklet *t, void (*func)(void *data), void *data);
void tasklet_schedule_on_cpu(struct tasklet *t, unsigned int cpu);

/* The tasklet is used once, right after APPLY, while the payload is loaded. */
LP_REWRITE_ALLOW("lp_e2e_nmi_register one-shot tasklet that runs while the payload is applied");

static int microcode_nmi_callback(const struct cpu_user_regs *regs, int cpu)
{
    printk("lp-e2e: NEW microcode_nmi_callback (NMI on CPU%d) running from payload\n", cpu);
    return 1;
}

static void lp_e2e_nmi_register(void *unused)
{
    set_nmi_callback(microcode_nmi_callback);
    printk("lp-e2e: nmi tasklet registered the NMI callback\n");
}

static void lp_e2e_nmi_load_hook(void)
{
    /* struct tasklet is 48 bytes on x86-64 in 4.20; tasklet_init() sets it all. */
    struct tasklet *t = _xmalloc(128, 64);

    if ( !t )
        return;
    tasklet_init(t, lp_e2e_nmi_register, NULL); /* deliberately leaked, like the strings */
    tasklet_schedule_on_cpu(t, 0);
}

static void (*const lp_e2e_nmi_load_hooks[])(void)
    __section(".livepatch.hooks.load") = { lp_e2e_nmi_load_hook };

LP_E2E_FUNC(lp_e2e_nmi_func, "arch/x86/cpu/microcode/core.c#microcode_nmi_callback", microcode_nmi_callback);

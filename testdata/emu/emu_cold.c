/*
 * Hot/cold splitting (-freorder-blocks-and-partition): the unlikely path of
 * hv_checked() goes to hv_checked.cold in .text.unlikely.hv_checked, which
 * jumps back *into* the new body (a section symbol plus the continuation's
 * offset). That jump must stay on the new code while the payload is applied;
 * the registered pointer to hv_checked's entry must move. 32-bit Arm GCC
 * does not partition, so emu_cold_arm.S spells the same code out.
 */
#include "fixture.h"
#include "emu.h"

extern int hv_weights[8];
extern int hv_acc[8];
extern int hv_bias;
extern void hv_note(int r);

__attribute__((__cold__)) noinline int lp_slow(int x)
{
    return 11 * x;
}

noinline int hv_checked(int x)
{
    int r = 2 * x, i;

    if ( __builtin_expect(x < 0, 0) )
    {
        r = lp_slow(x);
        r += lp_slow(x + 1);
        r += hv_bias;
    }
    /* A continuation too big to duplicate: the cold part jumps back here. */
    for ( i = 0; i < 8; i++ )
        hv_acc[i] += r + hv_weights[i];
    hv_note(r);
    return r + 9000;
}

static void lp_load(void)
{
    register_handler(hv_checked);
}
LIVEPATCH_LOAD_HOOK(lp_load);

LIVEPATCH_FUNC(lp_hv_checked, "hv_checked", hv_checked, 0);

/*
 * Hot/cold splitting (-O2/-O3): GCC moves the unlikely path of
 * check_value() to check_value.cold in .text.unlikely.check_value, which
 * jumps back *into* check_value's body. That jump must stay on the new code;
 * the stored pointer to check_value's entry must move.
 */
#include "fixture.h"

extern int hv_flag;
extern int hv_acc[8];
extern void (*hv_checker)(int);

__attribute__((__cold__)) noinline void report_failure(int x)
{
    printk("failure %d\n", x);
}

noinline int check_value(int x)
{
    int r = x * 2, i;

    if ( __builtin_expect(x < 0, 0) )
    {
        report_failure(x);
        report_failure(x + 1);
        r = hv_flag;
    }
    /* A continuation too big to duplicate: the cold part jumps back here. */
    for ( i = 0; i < 8; i++ )
        hv_acc[i] += r + i;
    printk("checked %d\n", r);
    return r;
}

noinline void install_checker(void)
{
    hv_checker = (void (*)(int))check_value;
}

LIVEPATCH_FUNC(lp_check_value, "check_value", check_value, 0);

/*
 * A switch compiled to a jump table inside a replaced function. The table
 * entries point at case labels in the body (x86-64: PC32 in .rodata;
 * arm32: ABS32 words inline in the code); none is an entry point.
 */
#include "fixture.h"

extern int hv_a(void), hv_b(void), hv_c(void), hv_d(void);
extern volatile int hv_state;

noinline int classify(int x)
{
    switch ( x )
    {
    case 0: return hv_a() + 1;
    case 1: return hv_b() + 2;
    case 2: return hv_c() * 3;
    case 3: hv_state = 4; return hv_d();
    case 4: return hv_a() - hv_b();
    case 5: return hv_c() ^ 6;
    case 6: hv_state = 7; return 7;
    case 7: return hv_d() + hv_state;
    case 8: return hv_a() * hv_state;
    default: return -1;
    }
}

int (*const classifier)(int) = classify;

LIVEPATCH_FUNC(lp_classify, "classify", classify, 0);

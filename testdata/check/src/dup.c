/*
 * Compiled twice under one FILE name (a multiply-built file without a unique
 * name): Xen's symbol table has two "common/dup.c#twice", and a lookup by
 * that name returns either.
 */
/* Xen's compiler.h: extern declarations are hidden too (no GOT). */
#pragma GCC visibility push(hidden)

#define noinline __attribute__((__noinline__, __noclone__))

extern volatile int sink;

static noinline int twice(int x)
{
    return x * VARIANT + sink;
}

void DUP_ENTRY(void)
{
    sink = twice(VARIANT);
}

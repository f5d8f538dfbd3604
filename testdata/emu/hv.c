/*
 * A tiny "hypervisor" for the emulation tests (tests/test_emulation.py).
 *
 * It is linked as a static image at a fixed address, like xen-syms, and its
 * FILE symbol is renamed to common/hv.c the way Xen's build does, so that its
 * symbol table names statics as "common/hv.c#name" (it doubles as --xen-syms).
 *
 * The originals return values that no replacement returns, so a result tells
 * which code ran. Hypervisor data holds function pointers that payloads
 * register (the bug from the xen-devel thread): after the payload is reverted
 * and unloaded, calling through them must still work.
 */
#define noinline __attribute__((__noinline__, __noclone__))
#define used __attribute__((__used__))

typedef int (*handler_fn)(int);

handler_fn hv_handler;      /* one registered callback */
handler_fn hv_slots[4];     /* several */
handler_fn hv_seen;         /* a pointer handed in by a payload, for equality */
int hv_payload_says_equal;  /* a payload's own comparison, stored here */
int hv_weights[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
int hv_acc[8];              /* written by hv_checked()'s replacement */
int hv_bias = 300;
int hv_last_note;

/* The originals a payload replaces. */
noinline int hv_original(int x) { return x + 1000; }
noinline int hv_second(int x) { return 3 * x + 1000; }
static noinline used int hv_local(int x) { return x + 5000; }
noinline int hv_checked(int x)
{
    if ( x < 0 )
        return -7000;
    return x + 7000;
}

/* What payloads call. */
noinline void register_handler(handler_fn fn) { hv_handler = fn; }
noinline void register_slot(int slot, handler_fn fn) { hv_slots[slot & 3] = fn; }
noinline handler_fn hv_original_address(void) { return hv_original; }
noinline void hv_note(int r) { hv_last_note = r; }
noinline void register_table(const handler_fn *table, int n)
{
    int i;

    for ( i = 0; i < n && i < 4; i++ )
        hv_slots[i] = table[i];
}

/* What the tests call. */
noinline int call_handler(int x) { return hv_handler(x); }
noinline int call_slot(int slot, int x) { return hv_slots[slot & 3](x); }
noinline int hv_is_original(void) { return hv_seen == hv_original; }
noinline int call_original(int x) { return hv_original(x); }
noinline int call_local(int x) { return hv_local(x); }
noinline int call_checked(int x) { return hv_checked(x); }
noinline handler_fn hv_local_address(void) { return hv_local; }

/* The image's entry point: never run (the tests call functions directly). */
noinline void _start(void) { for ( ;; ) ; }

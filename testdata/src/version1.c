/*
 * Payload version 1 (Xen 4.7-4.13): struct livepatch_func without the
 * expectation, 64 bytes on 64-bit and 52 on 32-bit.
 */
#include "fixture.h"

struct livepatch_func_v1 {
    const char *name;
    void *new_addr;
    void *old_addr;
    uint32_t new_size;
    uint32_t old_size;
    uint8_t version;
    uint8_t opaque[31];
};
_Static_assert(sizeof(struct livepatch_func_v1) == (sizeof(void *) == 8 ? 64 : 52), "v1 size");

noinline void legacy(int x)
{
    printk("legacy v1 %d\n", x);
}

noinline void install_legacy(void)
{
    hv_callback = legacy;
}

static const char legacy_name[] = "legacy";
struct livepatch_func_v1 __funcs_entry lp_legacy = {
    .name = legacy_name,
    .new_addr = (void *)legacy,
    .old_size = 32,
    .version = 1,
};

/*
 * Common header for lp_rewrite's test payloads.
 *
 * It mirrors what a Xen payload build provides: hidden visibility (Xen
 * compiles with -fvisibility=hidden and this pragma, so x86 code reaches
 * functions with lea/call rel32 rather than through a GOT), the payload ABI
 * struct livepatch_func (payload version 2: 104 bytes on 64-bit, 92 on
 * 32-bit, see xen/include/public/sysctl.h), and the section attributes of
 * xen/include/xen/livepatch_payload.h.
 */
#ifndef LP_FIXTURE_H
#define LP_FIXTURE_H

#pragma GCC visibility push(hidden)

typedef unsigned char uint8_t;
typedef unsigned int uint32_t;

#define LIVEPATCH_PAYLOAD_VERSION 2
#define LIVEPATCH_OPAQUE_SIZE 31

struct livepatch_expectation {
    uint8_t enabled : 1;
    uint8_t len : 5;
    uint8_t rsv : 2;
    uint8_t data[LIVEPATCH_OPAQUE_SIZE];
};

struct livepatch_func {
    const char *name;
    void *new_addr;
    void *old_addr;
    uint32_t new_size;
    uint32_t old_size;
    uint8_t version;
    uint8_t _pad[39];
    struct livepatch_expectation expect;
};

_Static_assert(sizeof(struct livepatch_func) == (sizeof(void *) == 8 ? 104 : 92), "livepatch_func size");

#define __used_section(s) __attribute__((__section__(s), __used__))
/*
 * Entries from separate definitions must pack at sizeof(struct
 * livepatch_func): without an explicit alignment GCC pads 104-byte objects
 * to 32 bytes on x86-64 and the section is no longer an array.
 */
#define __funcs_entry __used_section(".livepatch.funcs") __attribute__((__aligned__(sizeof(void *))))

/*
 * One .livepatch.funcs entry: ORIG is the original's name as Xen's symbol
 * table spells it ("foo" or "path/file.c#foo"), NEWFN the replacement.
 */
#define LIVEPATCH_FUNC(ident, orig, newfn, oldaddr)                          \
    static const char ident##_name[] = orig;                                 \
    struct livepatch_func __funcs_entry ident = {            \
        .name = ident##_name,                                                \
        .new_addr = (void *)(newfn),                                         \
        .old_addr = (void *)(oldaddr),                                       \
        .new_size = 0,                                                       \
        .old_size = 32,                                                      \
        .version = LIVEPATCH_PAYLOAD_VERSION,                                \
    }

typedef void (*hook_fn)(void);
#define LIVEPATCH_LOAD_HOOK(fn) \
    static const hook_fn __used_section(".livepatch.hooks.load") fn##_load_hook_ptr = (fn)
#define LIVEPATCH_UNLOAD_HOOK(fn) \
    static const hook_fn __used_section(".livepatch.hooks.unload") fn##_unload_hook_ptr = (fn)

/*
 * Action hooks (xen/include/xen/livepatch_payload.h): one function pointer
 * per section, called with the payload instead of Xen's default action.
 */
struct payload;
typedef int action_fn(struct payload *);
typedef void post_fn(struct payload *);
#define LIVEPATCH_ACTION_HOOK(kind, type, fn) \
    type *__attribute__((weak, used)) const livepatch_##kind##_data_##fn \
        __attribute__((__section__(".livepatch.hooks." #kind))) = (fn)

/* Hypervisor services a payload calls (resolved by name at load). */
extern void printk(const char *fmt, ...);
extern void register_callback(void (*fn)(int));
extern void (*hv_callback)(int);

#define noinline __attribute__((__noinline__, __noclone__))

#endif

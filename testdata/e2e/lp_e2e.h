/*
 * Shared declarations for the e2e livepatch payloads (Xen 4.17 and 4.20,
 * x86-64, arm64 and arm32).  Payloads are freestanding: no Xen headers, only what they use.
 */
#ifndef LP_E2E_H
#define LP_E2E_H

/*
 * Like Xen's own build: -fpic plus hidden visibility makes every reference a
 * direct PC-relative one (x86: R_X86_64_PC32/PLT32, arm64: ADRP+ADD, CALL26)
 * or an absolute pointer (R_X86_64_64 / R_AARCH64_ABS64) -- no GOT, which
 * Xen's livepatch loader could not handle.
 */
#pragma GCC visibility push(hidden)

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* struct livepatch_func, xen/include/public/sysctl.h at RELEASE-4.17.x (the
 * same in 4.20): LIVEPATCH_PAYLOAD_VERSION 2, 104 bytes on 64-bit, 92 on arm32. */
#define LIVEPATCH_PAYLOAD_VERSION 2
#define LIVEPATCH_OPAQUE_SIZE 31
struct livepatch_expectation {
    uint8_t enabled : 1;
    uint8_t len : 5;
    uint8_t rsv : 2;
    uint8_t data[LIVEPATCH_OPAQUE_SIZE];
};
struct livepatch_func {
    const char *name;       /* Xen symbol-table name of the patched function */
    void *new_addr;
    void *old_addr;         /* 0: Xen looks up .name at load */
    uint32_t new_size;
    uint32_t old_size;
    uint8_t version;
    uint8_t _pad[39];
    struct livepatch_expectation expect;
};
_Static_assert(sizeof(struct livepatch_func) == (sizeof(void *) == 8 ? 104 : 92), "livepatch_func size");

#define __section(s) __attribute__((__section__(s), __used__))

/* Xen 4.17 functions the payloads call, resolved by name at load. */
typedef void keyhandler_fn_t(unsigned char key);
void register_keyhandler(unsigned char key, keyhandler_fn_t *fn,
                         const char *desc, bool diagnostic);
void printk(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void *_xmalloc(unsigned long size, unsigned long align);
size_t strlcpy(char *dest, const char *src, size_t size);

/*
 * register_keyhandler() stores the description POINTER, and the original
 * show_handlers ('h', and the "replaced static" scenario) prints every
 * description.  A string in payload .rodata would dangle after UNLOAD -- a
 * second use-after-free that no rewrite can fix -- so copy it to Xen's heap
 * (deliberately leaked; the test boots are short-lived).
 */
static inline __attribute__((always_inline)) const char *
lp_e2e_xen_string(const char *s, size_t size)
{
    char *d = _xmalloc(size, 1);

    if ( d )
        strlcpy(d, s, size);
    return d;
}
#define LP_E2E_XEN_STRING(lit) lp_e2e_xen_string(lit, sizeof(lit))

/* The build script compiles each payload twice: pass 1 measures the
 * replacement (NEW_SIZE); OLD_SIZE is the original's size in xen-syms. */
#ifndef NEW_SIZE
#define NEW_SIZE 0
#endif
#ifndef OLD_SIZE
#define OLD_SIZE 0
#endif

/* The payload's one .livepatch.funcs entry: Xen looks ORIG up by name (its
 * symbol-table spelling, "file.c#name" for a static) and patches it to jump
 * to NEW.  ID names the entry and its name string. */
#define LP_E2E_FUNC(id, orig, new)                                   \
    static const char id##_name[] = orig;                            \
    static struct livepatch_func id __section(".livepatch.funcs") = { \
        .name     = id##_name,                                       \
        .new_addr = new,                                             \
        .old_addr = 0,                                               \
        .new_size = NEW_SIZE,                                        \
        .old_size = OLD_SIZE,                                        \
        .version  = LIVEPATCH_PAYLOAD_VERSION,                       \
    }

/* A reviewed exception for `lp-rewrite check` (docs/check.md): a
 * non-loaded section Xen never reads. */
#define LP_REWRITE_ALLOW(entry) \
    asm(".pushsection .lp_rewrite.allow, \"\", %progbits\n\t.asciz \"" entry "\"\n\t.popsection")

#endif /* LP_E2E_H */

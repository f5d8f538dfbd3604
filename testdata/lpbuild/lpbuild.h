/*
 * Shared by the miniature hypervisor (xen/) and the miniature patch (patch/)
 * of tests/test_livepatch_build.py: the hypervisor services of fixture.h plus
 * a few globals, cf_check (what the hypervisor calls indirectly), and
 * LP_FUNC, which writes one `struct livepatch_func` the way
 * create-diff-object does (livepatch_create_patches_sections()):
 *
 *   name      R_*_ABS pointer to the name string in .livepatch.strings
 *             (a relocation against that section's symbol plus the string's
 *             offset: .L labels leave no symbol behind);
 *   new_addr  a pointer to the replacement function itself;
 *   old_addr  0 (scripts/lpbuild_mini.py writes xen-syms' address when it
 *             emulates `--resolve`, i.e. livepatch-build --prelink);
 *   new_size, old_size  0 here, filled in by scripts/lpbuild_mini.py from
 *             the symbol's size and from xen-syms, as create-diff-object does;
 *   version   2; everything else zero (104 bytes on 64-bit, 92 on 32-bit).
 *
 * Top-level asm, not a C initialiser, so that the section holds no symbol of
 * its own: create-diff-object's .livepatch.funcs has none either.
 */
#ifndef LPBUILD_H
#define LPBUILD_H

#include "fixture.h"

/* Xen's cf_check: an indirect-branch target under CONFIG_XEN_IBT (-mmanual-endbr). */
#ifdef __CET__
#define cf_check __attribute__((__cf_check__))
#else
#define cf_check
#endif

extern void *hv_table;
extern void hv_poll(void (*fn)(int), int x);

#if __SIZEOF_POINTER__ == 8
#define LP_PTR ".quad"
#define LP_ALIGN "8"
#else
#define LP_PTR ".long"
#define LP_ALIGN "4"
#endif

#define LP_FUNC(fn, name)                                                        \
    __asm__(".pushsection .livepatch.strings, \"a\", %progbits\n"              \
            ".Llp_name_" #fn ": .asciz \"" name "\"\n"                         \
            ".popsection\n"                                                     \
            ".pushsection .livepatch.funcs, \"a\", %progbits\n"                \
            ".balign " LP_ALIGN "\n"                                            \
            LP_PTR " .Llp_name_" #fn ", " #fn ", 0\n"                           \
            ".long 0, 0\n"                                                      \
            ".byte 2\n"                                                         \
            ".zero 71\n"                                                        \
            ".popsection")

#endif

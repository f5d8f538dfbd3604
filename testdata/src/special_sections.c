/*
 * Each exempt section referencing a replaced function's entry, as Xen's
 * metadata does: .altinstructions, .alt_call_sites, .ex_table and
 * .bug_frames.N hold relative words (PC32 / PREL32 / REL32). All of them
 * must keep pointing at the new code. The same word in an ordinary data
 * section (.rodata.rel_words) is a stored reference and must move.
 */
#include "fixture.h"

noinline void patched_fn(int x)
{
    printk("new patched_fn %d\n", x);
}

#define WORD(sec) \
    ".pushsection " sec ", \"a\"\n\t.balign 4\n\t.long patched_fn - .\n\t.popsection\n"

asm(WORD(".altinstructions")
    WORD(".alt_call_sites")
    WORD(".ex_table")
    WORD(".bug_frames.0")
    WORD(".bug_frames.3")
    WORD(".rodata.rel_words"));

LIVEPATCH_FUNC(lp_patched_fn, "patched_fn", patched_fn, 0);

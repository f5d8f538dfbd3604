/*
 * What the emulation payloads see of the test hypervisor (hv.c): the
 * functions they call and the data they write, all resolved by name at load.
 */
#ifndef LP_EMU_H
#define LP_EMU_H

typedef int (*handler_fn)(int);

extern handler_fn hv_seen;
extern int hv_payload_says_equal;

extern void register_handler(handler_fn fn);
extern void register_slot(int slot, handler_fn fn);
extern void register_table(const handler_fn *table, int n);
extern handler_fn hv_original_address(void);

#endif

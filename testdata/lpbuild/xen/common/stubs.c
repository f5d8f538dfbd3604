/* The miniature hypervisor's services (what a payload calls by name). */
#include "lpbuild.h"

void (*hv_callback)(int);
void *hv_table;
static int log_level;

void printk(const char *fmt, ...)
{
    log_level += fmt[0];
}

void register_callback(void (*fn)(int))
{
    hv_callback = fn;
}

void hv_poll(void (*fn)(int), int x)
{
    fn(x);
}

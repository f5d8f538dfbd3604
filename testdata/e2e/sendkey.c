/* dom0 helper: send Xen debug keys (XEN_SYSCTL_debug_keys), like
 * `xl debug-keys` but with libxenctrl only, so no xenstored is needed.
 *
 *   sendkey KEYS [LABEL]
 *
 * With LABEL, "=== lp-e2e-xen: LABEL: begin ===" and "... end ===" are
 * written to Xen's console (CONSOLEIO_write) right before and after the key
 * press.  They pass through Xen's own console in order with what the key
 * handler prints, unlike dom0's hvc output, so the serial log can be cut
 * exactly at each key press. */
#include <stdio.h>
#include <string.h>
#include <xencall.h>
#include <xenctrl.h>
#include <xen/xen.h>

static void xen_console(xencall_handle *xcall, const char *label, const char *what)
{
    char line[256];
    int len = snprintf(line, sizeof(line), "=== lp-e2e-xen: %s: %s ===\n", label, what);
    void *buf;

    if ( len < 0 || len >= (int)sizeof(line) || !(buf = xencall_alloc_buffer(xcall, len)) )
        return;
    memcpy(buf, line, len);
    if ( xencall3(xcall, __HYPERVISOR_console_io, CONSOLEIO_write, len, (uintptr_t)buf) )
        perror("console_io");
    xencall_free_buffer(xcall, buf);
}

int main(int argc, char **argv)
{
    const char *keys = argc > 1 ? argv[1] : "h";
    const char *label = argc > 2 ? argv[2] : NULL;
    xc_interface *xch = xc_interface_open(NULL, NULL, 0);
    xencall_handle *xcall = label ? xencall_open(NULL, 0) : NULL;
    int rc;

    if ( !xch || (label && !xcall) )
    {
        perror("xc_interface_open/xencall_open");
        return 1;
    }
    if ( xcall )
        xen_console(xcall, label, "begin");
    rc = xc_send_debug_keys(xch, keys);
    if ( xcall )
    {
        xen_console(xcall, label, "end");
        xencall_close(xcall);
    }
    printf("sendkey: xc_send_debug_keys(\"%s\") = %d\n", keys, rc);
    xc_interface_close(xch);
    return rc ? 1 : 0;
}

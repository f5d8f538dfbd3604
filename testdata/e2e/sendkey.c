/* dom0 helper: send Xen debug keys (XEN_SYSCTL_debug_keys), like
 * `xl debug-keys` but with libxenctrl only, so no xenstored is needed. */
#include <stdio.h>
#include <xenctrl.h>

int main(int argc, char **argv)
{
    const char *keys = argc > 1 ? argv[1] : "h";
    xc_interface *xch = xc_interface_open(NULL, NULL, 0);
    int rc;

    if ( !xch )
    {
        perror("xc_interface_open");
        return 1;
    }
    rc = xc_send_debug_keys(xch, keys);
    printf("sendkey: xc_send_debug_keys(\"%s\") = %d\n", keys, rc);
    xc_interface_close(xch);
    return rc ? 1 : 0;
}

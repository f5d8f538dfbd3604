#!/bin/sh
# dom0 side of the e2e test, run by /init: the steps of /payload/steps, one
# per line, in order (written by the pytest side, tests/test_e2e.py):
#   upload NAME | apply NAME | replace NAME | revert NAME | unload NAME
#                        xen-livepatch on /payload/NAME.livepatch
#   key K LABEL          press debug key K; sendkey writes "=== lp-e2e-xen:
#                        LABEL: begin/end ===" to Xen's console around it, so
#                        the pytest side finds exactly what the key printed
#   list                 xen-livepatch list
# A payload's load hook registers a keyhandler; pressing that key after the
# payload is unloaded makes Xen jump into freed memory when the stored
# pointer is the payload's copy (raw payloads: Xen panics inside that
# sendkey, so no later marker appears), and runs Xen's original (or the
# function that patches it now) when it was rewritten.
# Each step ends with "=== lp-e2e: rc=N: STEP ===", the last line of the run
# is "=== lp-e2e: all steps done ===".
m() { echo "=== lp-e2e: $* ==="; }
step() {
  "$@"
  rc=$?
  m "rc=$rc: $*"
  return $rc
}
# APPLY, REPLACE and REVERT need every CPU to rendezvous within Xen's default
# 30 ms (xen-livepatch has no timeout option).  Under TCG on a busy host a
# vCPU can miss it: "Timed out on semaphore in IRQ quiesce phase", EBUSY,
# payload state unchanged.  That is the emulator, not the payload: try again.
retry() {
  n=1
  until "$@"; do
    [ $n -ge 5 ] && return 1
    n=$((n + 1))
    m "retry $n/5: $*"
    sleep 1
  done
}

m "xen $(cat /sys/hypervisor/version/major).$(cat /sys/hypervisor/version/minor)$(cat /sys/hypervisor/version/extra)" \
  "build-id $(hexdump -v -e '1/1 "%02x"' /sys/hypervisor/properties/buildid)"
while read -r op arg label; do
  case $op in
    "" | "#"*) ;;
    upload) step xen-livepatch upload "$arg" "/payload/$arg.livepatch" ;;
    apply | replace | revert) step retry xen-livepatch "$op" "$arg" ;;
    unload) step xen-livepatch unload "$arg" ;;
    key) step sendkey "$arg" "$label" ;;
    list) xen-livepatch list ;;
    *) m "unknown step: $op $arg $label" ;;
  esac
done </payload/steps
m "all steps done"

#!/bin/sh
# dom0 side of the e2e test, run by /init.  For each line "NAME KEY" of
# /payload/scenarios: upload + apply /payload/NAME.livepatch (its load hook
# registers a keyhandler on KEY), press KEY (the payload's new code runs),
# revert + unload (payload memory is freed), press KEY again.  With a raw
# payload Xen jumps into the freed payload and panics inside that last
# sendkey, so the "alive" marker never appears; with a rewritten one KEY runs
# Xen's original function and dom0 carries on.
# Every step is bracketed by "=== lp-e2e: ... ===" markers that the pytest
# side uses to cut the serial log into pieces.
m() { echo "=== lp-e2e: $* ==="; }
step() {
  "$@"
  rc=$?
  m "rc=$rc: $*"
  return $rc
}
# APPLY and REVERT need every CPU to rendezvous within Xen's default 30 ms
# (xen-livepatch has no timeout option).  Under TCG on a busy host a vCPU can
# miss it: "Timed out on semaphore in IRQ quiesce phase", EBUSY, payload state
# unchanged.  That is the emulator, not the payload: try again.
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
while read -r name key; do
  [ -n "$name" ] || continue
  m "$name: begin"
  if ! step xen-livepatch upload "$name" "/payload/$name.livepatch" ||
     ! step retry xen-livepatch apply "$name"; then
    m "$name: FAILED to load"
    continue
  fi
  xen-livepatch list
  m "$name: key $key while applied"
  step sendkey "$key"
  step retry xen-livepatch revert "$name"
  step xen-livepatch unload "$name"
  xen-livepatch list
  m "$name: key $key after unload"
  step sendkey "$key"
  m "$name: alive after key"
done </payload/scenarios
m "alive after key"

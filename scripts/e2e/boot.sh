#!/bin/bash
# Boot the Xen hypervisor + Debian dom0 kernel + an e2e initramfs under
# QEMU (TCG: KVM cannot run Xen on these machines) and write the serial log.
# Xen, dom0's kernel and the dom0 shell all print on the one serial port.
# QEMU runs with -no-reboot, so it exits both when dom0 powers off and when
# Xen panics ("Reboot in five seconds..."); `timeout` bounds it otherwise.
# QEMU writes its own PID to LOG.pid (the pytest side kills it by PID).
# Usage: boot.sh TARGET INITRD LOG [TIMEOUT_SECONDS]
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
e2e_arch "${1:?usage: boot.sh TARGET INITRD LOG [TIMEOUT]}"
e2e_xen_paths
INITRD=${2:?initrd}; LOG=${3:?log file}; TMO=${4:-300}
KERNEL=$(ls "$ROOT"/boot/vmlinuz-*)
[ -e "$XEN_IMAGE" ] || die "no hypervisor image $XEN_IMAGE"
rm -f "$LOG" "$LOG.pid"

# arm32 runs one vCPU: with two on a loaded host, APPLY/REVERT's CPU
# rendezvous times out ("Timed out on semaphore in IRQ quiesce phase").
SMP=2
[ "$E2E_ARCH" = arm32 ] && SMP=1
XEN_COMMON="dom0_mem=512M,max:512M dom0_max_vcpus=$SMP loglvl=all guest_loglvl=all console_timestamps=boot"
if [ "$E2E_ARCH" = x86_64 ]; then
  # -cpu qemu64, not max: with SMAP/SMEP under TCG the PV dom0 crashes early.
  QEMU_ARGS=(-accel tcg -cpu qemu64 -m 2048 -smp "$SMP" -display none -monitor none -serial stdio
    -kernel "$XEN_IMAGE" -append "console=com1 com1=115200,8n1 $XEN_COMMON"
    # multiboot modules: "file args" pairs, comma-separated; Xen drops the
    # first word (the file name) of the dom0 command line.
    -initrd "$KERNEL console=hvc0 earlyprintk=xen loglevel=7,$INITRD")
else
  # Xen on Arm takes dom0's kernel and initrd as multiboot modules from the
  # device tree's /chosen node: dump QEMU's own DT for exactly this machine
  # and add them, loaded at fixed addresses with -device loader.
  if [ "$E2E_ARCH" = arm64 ]; then
    MACHINE=virt,virtualization=on,gic-version=3
    MACH=(-cpu cortex-a57 -m 2048 -smp "$SMP")
  else
    # highmem=off: with QEMU's high PCIe ECAM, the armmp-lpae dom0 hangs in
    # PCI enumeration.  QEMU boots Xen's zImage like a Linux zImage (Hyp mode).
    MACHINE=virt,virtualization=on,gic-version=2,highmem=off
    MACH=(-cpu cortex-a15 -m 2048 -smp "$SMP")
  fi
  DTB=$LOG.dtb
  timeout 60 "$QEMU" -machine "$MACHINE,dumpdtb=$DTB" "${MACH[@]}" -display none >/dev/null 2>&1
  KADDR=$((0x60000000)); KSIZE=$(stat -c %s "$KERNEL")
  IADDR=$(( (KADDR + KSIZE + 0x1fffff) & ~0x1fffff )); ISIZE=$(stat -c %s "$INITRD")
  # dtuart by DT path: QEMU's virt DT has no /aliases, so "serial0" finds nothing.
  fdtput -t s "$DTB" /chosen xen,xen-bootargs "console=dtuart dtuart=/pl011@9000000 $XEN_COMMON"
  fdtput -t s "$DTB" /chosen xen,dom0-bootargs "console=hvc0 earlycon=xenboot loglevel=7 rdinit=/init"
  fdtput -t i "$DTB" /chosen '#address-cells' 2
  fdtput -t i "$DTB" /chosen '#size-cells' 2
  fdtput -c "$DTB" "/chosen/module@$(printf %x $KADDR)" "/chosen/module@$(printf %x $IADDR)"
  fdtput -t s "$DTB" "/chosen/module@$(printf %x $KADDR)" compatible multiboot,kernel multiboot,module
  fdtput -t x "$DTB" "/chosen/module@$(printf %x $KADDR)" reg 0 "$(printf %x $KADDR)" 0 "$(printf %x "$KSIZE")"
  fdtput -t s "$DTB" "/chosen/module@$(printf %x $IADDR)" compatible multiboot,ramdisk multiboot,module
  fdtput -t x "$DTB" "/chosen/module@$(printf %x $IADDR)" reg 0 "$(printf %x $IADDR)" 0 "$(printf %x "$ISIZE")"
  QEMU_ARGS=(-machine "$MACHINE" "${MACH[@]}" -display none -monitor none -serial stdio -dtb "$DTB" -kernel "$XEN_IMAGE"
    -device "loader,file=$KERNEL,addr=$(printf 0x%x $KADDR),force-raw=on"
    -device "loader,file=$INITRD,addr=$(printf 0x%x $IADDR),force-raw=on")
fi

log "$E2E_TARGET: booting (timeout ${TMO}s), serial log $LOG"
start=${EPOCHREALTIME/./}
rc=0
# --foreground keeps QEMU in our process group, so killing the caller's
# group (or the PID in LOG.pid) reaches it.
timeout --foreground -k 5 "$TMO" "$QEMU" "${QEMU_ARGS[@]}" -no-reboot -pidfile "$LOG.pid" \
  </dev/null >"$LOG" 2>&1 &
qpid=$!
# After a panic Xen says "Reboot in five seconds..." and resets the machine,
# which ends QEMU (-no-reboot).  Xen 4.20 on x86 does not always get there
# (its reboot hangs under TCG), so a boot whose Xen announced a reboot is
# stopped 15 s later: nothing after that line is waited for.
rebooting=
while kill -0 "$qpid" 2>/dev/null; do
  if [ -z "$rebooting" ] && grep -aq 'Reboot in five seconds' "$LOG" 2>/dev/null; then
    rebooting=$SECONDS
  elif [ -n "$rebooting" ] && [ $((SECONDS - rebooting)) -ge 15 ]; then
    log "$E2E_TARGET: Xen announced a reboot 15 s ago; stopping QEMU"
    kill "$(cat "$LOG.pid" 2>/dev/null)" 2>/dev/null || kill "$qpid"
    break
  fi
  sleep 1
done
wait "$qpid" || rc=$?
ms=$(( (${EPOCHREALTIME/./} - start) / 1000 ))
printf '=== boot.sh: qemu rc=%s wall=%d.%03ds%s ===\n' "$rc" $((ms / 1000)) $((ms % 1000)) \
  "$([ "$rc" = 124 ] && echo " TIMEOUT after ${TMO}s")" | tee -a "$LOG" >&2
exit "$rc"

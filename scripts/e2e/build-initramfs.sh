#!/bin/bash
# Build a dom0 initramfs: static busybox, xen-livepatch + sendkey and their
# shared libraries, the Xen kernel modules, /init and /scenarios.sh
# (scripts/e2e/dom0/), and the payloads to run, in order.  Everything comes
# from the unpacked debs ($E2E_DIR/root), never from the host, so the same
# code works for both architectures.
# Usage: build-initramfs.sh ARCH OUT.cpio.gz NAME:KEY:PAYLOAD [NAME:KEY:PAYLOAD...]
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
e2e_arch "${1:?usage: build-initramfs.sh ARCH OUT.cpio.gz NAME:KEY:PAYLOAD...}"
OUTF=${2:?output file}
shift 2
[ $# -ge 1 ] || die "no scenario given"
[ -e "$BUILD/sendkey" ] || die "no $BUILD/sendkey (run build-payloads.sh $E2E_ARCH)"

I=$(mktemp -d "$E2E_DIR/initrd.XXXXXX")
trap 'rm -rf "$I"' EXIT
mkdir -p "$I"/{bin,sbin,proc,sys,dev,tmp,mods,payload,etc}
cp "$ROOT/bin/busybox" "$I/bin/busybox"
cp "$ROOT/usr/lib/xen-4.17/bin/xen-livepatch" "$BUILD/sendkey" "$I/bin/"

# Shared libraries: follow DT_NEEDED recursively, looking only inside $ROOT.
find_lib() {
  local d
  for d in "$LIB_DIR" "usr/$LIB_DIR" lib usr/lib; do
    [ -e "$ROOT/$d/$1" ] && { echo "$d/$1"; return 0; }
  done
  die "library $1 not found in the unpacked debs"
}
todo=("$I/bin/xen-livepatch" "$I/bin/sendkey")
seen=" "
while [ ${#todo[@]} -gt 0 ]; do
  next=()
  for f in "${todo[@]}"; do
    for n in $(readelf -dW "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
      case $seen in *" $n "*) continue ;; esac
      seen="$seen$n "
      rel=$(find_lib "$n")
      mkdir -p "$I/$(dirname "$rel")"
      cp -L "$ROOT/$rel" "$I/$rel"
      next+=("$I/$rel")
    done
  done
  todo=("${next[@]+"${next[@]}"}")
done
# The dynamic loader, at the path the binaries ask for (the deb's
# /lib64/ld-linux-x86-64.so.2 is an absolute symlink: resolve it in $ROOT).
mkdir -p "$I/$(dirname "$LD_SO")"
cp -L "$ROOT/$(find_lib "$(basename "$LD_SO")")" "$I/$LD_SO"

KVER=$(ls "$ROOT/lib/modules")
for m in xen-privcmd xen-evtchn xen-gntdev xenfs/xenfs; do
  cp "$ROOT/lib/modules/$KVER/kernel/drivers/xen/$m.ko" "$I/mods/"
done

cp "$E2E_SCRIPTS/dom0/init" "$I/init"
cp "$E2E_SCRIPTS/dom0/scenarios.sh" "$I/scenarios.sh"
chmod +x "$I/init" "$I/scenarios.sh"
for spec in "$@"; do
  IFS=: read -r name key payload <<<"$spec"
  if [ -z "$name" ] || [ ${#key} -ne 1 ] || [ ! -f "$payload" ]; then
    die "bad scenario '$spec' (want NAME:KEY:PAYLOAD)"
  fi
  cp "$payload" "$I/payload/$name.livepatch"
  echo "$name $key" >>"$I/payload/scenarios"
done

(cd "$I" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1) >"$OUTF"
log "$E2E_ARCH: initramfs $OUTF ($(stat -c %s "$OUTF") bytes):$seen"

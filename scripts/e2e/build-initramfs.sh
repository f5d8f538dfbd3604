#!/bin/bash
# Build a dom0 initramfs: static busybox, xen-livepatch + sendkey and their
# shared libraries, the Xen kernel modules, /init and /scenarios.sh
# (scripts/e2e/dom0/), the payloads and the steps that run them
# (/payload/steps, see scenarios.sh).  Everything comes from the unpacked debs
# ($E2E_DIR/root), never from the host, so the same code works for every target.
# Usage: build-initramfs.sh TARGET OUT.cpio.gz STEPS NAME:PAYLOAD [NAME:PAYLOAD...]
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
e2e_arch "${1:?usage: build-initramfs.sh TARGET OUT.cpio.gz STEPS NAME:PAYLOAD...}"
OUTF=${2:?output file}
STEPS=${3:?steps file}
shift 3
[ -f "$STEPS" ] || die "no steps file $STEPS"
[ -e "$BUILD/sendkey" ] || die "no $BUILD/sendkey (run build-payloads.sh $E2E_TARGET)"

I=$(mktemp -d "$E2E_DIR/initrd.XXXXXX")
trap 'rm -rf "$I"' EXIT
mkdir -p "$I"/{bin,sbin,proc,sys,dev,tmp,mods,payload,etc}
cp "$ROOT/bin/busybox" "$I/bin/busybox"
cp "$ROOT/usr/lib/xen-$XEN_VER/bin/xen-livepatch" "$BUILD/sendkey" "$I/bin/"

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
  # A module the kernel has built in is not there: /init's insmod says so.
  f=$ROOT/lib/modules/$KVER/kernel/drivers/xen/$m.ko
  if [ -e "$f" ]; then cp "$f" "$I/mods/"; else log "$E2E_TARGET: no $m.ko (built in?)"; fi
done

cp "$E2E_SCRIPTS/dom0/init" "$I/init"
cp "$E2E_SCRIPTS/dom0/scenarios.sh" "$I/scenarios.sh"
chmod +x "$I/init" "$I/scenarios.sh"
cp "$STEPS" "$I/payload/steps"
for spec in "$@"; do
  IFS=: read -r name payload <<<"$spec"
  if [ -z "$name" ] || [ ! -f "$payload" ]; then
    die "bad payload '$spec' (want NAME:PAYLOAD)"
  fi
  cp "$payload" "$I/payload/$name.livepatch"
done

(cd "$I" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1) >"$OUTF"
log "$E2E_ARCH: initramfs $OUTF ($(stat -c %s "$OUTF") bytes):$seen"

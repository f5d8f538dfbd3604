#!/bin/bash
# Download (apt-get download) and unpack (dpkg -x) the Debian bookworm packages
# the e2e boots need: Xen 4.17 hypervisor (+ xen-syms on x86), the dom0 kernel,
# xen-livepatch and its libraries, static busybox.  Nothing is installed on the
# host and nothing touches /boot: everything lands in $E2E_DIR/root.
# Usage: fetch-debs.sh ARCH        (ARCH = x86_64 | arm64)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
e2e_arch "${1:?usage: fetch-debs.sh ARCH}"

STAMP=$E2E_DIR/.stamp-debs
if [ -e "$STAMP" ]; then
  log "$E2E_ARCH: debs already unpacked in $ROOT"
  exit 0
fi
require_root

# apt-get download PKG:arm64 only resolves once dpkg knows the foreign arch;
# nothing arm64 is ever installed.
if [ "$DEB_ARCH" != "$(dpkg --print-architecture)" ] &&
   ! dpkg --print-foreign-architectures | grep -qx "$DEB_ARCH"; then
  log "dpkg --add-architecture $DEB_ARCH"
  dpkg --add-architecture "$DEB_ARCH"
fi
apt_update

# The dom0 kernel: whatever version linux-image-<arch> currently depends on.
kpkg=$(apt-cache depends "linux-image-$DEB_ARCH:$DEB_ARCH" |
       awk '/Depends: linux-image-[0-9]/{sub(/:.*/, "", $2); print $2; exit}')
[ -n "$kpkg" ] || die "cannot find the kernel package behind linux-image-$DEB_ARCH"

pkgs=(xen-hypervisor-4.17-"$DEB_ARCH" xen-utils-4.17 "$kpkg" busybox-static
      libxen-dev libxenmisc4.17 libxencall1 libxentoollog1 libxenevtchn1 libxengnttab1
      libxenforeignmemory1 libxendevicemodel1 libxentoolcore1 libxenhypfs1 libxenstore4 libc6)
# x86 boots Debian's own hypervisor, so its unstripped xen-syms (the -dbg
# package) gives symbol sizes.  arm64 boots a rebuilt hypervisor with its own
# xen-syms (build-xen-arm64.sh), so the -dbg package is not needed there.
if [ "$E2E_ARCH" = x86_64 ]; then pkgs+=(xen-hypervisor-4.17-amd64-dbg); fi

rm -rf "$E2E_DIR/debs" "$ROOT"
mkdir -p "$E2E_DIR/debs" "$ROOT"
log "$E2E_ARCH: apt-get download ${pkgs[*]}"
(cd "$E2E_DIR/debs" && apt_run download download -q "${pkgs[@]/%/:$DEB_ARCH}")
for d in "$E2E_DIR"/debs/*.deb; do dpkg -x "$d" "$ROOT"; done

if [ "$E2E_ARCH" = x86_64 ]; then
  # QEMU's multiboot loader wants the plain ELF, not the .gz.
  zcat "$ROOT/boot/xen-4.17-amd64.gz" >"$E2E_DIR/xen"
fi
touch "$STAMP"
log "$E2E_ARCH: unpacked $(find "$E2E_DIR/debs" -name '*.deb' | wc -l) debs ($(du -sh "$E2E_DIR/debs" | cut -f1))"

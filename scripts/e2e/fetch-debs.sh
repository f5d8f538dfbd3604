#!/bin/bash
# Download (apt-get download) and unpack (dpkg -x) the Debian packages the
# e2e boots need: the Xen hypervisor (+ xen-syms on x86), xen-livepatch and
# its libraries (all from the target's Debian suite: bookworm for 4.17,
# trixie for 4.20), the dom0 kernel and static busybox (always bookworm's).
# Nothing is installed on the host and nothing touches /boot: everything lands
# in $E2E_DIR/root.
# Usage: fetch-debs.sh TARGET        (TARGET = x86_64 | arm64 | arm32 | x86_64-4.20)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
e2e_arch "${1:?usage: fetch-debs.sh TARGET}"

STAMP=$E2E_DIR/.stamp-debs
if [ -e "$STAMP" ]; then
  log "$E2E_TARGET: debs already unpacked in $ROOT"
  exit 0
fi
require_root

# apt-get download PKG:arm64 only resolves once dpkg knows the foreign arch;
# nothing foreign is ever installed.
if [ "$DEB_ARCH" != "$(dpkg --print-architecture)" ] &&
   ! dpkg --print-foreign-architectures | grep -qx "$DEB_ARCH"; then
  log "dpkg --add-architecture $DEB_ARCH"
  dpkg --add-architecture "$DEB_ARCH"
  APT_UPDATED=  # the lists must now include $DEB_ARCH
fi
apt_update

# The dom0 kernel: whatever version linux-image-<flavour> currently depends on.
kpkg=$(apt-cache depends "linux-image-$KFLAVOUR:$DEB_ARCH" |
       awk '/Depends: linux-image-[0-9]/{sub(/:.*/, "", $2); print $2; exit}')
[ -n "$kpkg" ] || die "cannot find the kernel package behind linux-image-$KFLAVOUR"
dom0=("$kpkg" busybox-static)
# xen-livepatch, libxenctrl and what they link, from the hypervisor's suite
# (the sysctl interface differs between Xen versions).
xen=(xen-hypervisor-"$XEN_VER-$DEB_ARCH" xen-utils-"$XEN_VER" libxen-dev libxenmisc"$XEN_VER" libxencall1
     libxentoollog1 libxenevtchn1 libxengnttab1 libxenforeignmemory1 libxendevicemodel1 libxentoolcore1
     libxenhypfs1 libxenstore4 libc6)
# x86 boots Debian's own hypervisor, so its unstripped xen-syms (the -dbg
# package) gives symbol sizes.  Arm boots a rebuilt hypervisor with its own
# xen-syms (build-xen.sh), so the -dbg package is not needed there.
if ! e2e_rebuilds_xen; then xen+=(xen-hypervisor-"$XEN_VER-$DEB_ARCH"-dbg); fi
if [ "$XEN_VER" != 4.17 ]; then
  # libxenmisc's other dependencies, in case libxenctrl links one of them.
  xen+=(libyajl2 zlib1g libzstd1 liblzma5 libuuid1)
fi

rm -rf "$E2E_DIR/debs" "$ROOT"
mkdir -p "$E2E_DIR/debs" "$ROOT"
if [ "$XEN_SUITE" = bookworm ]; then
  dom0+=("${xen[@]}")
else
  private_apt "$E2E_DIR/apt-$XEN_SUITE" "$XEN_SUITE" deb
  apt_run "$XEN_SUITE-update" "${APTO[@]}" -q update
  log "$E2E_TARGET: apt-get download ($XEN_SUITE) ${xen[*]}"
  (cd "$E2E_DIR/debs" && apt_run "$XEN_SUITE-download" "${APTO[@]}" download -q "${xen[@]/%/:$DEB_ARCH}")
fi
log "$E2E_TARGET: apt-get download ${dom0[*]}"
(cd "$E2E_DIR/debs" && apt_run download download -q "${dom0[@]/%/:$DEB_ARCH}")
for d in "$E2E_DIR"/debs/*.deb; do dpkg -x "$d" "$ROOT"; done

if ! e2e_rebuilds_xen; then
  # QEMU's multiboot loader wants the plain ELF, not the .gz.
  zcat "$ROOT/boot/xen-$XEN_VER-$DEB_ARCH.gz" >"$E2E_DIR/xen"
fi
touch "$STAMP"
log "$E2E_TARGET: unpacked $(find "$E2E_DIR/debs" -name '*.deb' | wc -l) debs ($(du -sh "$E2E_DIR/debs" | cut -f1))"

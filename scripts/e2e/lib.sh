# shellcheck shell=bash disable=SC2034  # the variables are for the sourcing scripts
# Common helpers for the lp_rewrite end-to-end test (sourced, not executed).
#
# Layout of the per-arch cache ($E2E_DIR, default /tmp/lp-rewrite-e2e/<arch>,
# base overridable with LP_REWRITE_E2E_CACHE):
#   debs/        downloaded .debs (apt-get download, never installed)
#   root/        all debs unpacked with dpkg -x (hypervisor, xen-syms, dom0
#                kernel, xen-utils, libraries, busybox)
#   xen-lp/      arm64 only: hypervisor rebuilt with CONFIG_LIVEPATCH=y
#   build/       payloads (raw), sendkey, prepared.env (rebuilt by each prepare)
#   boots/       initramfs images and serial logs of run.sh
#   pytest/      the same for tests/test_e2e.py (+ rewritten payloads)
#   .stamp-*     "this step completed" markers, so an interrupted run is redone

E2E_SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E2E_REPO=$(cd "$E2E_SCRIPTS/../.." && pwd)
E2E_TESTDATA=$E2E_REPO/testdata/e2e

# Exit status meaning "cannot run here" (automake's SKIP convention); the
# pytest wrapper turns it into a skip, or a failure with LP_REWRITE_E2E_REQUIRED=1.
E2E_SKIP=77

log() { printf '[lp-e2e %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
skip() { log "SKIP: $*"; exit "$E2E_SKIP"; }

# e2e_arch ARCH: set the per-architecture variables used by every script.
e2e_arch() {
  E2E_ARCH=$1
  case $E2E_ARCH in
    x86_64)
      DEB_ARCH=amd64; CROSS=; QEMU=qemu-system-x86_64; QEMU_PKG=qemu-system-x86
      LIB_DIR=lib/x86_64-linux-gnu; LD_SO=lib64/ld-linux-x86-64.so.2 ;;
    arm64)
      DEB_ARCH=arm64; CROSS=aarch64-linux-gnu-; QEMU=qemu-system-aarch64; QEMU_PKG=qemu-system-arm
      LIB_DIR=lib/aarch64-linux-gnu; LD_SO=lib/ld-linux-aarch64.so.1 ;;
    *) die "unknown arch '$E2E_ARCH' (want x86_64 or arm64)" ;;
  esac
  E2E_DIR=${LP_REWRITE_E2E_CACHE:-/tmp/lp-rewrite-e2e}/$E2E_ARCH
  ROOT=$E2E_DIR/root
  BUILD=$E2E_DIR/build
  BOOTS=$E2E_DIR/boots
  mkdir -p "$E2E_DIR"
}

# The hypervisor image that QEMU boots and the xen-syms that matches it
# (same build-id).  arm64 uses the rebuilt, livepatch-enabled hypervisor.
e2e_xen_paths() {
  if [ "$E2E_ARCH" = x86_64 ]; then
    XEN_IMAGE=$E2E_DIR/xen                       # gunzipped multiboot ELF
    XEN_SYMS=$ROOT/usr/lib/debug/boot/xen-syms-4.17-amd64
  else
    XEN_IMAGE=$E2E_DIR/xen-lp/xen                # arm64 Image
    XEN_SYMS=$E2E_DIR/xen-lp/xen-syms
  fi
}

# Versions: XEN_DEB_VERSION of Debian's xen binary packages (the unpacked
# hypervisor deb: xen-utils and the libraries come from the same source), and
# XEN_BOOTED_VERSION of the hypervisor QEMU boots, with XEN_BOOTED_FROM saying
# what that is.  On arm64 it is rebuilt from the xen *source* package
# (build-xen-arm64.sh records its version), which may be another version.
e2e_xen_versions() {
  XEN_DEB_VERSION=$(dpkg-deb -f "$E2E_DIR"/debs/xen-hypervisor-4.17-"$DEB_ARCH"_*.deb Version)
  if [ "$E2E_ARCH" = x86_64 ]; then
    XEN_BOOTED_VERSION=$XEN_DEB_VERSION
    XEN_BOOTED_FROM="Debian binary package xen-hypervisor-4.17-$DEB_ARCH"
  else
    XEN_BOOTED_VERSION=$(cat "$E2E_DIR/xen-lp/source-version" 2>/dev/null || echo unknown)
    XEN_BOOTED_FROM="rebuilt from Debian's xen source package with CONFIG_LIVEPATCH=y"
  fi
}

require_root() {
  [ "$(id -u)" = 0 ] || skip "must run as root (apt-get, dpkg --add-architecture)"
}

# apt_run LOGNAME APT-GET-ARGS...: run apt-get, log in $E2E_DIR/apt-LOGNAME.log.
# A network failure means "package registry unreachable": a skip (apt-get
# update only warns about those and exits 0, hence the log check).  Any other
# failure is an error.
APT_NET_ERRORS='Temporary failure resolving|Could not resolve|Could not connect|Connection failed|Connection refused|Connection timed out|Unable to connect|Network is unreachable|No route to host'
apt_check_net() {
  if grep -qE "$APT_NET_ERRORS" "$1"; then
    grep -E "$APT_NET_ERRORS" "$1" | head -3 >&2
    skip "package registry unreachable (see $1)"
  fi
}
apt_run() {
  local name=$1 rc=0
  shift
  DEBIAN_FRONTEND=noninteractive apt-get "$@" >"$E2E_DIR/apt-$name.log" 2>&1 || rc=$?
  apt_check_net "$E2E_DIR/apt-$name.log"
  if [ "$rc" != 0 ]; then
    tail -20 "$E2E_DIR/apt-$name.log" >&2
    die "apt-get $name failed (exit $rc, see $E2E_DIR/apt-$name.log)"
  fi
}

APT_UPDATED=
apt_update() {
  [ -n "$APT_UPDATED" ] && return 0
  log "apt-get update"
  apt_run update -q update
  APT_UPDATED=1
}

# ensure SPEC...: install (no recommends) the packages whose SPEC is missing,
# so a fresh CI machine gets what the scripts need.  SPEC is CMD:PKG (a
# command on PATH) or /FILE:PKG (headers, a cross libc).
ensure() {
  local spec what need=()
  for spec in "$@"; do
    what=${spec%%:*}
    case $what in
      /*) [ -e "$what" ] ;;
      *) command -v "$what" >/dev/null 2>&1 ;;
    esac || need+=("${spec#*:}")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  apt_update
  log "apt-get install ${need[*]}"
  apt_run install install -y -q --no-install-recommends "${need[@]}"
}

# The (cross) C toolchain and libc headers for the payloads and sendkey.  The
# cross libc is only a Recommends of gcc-aarch64-linux-gnu, hence explicit.
# The host gcc/libc6-dev are always needed (x86 sendkey, arm64 Xen kconfig).
ensure_toolchain() {
  ensure gcc:gcc readelf:binutils /usr/include/stdio.h:libc6-dev
  if [ -n "$CROSS" ]; then
    ensure "${CROSS}gcc:gcc-${CROSS%-}" "${CROSS}ld:binutils-${CROSS%-}" \
      "/usr/${CROSS%-}/include/stdio.h:libc6-dev-$DEB_ARCH-cross"
  fi
}

# Host tools every arch needs; arch-specific ones are passed by the caller.
host_tools() {
  ensure cpio:cpio gzip:gzip timeout:coreutils "$QEMU:$QEMU_PKG" "$@"
  ensure_toolchain
}

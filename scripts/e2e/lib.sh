# shellcheck shell=bash disable=SC2034  # the variables are for the sourcing scripts
# Common helpers for the lp_rewrite end-to-end test (sourced, not executed).
#
# Layout of the per-target cache ($E2E_DIR, default /tmp/lp-rewrite-e2e/<target>,
# base overridable with LP_REWRITE_E2E_CACHE):
#   debs/        downloaded .debs (apt-get download, never installed)
#   root/        all debs unpacked with dpkg -x (hypervisor, xen-syms, dom0
#                kernel, xen-utils, libraries, busybox)
#   xen-lp/      Arm only: hypervisor rebuilt with CONFIG_LIVEPATCH=y (+ Xen's
#                in-tree test payloads, tests/)
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

# e2e_arch TARGET: set the per-target variables used by every script.  A
# target is an architecture, optionally with a Xen version: x86_64, arm64 and
# arm32 boot Debian bookworm's Xen 4.17; x86_64-4.20 boots Debian trixie's
# Xen 4.20 (hypervisor, xen-utils and their libraries from trixie; dom0
# kernel and busybox from bookworm, whose modules are plain .ko files).
E2E_TARGETS="x86_64 arm64 arm32 x86_64-4.20"
e2e_arch() {
  E2E_TARGET=$1
  E2E_ARCH=${E2E_TARGET%%-*}
  XEN_VER=4.17
  case $E2E_TARGET in *-*) XEN_VER=${E2E_TARGET#*-} ;; esac
  case $XEN_VER in
    4.17) XEN_SUITE=bookworm ;;
    4.20) XEN_SUITE=trixie ;;
    *) die "unknown Xen version '$XEN_VER' in target '$E2E_TARGET' (want one of: $E2E_TARGETS)" ;;
  esac
  case $E2E_ARCH in
    x86_64)
      DEB_ARCH=amd64; CROSS=; QEMU=qemu-system-x86_64; QEMU_PKG=qemu-system-x86
      LIB_DIR=lib/x86_64-linux-gnu; LD_SO=lib64/ld-linux-x86-64.so.2; KFLAVOUR=amd64 ;;
    arm64)
      DEB_ARCH=arm64; CROSS=aarch64-linux-gnu-; QEMU=qemu-system-aarch64; QEMU_PKG=qemu-system-arm
      LIB_DIR=lib/aarch64-linux-gnu; LD_SO=lib/ld-linux-aarch64.so.1; KFLAVOUR=arm64 ;;
    arm32)
      DEB_ARCH=armhf; CROSS=arm-linux-gnueabihf-; QEMU=qemu-system-arm; QEMU_PKG=qemu-system-arm
      LIB_DIR=lib/arm-linux-gnueabihf; LD_SO=lib/ld-linux-armhf.so.3; KFLAVOUR=armmp-lpae ;;
    *) die "unknown target '$E2E_TARGET' (want one of: $E2E_TARGETS)" ;;
  esac
  case " $E2E_TARGETS " in *" $E2E_TARGET "*) ;; *) die "unknown target '$E2E_TARGET' (want one of: $E2E_TARGETS)" ;; esac
  E2E_DIR=${LP_REWRITE_E2E_CACHE:-/tmp/lp-rewrite-e2e}/$E2E_TARGET
  ROOT=$E2E_DIR/root
  BUILD=$E2E_DIR/build
  BOOTS=$E2E_DIR/boots
  mkdir -p "$E2E_DIR"
}

# Only x86 boots Debian's own hypervisor binary: Debian builds its Arm
# hypervisors without CONFIG_LIVEPATCH, so build-xen.sh rebuilds them.
e2e_rebuilds_xen() { [ "$E2E_ARCH" != x86_64 ]; }

# The hypervisor image that QEMU boots and the xen-syms that matches it
# (same build-id).
e2e_xen_paths() {
  if e2e_rebuilds_xen; then
    XEN_IMAGE=$E2E_DIR/xen-lp/xen                # Arm Image / zImage
    XEN_SYMS=$E2E_DIR/xen-lp/xen-syms
  else
    XEN_IMAGE=$E2E_DIR/xen                       # gunzipped multiboot ELF
    XEN_SYMS=$ROOT/usr/lib/debug/boot/xen-syms-$XEN_VER-$DEB_ARCH
  fi
}

# Versions: XEN_DEB_VERSION of Debian's xen binary packages (the unpacked
# hypervisor deb: xen-utils and the libraries come from the same source), and
# XEN_BOOTED_VERSION of the hypervisor QEMU boots, with XEN_BOOTED_FROM saying
# what that is.  On Arm it is rebuilt from the xen *source* package
# (build-xen.sh records its version), which may be another version.
e2e_xen_versions() {
  XEN_DEB_VERSION=$(dpkg-deb -f "$E2E_DIR/debs/xen-hypervisor-$XEN_VER-${DEB_ARCH}_"*.deb Version)
  if e2e_rebuilds_xen; then
    XEN_BOOTED_VERSION=$(cat "$E2E_DIR/xen-lp/source-version" 2>/dev/null || echo unknown)
    XEN_BOOTED_FROM="rebuilt from Debian $XEN_SUITE's xen source package with CONFIG_LIVEPATCH=y"
  else
    XEN_BOOTED_VERSION=$XEN_DEB_VERSION
    XEN_BOOTED_FROM="Debian $XEN_SUITE binary package xen-hypervisor-$XEN_VER-$DEB_ARCH"
  fi
}

# A private apt configuration under $1 for Debian suite $2 (Types $3: deb or
# deb-src), derived from the host's enabled Debian bookworm entries (same
# mirror, same keyring), so the host's apt configuration is left alone and no
# mirror is hard-coded.  Sets APTO to the apt options that select it.
private_apt() {
  local dir=$1 suite=$2 types=$3 f
  rm -rf "$dir"
  mkdir -p "$dir/lists/partial" "$dir/parts"
  {
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -e "$f" ] || continue
      # deb822 stanzas: the enabled "deb" ones for bookworm suites, renamed to
      # $suite (plain POSIX awk: Debian's default mawk has no \< \> anchors)
      awk -v suite="$suite" -v types="$types" 'BEGIN { RS = ""; ORS = "\n" }
           { n = split($0, L, "\n"); deb = 0; bw = 0; off = 0; out = ""
             for (i = 1; i <= n; i++) {
               line = L[i]
               if (line ~ /^Types:/) {
                 m = split(line, w, /[ \t]+/); for (j = 2; j <= m; j++) if (w[j] == "deb") deb = 1
                 line = "Types: " types
               } else if (line ~ /^Suites:/) {
                 m = split(line, w, /[ \t]+/); keep = ""
                 for (j = 2; j <= m; j++) if (w[j] ~ /^bookworm(-security|-updates)?$/) {
                   bw = 1; sub(/^bookworm/, suite, w[j]); keep = keep " " w[j] }
                 line = "Suites:" keep
               } else if (line ~ /^Enabled:[ \t]*[Nn]o/) off = 1
               out = out line "\n"
             }
             if (deb && bw && !off) print out }' "$f"
    done
  } >"$dir/parts/$suite.sources"
  if [ -e /etc/apt/sources.list ]; then
    awk -v suite="$suite" -v types="$types" '$1 == "deb" && / bookworm(-security|-updates)? / {
        $1 = types; for (i = 2; i <= NF; i++) sub(/^bookworm/, suite, $i); print }' \
      /etc/apt/sources.list >"$dir/parts/$suite.list"
  fi
  grep -q "$suite" "$dir"/parts/* || die "no Debian bookworm entries in the host apt sources"
  APTO=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$dir/parts" -o "Dir::State::Lists=$dir/lists")
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

#!/bin/bash
# Everything the e2e boots need for one architecture, cached per arch:
# host tools, the Debian debs, (Arm) the livepatch-enabled hypervisor, then
# the raw payloads and sendkey (always rebuilt: cheap, and tied to the
# hypervisor's build-id).  Writes $E2E_DIR/build/prepared.env (KEY=VALUE) and
# prints its path as the only line on stdout (progress goes to stderr, with
# the versions of the booted hypervisor and of Debian's xen binary packages:
# on Arm the hypervisor is rebuilt from the source package, whose version
# may differ).
# Exit status 77: cannot run here (not root / package registry unreachable).
# Usage: prepare.sh TARGET        (x86_64 | arm64 | arm32 | x86_64-4.20)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
e2e_arch "${1:?usage: prepare.sh TARGET}"
t0=$SECONDS

require_root
if e2e_rebuilds_xen; then
  host_tools fdtput:device-tree-compiler
else
  host_tools
fi
{
  "$E2E_SCRIPTS/fetch-debs.sh" "$E2E_TARGET"
  if e2e_rebuilds_xen; then "$E2E_SCRIPTS/build-xen.sh" "$E2E_TARGET"; fi
  "$E2E_SCRIPTS/build-payloads.sh" "$E2E_TARGET"
} >&2

e2e_xen_paths
e2e_xen_versions
log "$E2E_TARGET: Debian xen binary packages (xen-utils, libraries$(e2e_rebuilds_xen || echo ", hypervisor")): $XEN_DEB_VERSION"
log "$E2E_TARGET: booted hypervisor: $XEN_BOOTED_VERSION ($XEN_BOOTED_FROM)"
if [ "$XEN_BOOTED_VERSION" != "$XEN_DEB_VERSION" ]; then
  # Not an error: the source pool does not always carry the binaries' version.
  log "$E2E_TARGET: NOTE: the booted hypervisor's version differs from the binary packages'"
fi
# arm32: Xen's in-tree test payloads (build-xen.sh), for the LP014/LP016 boots.
XEN_TESTS_DIR=
if [ -d "$E2E_DIR/xen-lp/tests" ]; then XEN_TESTS_DIR=$E2E_DIR/xen-lp/tests; fi
cat >"$BUILD/prepared.env" <<EOF
E2E_TARGET=$E2E_TARGET
E2E_ARCH=$E2E_ARCH
XEN_VER=$XEN_VER
E2E_DIR=$E2E_DIR
XEN_IMAGE=$XEN_IMAGE
XEN_SYMS=$XEN_SYMS
XEN_BUILD_ID=$(readelf -n "$XEN_SYMS" | awk '/Build ID:/{print $3}')
XEN_DEB_VERSION=$XEN_DEB_VERSION
XEN_BOOTED_VERSION=$XEN_BOOTED_VERSION
XEN_BOOTED_FROM=$XEN_BOOTED_FROM
RAW_DIR=$BUILD/raw
XEN_TESTS_DIR=$XEN_TESTS_DIR
EOF
log "$E2E_TARGET: prepared in $((SECONDS - t0))s"
echo "$BUILD/prepared.env"

#!/bin/bash
# Rebuild ONLY the Arm hypervisor (arm64 or arm32) from Debian's xen source
# package, with Debian's own .config for that arch plus CONFIG_LIVEPATCH=y.
# Debian ships its Arm Xen without livepatch (Kconfig "default X86"), so the
# stock binary answers ENOSYS to every xen-livepatch call.  It also
# builds Xen's in-tree test payloads (`make tests`: xen_hello_world & co.).
# Output (cached): $E2E_DIR/xen-lp/{xen,xen-syms,.config,source-version,tests/}.
# Delete $E2E_DIR/.stamp-xen-lp-tests to force a rebuild.
# Usage: build-xen.sh TARGET          (run fetch-debs.sh TARGET first)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
e2e_arch "${1:?usage: build-xen.sh TARGET}"
e2e_rebuilds_xen || die "$E2E_TARGET boots Debian's own hypervisor"

STAMP=$E2E_DIR/.stamp-xen-lp-tests
OUT=$E2E_DIR/xen-lp
if [ -e "$STAMP" ]; then
  log "$E2E_TARGET: livepatch-enabled hypervisor cached in $OUT"
  exit 0
fi
[ -e "$E2E_DIR/.stamp-debs" ] || die "run fetch-debs.sh $E2E_TARGET first"
require_root
# Host gcc, flex and bison build kconfig; python3 runs Xen's build helpers.
ensure make:make gcc:gcc dpkg-source:dpkg-dev xz:xz-utils python3:python3 flex:flex bison:bison \
  "${CROSS}gcc:gcc-${CROSS%-}"

A=$E2E_DIR/apt
rm -rf "$E2E_DIR/src"
mkdir -p "$E2E_DIR/src"
private_apt "$A" "$XEN_SUITE" deb-src
apt_run src-update "${APTO[@]}" -q update

# The exact version of the binary package first; the security pool does not
# always carry that source, so fall back to the other versions apt knows.
binver=$(dpkg-deb -f "$E2E_DIR/debs/xen-hypervisor-$XEN_VER-${DEB_ARCH}_"*.deb Version)
got=
for v in "$binver" $(apt-cache "${APTO[@]}" showsrc xen | awk '/^Version:/{print $2}'); do
  log "$E2E_TARGET: apt-get source xen=$v"
  if (cd "$E2E_DIR/src" && apt-get "${APTO[@]}" source -q --download-only "xen=$v") >"$A/source.log" 2>&1; then
    got=$v; break
  fi
  apt_check_net "$A/source.log"
done
[ -n "$got" ] || die "could not download any xen source package"
log "$E2E_TARGET: xen source package $got (Debian's binary packages: $binver)"
[ "$got" = "$binver" ] || log "$E2E_TARGET: NOTE: no source package of version $binver; rebuilding $got"
dpkg-source -x --no-check "$E2E_DIR/src/xen_${got#*:}.dsc" "$E2E_DIR/src/xen-tree" >/dev/null
X=$E2E_DIR/src/xen-tree/xen

cp "$ROOT/boot/xen-$XEN_VER-$DEB_ARCH.config" "$X/.config"
# ENFORCE_UNIQUE_SYMBOLS defaults to LIVEPATCH upstream (and is on in Debian's
# x86 build), but Debian's Arm .config pins it off.  It makes the FILE
# symbols "common/keyhandler.c" instead of "keyhandler.c", so static functions
# get the same "common/keyhandler.c#name" runtime names as on x86.
sed -i -e 's/^# CONFIG_LIVEPATCH is not set$/CONFIG_LIVEPATCH=y/' \
       -e 's/^# CONFIG_ENFORCE_UNIQUE_SYMBOLS is not set$/CONFIG_ENFORCE_UNIQUE_SYMBOLS=y/' "$X/.config"
MK=(make -C "$X" XEN_TARGET_ARCH="$E2E_ARCH" CROSS_COMPILE="$CROSS")
"${MK[@]}" olddefconfig >/dev/null
# (LIVEPATCH also selects CC_SPLIT_SECTIONS.)
for opt in CONFIG_LIVEPATCH CONFIG_ENFORCE_UNIQUE_SYMBOLS; do
  grep -qx "$opt=y" "$X/.config" || die "$opt not enabled after olddefconfig"
done
log "$E2E_TARGET: building the hypervisor (make -j$(nproc), log $E2E_DIR/xen-build.log)"
"${MK[@]}" -j"$(nproc)" >"$E2E_DIR/xen-build.log" 2>&1 ||
  { tail -30 "$E2E_DIR/xen-build.log" >&2; die "hypervisor build failed"; }
rm -rf "$OUT"; mkdir -p "$OUT"
cp "$X/xen" "$X/xen-syms" "$X/.config" "$OUT/"
# Xen's own test payloads, built against this very hypervisor: real
# payloads to pass through the rewrite, and the loader crashes `check`
# predicts (LP016 unaligned notes; LP014 on arm32) shown on the real thing.
log "$E2E_TARGET: make tests (Xen's in-tree livepatch test payloads, log $E2E_DIR/xen-tests.log)"
"${MK[@]}" -j"$(nproc)" tests >"$E2E_DIR/xen-tests.log" 2>&1 ||
  { tail -30 "$E2E_DIR/xen-tests.log" >&2; die "make tests failed"; }
mkdir -p "$OUT/tests"
cp "$X"/test/livepatch/*.livepatch "$OUT/tests/"
echo "$got" >"$OUT/source-version"
rm -rf "$E2E_DIR/src"   # 200+ MB tree; only xen-lp/ is needed from here on
touch "$STAMP"
log "$E2E_TARGET: hypervisor ready, build-id $(readelf -n "$OUT/xen-syms" | awk '/Build ID:/{print $3}')"

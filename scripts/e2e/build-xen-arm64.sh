#!/bin/bash
# Rebuild ONLY the arm64 hypervisor from Debian's xen source package, with
# Debian's own arm64 .config plus CONFIG_LIVEPATCH=y.  Debian ships its arm64
# Xen 4.17 without livepatch (Kconfig "default X86"), so the stock binary
# answers ENOSYS to every xen-livepatch call.  Output (cached): $E2E_DIR/xen-lp/
# {xen,xen-syms,.config}.  Delete $E2E_DIR/.stamp-xen-lp to force a rebuild.
# Usage: build-xen-arm64.sh          (run fetch-debs.sh arm64 first)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
e2e_arch arm64

STAMP=$E2E_DIR/.stamp-xen-lp
OUT=$E2E_DIR/xen-lp
if [ -e "$STAMP" ]; then
  log "arm64: livepatch-enabled hypervisor cached in $OUT"
  exit 0
fi
[ -e "$E2E_DIR/.stamp-debs" ] || die "run fetch-debs.sh arm64 first"
require_root
# Host gcc, flex and bison build kconfig; python3 runs Xen's build helpers.
ensure make:make gcc:gcc dpkg-source:dpkg-dev xz:xz-utils python3:python3 flex:flex bison:bison \
  "${CROSS}gcc:gcc-${CROSS%-}"

# A private deb-src list derived from the host's Debian bookworm "deb" entries,
# so the host apt configuration is left alone and no mirror is hard-coded.
A=$E2E_DIR/apt
rm -rf "$A" "$E2E_DIR/src"
mkdir -p "$A/lists/partial" "$A/parts" "$E2E_DIR/src"
{
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    # deb822 stanzas: keep the enabled "deb" ones for bookworm suites, as deb-src
    # (plain POSIX awk: Debian's default mawk has no \< \> word anchors)
    awk 'BEGIN { RS = ""; ORS = "\n" }
         { n = split($0, L, "\n"); deb = 0; bw = 0; off = 0; out = ""
           for (i = 1; i <= n; i++) {
             line = L[i]
             if (line ~ /^Types:/) {
               m = split(line, w, /[ \t]+/); for (j = 2; j <= m; j++) if (w[j] == "deb") deb = 1
               line = "Types: deb-src"
             } else if (line ~ /^Suites:/) {
               m = split(line, w, /[ \t]+/)
               for (j = 2; j <= m; j++) if (w[j] ~ /^bookworm(-security|-updates)?$/) bw = 1
             } else if (line ~ /^Enabled:[ \t]*[Nn]o/) off = 1
             out = out line "\n"
           }
           if (deb && bw && !off) print out }' "$f"
  done
} >"$A/parts/src.sources"
if [ -e /etc/apt/sources.list ]; then
  awk '$1 == "deb" && / bookworm(-security|-updates)? / { $1 = "deb-src"; print }' \
    /etc/apt/sources.list >"$A/parts/src.list"
fi
grep -q deb-src "$A"/parts/* || die "no Debian bookworm entries in the host apt sources"
APTO=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$A/parts" -o "Dir::State::Lists=$A/lists")
apt_run src-update "${APTO[@]}" -q update

# The exact version of the binary package first; the security pool does not
# always carry that source, so fall back to the other versions apt knows.
binver=$(dpkg-deb -f "$E2E_DIR"/debs/xen-hypervisor-4.17-arm64_*.deb Version)
got=
for v in "$binver" $(apt-cache "${APTO[@]}" showsrc xen | awk '/^Version:/{print $2}'); do
  log "arm64: apt-get source xen=$v"
  if (cd "$E2E_DIR/src" && apt-get "${APTO[@]}" source -q --download-only "xen=$v") >"$A/source.log" 2>&1; then
    got=$v; break
  fi
  apt_check_net "$A/source.log"
done
[ -n "$got" ] || die "could not download any xen source package"
log "arm64: xen source package $got (Debian's binary packages: $binver)"
[ "$got" = "$binver" ] || log "arm64: NOTE: no source package of version $binver; rebuilding $got"
dpkg-source -x --no-check "$E2E_DIR/src/xen_${got#*:}.dsc" "$E2E_DIR/src/xen-tree" >/dev/null
X=$E2E_DIR/src/xen-tree/xen

cp "$ROOT/boot/xen-4.17-arm64.config" "$X/.config"
# ENFORCE_UNIQUE_SYMBOLS defaults to LIVEPATCH upstream (and is on in Debian's
# x86 build), but Debian's arm64 .config pins it off.  It makes the FILE
# symbols "common/keyhandler.c" instead of "keyhandler.c", so static functions
# get the same "common/keyhandler.c#name" runtime names as on x86.
sed -i -e 's/^# CONFIG_LIVEPATCH is not set$/CONFIG_LIVEPATCH=y/' \
       -e 's/^# CONFIG_ENFORCE_UNIQUE_SYMBOLS is not set$/CONFIG_ENFORCE_UNIQUE_SYMBOLS=y/' "$X/.config"
MK=(make -C "$X" XEN_TARGET_ARCH=arm64 CROSS_COMPILE="$CROSS")
"${MK[@]}" olddefconfig >/dev/null
# (LIVEPATCH also selects CC_SPLIT_SECTIONS.)
for opt in CONFIG_LIVEPATCH CONFIG_ENFORCE_UNIQUE_SYMBOLS; do
  grep -qx "$opt=y" "$X/.config" || die "$opt not enabled after olddefconfig"
done
log "arm64: building the hypervisor (make -j$(nproc), log $E2E_DIR/xen-build.log)"
"${MK[@]}" -j"$(nproc)" >"$E2E_DIR/xen-build.log" 2>&1 ||
  { tail -30 "$E2E_DIR/xen-build.log" >&2; die "hypervisor build failed"; }
rm -rf "$OUT"; mkdir -p "$OUT"
cp "$X/xen" "$X/xen-syms" "$X/.config" "$OUT/"
echo "$got" >"$OUT/source-version"
rm -rf "$E2E_DIR/src"   # 200+ MB tree; only xen-lp/ is needed from here on
touch "$STAMP"
log "arm64: hypervisor ready, build-id $(readelf -n "$OUT/xen-syms" | awk '/Build ID:/{print $3}')"

#!/bin/bash
# By-hand driver of the e2e test (the pytest in tests/test_e2e.py is the real,
# asserting test; this prints the decisive serial-log lines for a human):
# prepare, rewrite both payloads with `python3 -m lp_rewrite rewrite`, then
# three boots per arch: raw "replaced global", raw "replaced static" (each
# should panic Xen), and both rewritten payloads in one boot (should not).
# Usage (root): scripts/e2e/run.sh [x86_64] [arm64]     (default: both)
# Env: LP_REWRITE_E2E_CACHE (cache base), LP_REWRITE_E2E_BOOT_TIMEOUT (s, 300)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
TMO=${LP_REWRITE_E2E_BOOT_TIMEOUT:-300}
[ $# -gt 0 ] || set -- x86_64 arm64
PY=${PYTHON:-python3}
# Scenario table: name, debug key (must match testdata/e2e/<name>.c).
SCEN=("replaced_global:Z" "replaced_static:Y")
DECISIVE='lp-e2e: (NEW|.*(key|alive|FAILED))|livepatch: .*(finished|Unknown|rc=-)|sched_smt_power_savings|pressed -> showing|FATAL PAGE FAULT|Faulting linear|Unexpected Trap|handle_keypress|RIP: |LR: |Panic on|boot.sh: qemu'

for arch in "$@"; do
  e2e_arch "$arch"
  # Same lock as tests/test_e2e.py: prepare rebuilds build/ in place.
  exec 9>"${E2E_DIR%/*}/$arch.lock"
  flock 9
  t0=$SECONDS
  "$E2E_SCRIPTS/prepare.sh" "$arch" >/dev/null
  rm -rf "$BOOTS"; mkdir -p "$BOOTS/rewritten"
  rw=()
  for s in "${SCEN[@]}"; do
    name=${s%%:*}
    (cd "$E2E_REPO" && PYTHONPATH=$E2E_REPO${PYTHONPATH:+:$PYTHONPATH} \
      "$PY" -m lp_rewrite rewrite "$BUILD/raw/$name.livepatch" -o "$BOOTS/rewritten/$name.livepatch")
    rw+=("$s:$BOOTS/rewritten/$name.livepatch")
    # raw: one boot per scenario, it ends in a panic
    "$E2E_SCRIPTS/build-initramfs.sh" "$arch" "$BOOTS/raw-$name.cpio.gz" "$s:$BUILD/raw/$name.livepatch"
    "$E2E_SCRIPTS/boot.sh" "$arch" "$BOOTS/raw-$name.cpio.gz" "$BOOTS/raw-$name.log" "$TMO" || true
  done
  "$E2E_SCRIPTS/build-initramfs.sh" "$arch" "$BOOTS/rewritten.cpio.gz" "${rw[@]}"
  "$E2E_SCRIPTS/boot.sh" "$arch" "$BOOTS/rewritten.cpio.gz" "$BOOTS/rewritten.log" "$TMO" || true
  for f in "$BOOTS"/raw-*.log "$BOOTS/rewritten.log"; do
    echo "---------- $arch: $(basename "$f")"
    grep -a -E "$DECISIVE" "$f" | tr -d '\r' || true
  done
  log "$arch: done in $((SECONDS - t0))s, logs in $BOOTS"
  exec 9>&-
done

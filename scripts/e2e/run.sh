#!/bin/bash
# By-hand driver of the e2e test: runs tests/test_e2e.py (which holds the
# flows and the assertions) for the given targets, then prints the decisive
# serial-log lines of every boot for a human to read.
# Usage (root): scripts/e2e/run.sh [TARGET...]   (default: every target of lib.sh)
# Env: LP_REWRITE_E2E_CACHE (cache base), LP_REWRITE_E2E_BOOT_TIMEOUT (s, 300)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck disable=SC2086  # the list is space-separated on purpose
[ $# -gt 0 ] || set -- $E2E_TARGETS
PY=${PYTHON:-python3}
DECISIVE='lp-e2e(-xen)?: |lp-e2e: NEW|livepatch: .*(finished|Unknown|rc=-)|sched_smt_power_savings|pressed -> showing|FATAL PAGE FAULT|Faulting linear|Unexpected Trap|Data Abort|handle_keypress|RIP: |LR: |PC: |Panic on|boot.sh: qemu'
rc=0
(cd "$E2E_REPO" && LP_REWRITE_E2E_TARGETS="$*" "$PY" -m pytest -p no:cacheprovider -m e2e tests/test_e2e.py -v) || rc=$?
for target in "$@"; do
  e2e_arch "$target"
  for f in "$E2E_DIR"/pytest/*.log; do
    [ -e "$f" ] || continue
    echo "---------- $target: $(basename "$f")"
    grep -a -E "$DECISIVE" "$f" | tr -d '\r' || true
  done
done
exit "$rc"

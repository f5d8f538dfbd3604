#!/bin/bash
# Build the e2e livepatch payloads (testdata/e2e/*.c) against the hypervisor
# the boots will run, plus the dom0 `sendkey` helper.
#   - .livepatch.depends / .livepatch.xen_depends: that hypervisor's build-id
#     (nothing is applied before each payload, so both name Xen itself);
#   - old_size: the original function's size in the matching xen-syms;
#   - new_size: the replacement's size, measured by a first compile;
#   - compiled the way Xen compiles (-fpic, hidden visibility, split sections),
#     linked like livepatch-build does (ld -r --build-id=sha1).
# Output: $E2E_DIR/build/raw/<scenario>.livepatch, $E2E_DIR/build/sendkey.
# Usage: build-payloads.sh ARCH
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
e2e_arch "${1:?usage: build-payloads.sh ARCH}"
e2e_xen_paths
[ -e "$XEN_SYMS" ] || die "no xen-syms at $XEN_SYMS (run prepare.sh $E2E_ARCH)"
CC=${CROSS}gcc
ensure_toolchain

OUT=$BUILD
rm -rf "$OUT"
mkdir -p "$OUT/raw" "$OUT/obj"

BID=$(readelf -n "$XEN_SYMS" | awk '/Build ID:/{print $3}')
[ ${#BID} -eq 40 ] || die "no 20-byte GNU build-id in $XEN_SYMS"
if [ "$E2E_ARCH" = x86_64 ]; then
  # The booted image must be the one xen-syms describes (the arm64 Image has
  # no notes; it comes out of the same build as its xen-syms).
  IBID=$(readelf -n "$XEN_IMAGE" | awk '/Build ID:/{print $3}')
  [ "$IBID" = "$BID" ] || die "xen-syms build-id $BID != hypervisor image $IBID"
fi
log "$E2E_ARCH: hypervisor build-id $BID"

# sym_size NAME [FILE]: st_size of the GLOBAL function NAME, or of the LOCAL
# function NAME listed after the STT_FILE symbol FILE (how Xen's symbol table
# builds "FILE#NAME" for statics).  Exactly one match is required.
sym_size() {
  readelf -sW "$XEN_SYMS" | awk -v n="$1" -v f="${2:-}" '
    $4 == "FILE" { file = $8; next }
    $4 == "FUNC" && $8 == n && ((f == "" && $5 == "GLOBAL") || (f != "" && $5 == "LOCAL" && file == f)) {
      print $3; found++ }
    END { exit found == 1 ? 0 : 1 }'
}

# Both depends notes are the hypervisor's full GNU build-id note.
bytes=$(echo "$BID" | sed 's/../0x&,/g; s/,$//')
for sec in .livepatch.depends .livepatch.xen_depends; do
  # "%note": '@' starts a comment in aarch64 gas; '%' works on both arches.
  printf '\t.section %s,"a",%%note\n\t.balign 4\n\t.long 4, 20, 3\n\t.asciz "GNU"\n\t.byte %s\n' "$sec" "$bytes"
done >"$OUT/obj/notes.S"
printf '\t.section .note.GNU-stack,"",%%progbits\n' >>"$OUT/obj/notes.S"
"$CC" -c -o "$OUT/obj/notes.o" "$OUT/obj/notes.S"

CFLAGS=(-O2 -std=gnu11 -Wall -Werror -ffreestanding -nostdinc -isystem "$("$CC" -print-file-name=include)"
        -I"$E2E_TESTDATA" -fpic -fvisibility=hidden -ffunction-sections -fdata-sections
        -fno-common -fno-stack-protector -fno-asynchronous-unwind-tables -fno-builtin)
if [ "$E2E_ARCH" = x86_64 ]; then
  # Xen 4.17's x86 loader takes only R_X86_64_{NONE,64,PC32,PLT32}.  No IBT
  # (AMD-style qemu64 CPU has none), no jump tables, no FPU/SIMD, no red zone.
  CFLAGS+=(-mno-red-zone -fcf-protection=none -fno-jump-tables -mno-sse -mno-mmx -mno-sse2 -mno-3dnow -mno-avx)
else
  # Like Xen's arm64 build: -fno-asynchronous-unwind-tables only, so GCC still
  # emits .eh_frame (R_AARCH64_PREL32 to each function), as real payloads have.
  CFLAGS+=(-mgeneral-regs-only)
fi

# build_one SCENARIO NEWFN ORIGNAME [ORIGFILE]
build_one() {
  local name=$1 newfn=$2 orig=$3 ofile=${4:-} old new
  old=$(sym_size "$orig" "$ofile") || die "$orig${ofile:+ in $ofile}: not exactly one such function in xen-syms"
  "$CC" "${CFLAGS[@]}" -c -o "$OUT/obj/$name.pass1.o" "$E2E_TESTDATA/$name.c"
  new=$(readelf -sW "$OUT/obj/$name.pass1.o" | awk -v n="$newfn" '$4 == "FUNC" && $8 == n { print $3 }')
  [ -n "$new" ] || die "$name: no function $newfn in the payload"
  "$CC" "${CFLAGS[@]}" -DNEW_SIZE="$new" -DOLD_SIZE="$old" -c -o "$OUT/obj/$name.o" "$E2E_TESTDATA/$name.c"
  "${CROSS}ld" -r --build-id=sha1 -o "$OUT/raw/$name.livepatch" "$OUT/obj/$name.o" "$OUT/obj/notes.o"
  log "$E2E_ARCH: $name.livepatch: ${ofile:+$ofile#}$orig old_size=$old new_size=$new"
}
build_one replaced_global dump_runq dump_runq
build_one replaced_static show_handlers show_handlers common/keyhandler.c

# sendkey for dom0, against the libxenctrl of the unpacked debs (link the .so
# by path: -L into $ROOT would pick up libc6-dev's linker scripts with
# absolute paths).  libc comes from the (cross) toolchain, same glibc 2.36.
LIBS=$ROOT/usr/$LIB_DIR
"$CC" -O2 -Wall -o "$OUT/sendkey" "$E2E_TESTDATA/sendkey.c" -I"$ROOT/usr/include" \
  "$LIBS/libxenctrl.so" -Wl,-rpath-link="$LIBS"

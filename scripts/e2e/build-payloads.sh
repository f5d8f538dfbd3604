#!/bin/bash
# Build the e2e livepatch payloads (testdata/e2e/*.c) against the hypervisor
# the boots will run, plus the dom0 `sendkey` helper.
#   - .livepatch.xen_depends: that hypervisor's build-id; .livepatch.depends:
#     the build-id of what the payload is applied on top of (Xen itself, or,
#     for the stacked successor, the payload it stacks on);
#   - old_size: the original function's size in the matching xen-syms;
#   - new_size: the replacement's size, measured by a first compile;
#   - compiled the way Xen compiles (-fpic, hidden visibility, split sections),
#     linked like livepatch-build does (ld -r --build-id=sha1).
# Output: $E2E_DIR/build/raw/<payload>.livepatch, $E2E_DIR/build/sendkey.
# Usage: build-payloads.sh TARGET
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
e2e_arch "${1:?usage: build-payloads.sh TARGET}"
e2e_xen_paths
[ -e "$XEN_SYMS" ] || die "no xen-syms at $XEN_SYMS (run prepare.sh $E2E_TARGET)"
CC=${CROSS}gcc
ensure_toolchain

OUT=$BUILD
rm -rf "$OUT"
mkdir -p "$OUT/raw" "$OUT/obj"

BID=$(readelf -n "$XEN_SYMS" | awk '/Build ID:/{print $3}')
[ ${#BID} -eq 40 ] || die "no 20-byte GNU build-id in $XEN_SYMS"
if ! e2e_rebuilds_xen; then
  # The booted image must be the one xen-syms describes (the Arm Image has
  # no notes; it comes out of the same build as its xen-syms).
  IBID=$(readelf -n "$XEN_IMAGE" | awk '/Build ID:/{print $3}')
  [ "$IBID" = "$BID" ] || die "xen-syms build-id $BID != hypervisor image $IBID"
fi
log "$E2E_TARGET: hypervisor build-id $BID"

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

# notes_obj DEPENDS_BID OUT.o: .livepatch.xen_depends is the hypervisor's full
# GNU build-id note, .livepatch.depends that of DEPENDS_BID (what the payload
# applies on top of).  4-aligned, as Xen's loader needs (arm32 faults on
# unaligned note reads; LP016).
notes_obj() {
  local dep=$1 out=$2 sec bid
  for sec in .livepatch.depends .livepatch.xen_depends; do
    bid=$BID; [ "$sec" = .livepatch.depends ] && bid=$dep
    # "%note": '@' starts a comment in aarch64 gas; '%' works on every arch.
    printf '\t.section %s,"a",%%note\n\t.balign 4\n\t.long 4, 20, 3\n\t.asciz "GNU"\n\t.byte %s\n' \
      "$sec" "$(echo "$bid" | sed 's/../0x&,/g; s/,$//')"
  done >"${out%.o}.S"
  printf '\t.section .note.GNU-stack,"",%%progbits\n' >>"${out%.o}.S"
  "$CC" "${ASFLAGS[@]}" -c -o "$out" "${out%.o}.S"
}

# payload_build_id FILE: the GNU build-id of a linked payload (.note.gnu.build-id).
payload_build_id() {
  readelf -n "$1" | awk '/^Displaying notes found in:/ { own = ($NF == ".note.gnu.build-id") }
                         own && /Build ID:/ { print $NF }'
}

CFLAGS=(-O2 -std=gnu11 -Wall -Werror -ffreestanding -nostdinc -isystem "$("$CC" -print-file-name=include)"
        -I"$E2E_TESTDATA" -fpic -fvisibility=hidden -ffunction-sections -fdata-sections
        -fno-common -fno-stack-protector -fno-asynchronous-unwind-tables -fno-builtin)
ASFLAGS=()
if [ "$E2E_ARCH" = x86_64 ]; then
  # Xen 4.17's x86 loader takes only R_X86_64_{NONE,64,PC32,PLT32}.  No IBT
  # (AMD-style qemu64 CPU has none), no jump tables, no FPU/SIMD, no red zone.
  CFLAGS+=(-mno-red-zone -fcf-protection=none -fno-jump-tables -mno-sse -mno-mmx -mno-sse2 -mno-3dnow -mno-avx)
elif [ "$E2E_ARCH" = arm32 ]; then
  # Debian's armhf gcc defaults to Thumb-2 and PIE: Xen refuses $t symbols and
  # cannot apply GOT relocations, so -marm -fno-pie (no -fpic either: PIC
  # calls still go through the GOT on Arm).  -mlong-calls: calls into Xen go
  # through MOVW/MOVT + BLX, so no B/BL can land 4 bytes short on Xen's
  # 0x00FFFFFE branch mask (LP014; the in-tree test payloads show that one).
  CFLAGS=("${CFLAGS[@]/-fpic/-fno-pie}")
  CFLAGS+=(-marm -mlong-calls -mgeneral-regs-only)
  ASFLAGS+=(-marm)
else
  # Like Xen's arm64 build: -fno-asynchronous-unwind-tables only, so GCC still
  # emits .eh_frame (R_AARCH64_PREL32 to each function), as real payloads have.
  CFLAGS+=(-mgeneral-regs-only)
fi

notes_obj "$BID" "$OUT/obj/notes.o"

# build_one PAYLOAD SOURCE NEWFN ORIGNAME [ORIGFILE [NOTES.o]]
build_one() {
  local name=$1 src=$2 newfn=$3 orig=$4 ofile=${5:-} notes=${6:-$OUT/obj/notes.o} old new
  old=$(sym_size "$orig" "$ofile") || die "$orig${ofile:+ in $ofile}: not exactly one such function in xen-syms"
  "$CC" "${CFLAGS[@]}" -c -o "$OUT/obj/$name.pass1.o" "$E2E_TESTDATA/$src.c"
  new=$(readelf -sW "$OUT/obj/$name.pass1.o" | awk -v n="$newfn" '$4 == "FUNC" && $8 == n { print $3 }')
  [ -n "$new" ] || die "$name: no function $newfn in the payload"
  "$CC" "${CFLAGS[@]}" -DNEW_SIZE="$new" -DOLD_SIZE="$old" -c -o "$OUT/obj/$name.o" "$E2E_TESTDATA/$src.c"
  "${CROSS}ld" -r --build-id=sha1 -o "$OUT/raw/$name.livepatch" "$OUT/obj/$name.o" "$notes"
  log "$E2E_TARGET: $name.livepatch: ${ofile:+$ofile#}$orig old_size=$old new_size=$new"
}
# stacked_on PAYLOAD NOTES.o: the depends notes of a payload applied on top of PAYLOAD.
stacked_on() {
  local bid
  bid=$(payload_build_id "$OUT/raw/$1.livepatch")
  [ ${#bid} -eq 40 ] || die "no build-id in $1.livepatch"
  notes_obj "$bid" "$2"
}
# The cumulative successors (same function, another marker) are built twice:
# applied with `replace` they depend on Xen itself (REPLACE checks
# .livepatch.depends against the hypervisor); stacked on the first payload
# (plain `apply`) they depend on that payload's build-id.
if [ "$XEN_VER" = 4.17 ]; then
  # Debug keys: the load hook registers the replacement as a keyhandler.
  build_one replaced_global replaced_global dump_runq dump_runq
  build_one replaced_static replaced_static show_handlers show_handlers common/keyhandler.c
  build_one cumulative_replace cumulative_global dump_runq dump_runq
  stacked_on replaced_global "$OUT/obj/notes-on-global.o"
  build_one cumulative_stacked cumulative_global dump_runq dump_runq "" "$OUT/obj/notes-on-global.o"
else
  # Xen 4.20 registers debug keys only at boot (register_keyhandler() is
  # __init, key_table read-only after init): the NMI callback is the stored
  # pointer instead (x86), and debug key 'N' raises the NMI.
  [ "$E2E_ARCH" = x86_64 ] || die "no e2e payloads for Xen $XEN_VER on $E2E_ARCH"
  # The 4.17 keyhandler payload, built against this hypervisor all the same:
  # its load hook calls register_keyhandler, which 4.20 freed after boot
  # (LP018); the e2e shows the crash `check` predicts.
  build_one replaced_global replaced_global dump_runq dump_runq
  ucode=arch/x86/cpu/microcode/core.c
  build_one nmi_static nmi_static microcode_nmi_callback microcode_nmi_callback "$ucode"
  build_one nmi_cumulative_replace nmi_cumulative microcode_nmi_callback microcode_nmi_callback "$ucode"
  stacked_on nmi_static "$OUT/obj/notes-on-nmi.o"
  build_one nmi_cumulative_stacked nmi_cumulative microcode_nmi_callback microcode_nmi_callback "$ucode" \
    "$OUT/obj/notes-on-nmi.o"
fi

# sendkey for dom0, against the libxenctrl of the unpacked debs (link the .so
# by path: -L into $ROOT would pick up libc6-dev's linker scripts with
# absolute paths).  libc comes from the (cross) toolchain, same glibc 2.36.
LIBS=$ROOT/usr/$LIB_DIR
"$CC" -O2 -Wall -o "$OUT/sendkey" "$E2E_TESTDATA/sendkey.c" -I"$ROOT/usr/include" \
  "$LIBS/libxenctrl.so" "$LIBS/libxencall.so" -Wl,-rpath-link="$LIBS"

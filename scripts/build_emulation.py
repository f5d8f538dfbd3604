#!/usr/bin/env python3
"""Build the emulation tests' hypervisor image and payloads (testdata/emu/).

Per architecture (x86-64, AArch64, 32-bit Arm):

* ``hv.elf``: testdata/emu/hv.c as a static image at a fixed address, like
  xen-syms (its FILE symbol renamed to ``common/hv.c`` the way Xen's
  CONFIG_ENFORCE_UNIQUE_SYMBOLS does, so statics are ``common/hv.c#name``);
  compiled like Xen (x86: -fpic, hidden visibility, no CET; Arm: -marm);
* ``emu_*.livepatch``: each emu_*.c built exactly like the fixture payloads
  (scripts/build_fixtures.py's flags), ``ld -r`` with the dependency notes.

Flags and link addresses (EMULATION_TEXT): scripts/toolchain.py.

    scripts/build_emulation.py                  # rebuild testdata/emu/build/
    scripts/build_emulation.py --out /tmp/emu   # a fresh copy elsewhere
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_fixtures as fixtures  # the same directory
import toolchain

ROOT: Final = Path(__file__).resolve().parent.parent
EMU: Final = ROOT / "testdata" / "emu"
ARCHES: Final = toolchain.ARCHES
PAYLOADS: Final = ("emu_hook", "emu_multi", "emu_equal", "emu_cold")
FILE_SYMBOL: Final = "common/hv.c"
# GCC splits hot/cold by default only on x86; ask for it everywhere (GCC
# cannot on 32-bit Arm: emu_cold_arm.S has the split written out).
PAYLOAD_CFLAGS: Final = {"emu_cold": ["-freorder-blocks-and-partition"]}
PAYLOAD_SOURCE: Final = {("emu_cold", "arm"): "emu_cold_arm.S"}
# Xen's arm32 R_ARM_CALL/JUMP24 handling masks the word offset with
# 0x00FFFFFE, so a B/BL an odd number of words from its target lands 4 bytes
# short (see LoadedPayload.misdirected_branches). The Arm payloads call
# through movw/movt + blx instead, so that what the emulation shows is the
# rewrite, not that quirk.
ARCH_CFLAGS: Final = {"arm": ["-mlong-calls"]}
# ... except emu_bl: emu_cold.c with plain B/BL, to show that quirk itself.
EXTRA: Final = {"arm": ("emu_bl",)}
PAYLOAD_SOURCE_EXTRA: Final = {"emu_bl": "emu_cold.c"}


def build_hypervisor(arch: str, out: Path, work: Path) -> Path:
    prefix = toolchain.PREFIX[arch]
    obj = work / f"hv.{arch}.o"
    fixtures.run(
        [prefix + "gcc", *toolchain.HV_CFLAGS, *toolchain.HV_ARCH_CFLAGS[arch], "-c", "hv.c", "-o", str(obj)], cwd=EMU
    )
    fixtures.run([prefix + "objcopy", f"--redefine-sym=hv.c={FILE_SYMBOL}", str(obj)], cwd=EMU)
    dest = out / arch / "hv.elf"
    dest.parent.mkdir(parents=True, exist_ok=True)
    fixtures.run(
        [
            prefix + "ld",
            "-static",
            "--build-id=none",
            "--no-warn-rwx-segments",
            "-z",
            "max-page-size=0x1000",
            f"--defsym=HV_BASE={toolchain.EMULATION_TEXT[arch]:#x}",
            "-T",
            "hv.ld",
            "-o",
            str(dest),
            str(obj),
        ],
        cwd=EMU,
    )
    return dest


def build_payload(name: str, arch: str, out: Path, work: Path) -> Path:
    prefix = toolchain.PREFIX[arch]
    gcc = prefix + "gcc"
    include = subprocess.run([gcc, "-print-file-name=include"], capture_output=True, text=True, check=True)
    flags = [*toolchain.PAYLOAD_CFLAGS, *toolchain.PAYLOAD_ARCH_CFLAGS[arch], "-isystem", include.stdout.strip()]
    flags += ["-I../include", "-I.", f"-ffile-prefix-map={EMU}=."]
    if name in PAYLOAD_SOURCE_EXTRA:
        source = PAYLOAD_SOURCE_EXTRA[name]
    else:
        flags += PAYLOAD_CFLAGS.get(name, []) + ARCH_CFLAGS.get(arch, [])
        source = PAYLOAD_SOURCE.get((name, arch), f"{name}.c")
    obj = work / f"{name}.{arch}.o"
    fixtures.run([gcc, *flags, "-c", source, "-o", str(obj)], cwd=EMU)
    # The payload patches hv.c: its FILE symbol is that file's, as Xen's build names it.
    fixtures.run([prefix + "objcopy", f"--redefine-sym={source}={FILE_SYMBOL}", str(obj)], cwd=EMU)
    notes = work / f"notes.{arch}.o"
    if not notes.exists():
        fixtures.run([gcc, "-c", str(fixtures.SRC / "notes.S"), "-o", str(notes)], cwd=EMU)
    dest = out / arch / f"{name}.livepatch"
    dest.parent.mkdir(parents=True, exist_ok=True)
    fixtures.run([prefix + "ld", "-r", "--build-id=sha1", "-o", str(dest), str(obj), str(notes)], cwd=EMU)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=EMU / "build", help="output directory (default: testdata/emu/build)")
    ap.add_argument("--arch", action="append", choices=list(ARCHES), help="only these architectures")
    args = ap.parse_args(argv)
    arches = args.arch or list(ARCHES)
    missing = [a for a in arches if not fixtures.toolchain_available(a)]
    if missing:
        print(f"build_emulation: no toolchain for {', '.join(missing)}", file=sys.stderr)
        return 2
    out: Path = args.out.resolve()
    built = 0
    with tempfile.TemporaryDirectory(prefix="lp-emu-") as tmp:
        for arch in arches:
            build_hypervisor(arch, out, Path(tmp))
            names = PAYLOADS + EXTRA.get(arch, ())
            for name in names:
                build_payload(name, arch, out, Path(tmp))
            built += 1 + len(names)
    print(f"built {built} images into {os.path.relpath(out, Path.cwd())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

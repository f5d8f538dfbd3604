#!/usr/bin/env python3
"""Build the payloads of the note rules (LP016, LP017) from committed fixtures, with the real objcopy.

Each is a payload of testdata/build/<arch>/ changed the way the tools that
produce such payloads change them:

* ``*_misaligned``: the two dependency notes removed and added back after the
  link with ``objcopy --add-section`` + ``--set-section-flags alloc,readonly``,
  as livepatch-build's create_patch() and Xen's in-tree test payloads add
  them: ``sh_addralign`` 1. A 3-byte read-only section is added first; it
  stands for the odd-sized string data a real link can end with, so that
  the notes land 3 bytes past a 4-byte boundary wherever the fixture's own
  read-only data ends.
* ``*_signed``: a ``.note.Xen.signature`` added as XenServer's livepatch-sign
  adds it (``objcopy --add-section``): note name ``Xen``, type 0, the v1
  descriptor ``{u16 version=1; u8 sig_algo=0 (rsa); u8 hash_algo=0
  (sha256); u32 sig_len; sig}``. The signature bytes are a fixed pattern:
  nothing here checks a signature, only that one is there.

    scripts/build_note_fixtures.py                  # rebuild testdata/notes/
    scripts/build_note_fixtures.py --out /tmp/notes # elsewhere

Sources: the committed testdata/build/ fixtures (keyhandler: references to
retarget; hello_world: nothing to retarget; action_hooks_nofunc: hooks only,
no .livepatch.funcs). Toolchains: binutils for
x86-64, aarch64-linux-gnu and arm-linux-gnueabihf.
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toolchain import PREFIX, have  # the same directory

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = ROOT / "testdata"
FIXTURES = TESTDATA / "build"
DEPENDS = (".livepatch.depends", ".livepatch.xen_depends")
PAD_SECTION = ".rodata.lp_tail"
SIGNATURE_SECTION = ".note.Xen.signature"
# (output name, source fixture, steps)
PAYLOADS = (
    ("keyhandler_misaligned", "keyhandler", ("misalign",)),
    ("hello_world_misaligned", "hello_world", ("misalign",)),
    ("action_hooks_nofunc_misaligned", "action_hooks_nofunc", ("misalign",)),
    ("keyhandler_signed", "keyhandler", ("sign",)),
    ("hello_world_signed", "hello_world", ("sign",)),
    ("hello_world_misaligned_signed", "hello_world", ("misalign", "sign")),
)


def toolchain_available(arch: str) -> bool:
    return have(arch, "objcopy")


def objcopy(arch: str, *args: str) -> None:
    cmd = [PREFIX[arch] + "objcopy", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
        raise SystemExit(f"build_note_fixtures: command failed ({proc.returncode})")


def signature_note() -> bytes:
    sig = bytes((7 * i + 1) & 0xFF for i in range(256))
    desc = struct.pack("<HBBI", 1, 0, 0, len(sig)) + sig
    name = b"Xen\0"
    return struct.pack("<III", len(name), len(desc), 0) + name + desc


def misalign(arch: str, path: Path, work: Path) -> None:
    """Re-add the depends notes after the link, the livepatch-build way (sh_addralign 1)."""
    pad = work / "pad.bin"
    pad.write_bytes(b"LP\0")
    notes = {}
    for sec in DEPENDS:
        notes[sec] = work / f"{sec.strip('.')}.bin"
        objcopy(arch, "--dump-section", f"{sec}={notes[sec]}", str(path))
    objcopy(
        arch,
        *(a for sec in DEPENDS for a in ("--remove-section", sec)),
        "--add-section",
        f"{PAD_SECTION}={pad}",
        "--set-section-flags",
        f"{PAD_SECTION}=alloc,readonly",
        str(path),
    )
    for sec in DEPENDS:  # two objcopy runs each, as create_patch() does
        objcopy(arch, "--add-section", f"{sec}={notes[sec]}", str(path))
        objcopy(arch, "--set-section-flags", f"{sec}=alloc,readonly", str(path))


def sign(arch: str, path: Path, work: Path) -> None:
    """Add a signature note the way livepatch-sign does."""
    note = work / "signature.dat"
    note.write_bytes(signature_note())
    objcopy(arch, "--add-section", f"{SIGNATURE_SECTION}={note}", str(path))


STEPS = {"misalign": misalign, "sign": sign}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=TESTDATA / "notes", help="output directory (default: testdata/notes)")
    args = ap.parse_args(argv)
    missing = [a for a in PREFIX if not toolchain_available(a)]
    if missing:
        print(f"build_note_fixtures: no binutils for {', '.join(missing)}", file=sys.stderr)
        return 2
    out: Path = args.out.resolve()
    built = 0
    with tempfile.TemporaryDirectory(prefix="lp-notes-") as tmp:
        for arch in PREFIX:
            for name, source, steps in PAYLOADS:
                dest = out / arch / f"{name}.livepatch"
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(FIXTURES / arch / f"{source}.livepatch", dest)
                for step in steps:
                    STEPS[step](arch, dest, Path(tmp))
                built += 1
    print(f"built {built} payloads into {os.path.relpath(out, Path.cwd())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

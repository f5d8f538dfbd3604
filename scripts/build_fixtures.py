#!/usr/bin/env python3
"""Build the test payloads in testdata/ with the real compilers.

Each fixture in testdata/fixtures.toml is compiled for x86-64, AArch64 and
32-bit Arm the way Xen builds payload objects (split sections, hidden
visibility; -fpic on x86), its STT_FILE symbol renamed to a path relative to
xen/ as Xen's CONFIG_ENFORCE_UNIQUE_SYMBOLS does, and linked with
``ld -r --build-id=sha1`` together with the two dependency notes.

    scripts/build_fixtures.py                  # rebuild testdata/build/
    scripts/build_fixtures.py --out /tmp/fresh # build a fresh copy elsewhere

Output is deterministic for a given toolchain (relative paths, prefix maps).
Toolchains: gcc (x86-64), gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf; the
prefixes and flags are scripts/toolchain.py's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toolchain import PAYLOAD_ARCH_CFLAGS, PAYLOAD_CFLAGS, PREFIX, have  # the same directory

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = ROOT / "testdata"
SRC = TESTDATA / "src"
MANIFEST = TESTDATA / "fixtures.toml"


def toolchain_available(arch: str) -> bool:
    return have(arch, "gcc", "ld")


def run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
        raise SystemExit(f"build_fixtures: command failed ({proc.returncode})")


def load_manifest() -> dict[str, dict[str, object]]:
    with open(MANIFEST, "rb") as f:
        data = tomllib.load(f)
    fixtures: dict[str, dict[str, object]] = data["fixture"]
    return fixtures


def sources_for(spec: dict[str, object], arch: str) -> list[str]:
    per_arch = spec.get("source_" + arch)
    src = per_arch if per_arch is not None else spec["source"]
    if isinstance(src, str):
        return [src]
    assert isinstance(src, list | tuple), spec
    return [str(s) for s in src]


def arches_for(spec: dict[str, object]) -> list[str]:
    arches = spec.get("arches", list(PREFIX))
    assert isinstance(arches, list | tuple), spec
    return [str(a) for a in arches]


def build_fixture(name: str, spec: dict[str, object], arch: str, out: Path, work: Path) -> Path:
    prefix = PREFIX[arch]
    gcc = prefix + "gcc"
    include = subprocess.run(
        [gcc, "-print-file-name=include"], capture_output=True, text=True, check=True
    ).stdout.strip()
    flags = PAYLOAD_CFLAGS + PAYLOAD_ARCH_CFLAGS[arch]
    flags += ["-isystem", include, "-I../include", f"-ffile-prefix-map={SRC}=."]
    flags += list(spec.get("cflags", []))  # type: ignore[call-overload]
    flags += list(spec.get("cflags_" + arch, []))  # type: ignore[call-overload]
    objs = []
    for src in sources_for(spec, arch):
        obj = work / f"{name}.{arch}.{Path(src).stem}.o"
        run([gcc, *flags, "-c", src, "-o", str(obj)], cwd=SRC)
        file_name = spec.get("file")
        if file_name:
            # What Xen's Rules.mk does under ENFORCE_UNIQUE_SYMBOLS: the FILE
            # symbol becomes the source path relative to xen/.
            run([prefix + "objcopy", f"--redefine-sym={Path(src).name}={file_name}", str(obj)], cwd=SRC)
        objs.append(str(obj))
    notes = work / f"notes.{arch}.o"
    if not notes.exists():
        run([gcc, "-c", "notes.S", "-o", str(notes)], cwd=SRC)
    dest = out / arch / f"{name}.livepatch"
    dest.parent.mkdir(parents=True, exist_ok=True)
    run([prefix + "ld", "-r", "--build-id=sha1", "-o", str(dest), *objs, str(notes)], cwd=SRC)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=TESTDATA / "build", help="output directory (default: testdata/build)")
    ap.add_argument("--arch", action="append", choices=list(PREFIX), help="only these architectures")
    ap.add_argument("--only", action="append", metavar="FIXTURE", help="only these fixtures")
    args = ap.parse_args(argv)
    arches = args.arch or list(PREFIX)
    missing = [a for a in arches if not toolchain_available(a)]
    if missing:
        print(
            f"build_fixtures: no toolchain for {', '.join(missing)} "
            "(apt-get install gcc gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf)",
            file=sys.stderr,
        )
        return 2
    fixtures = load_manifest()
    out: Path = args.out.resolve()
    built = 0
    with tempfile.TemporaryDirectory(prefix="lp-fixtures-") as tmp:
        for name, spec in fixtures.items():
            if args.only and name not in args.only:
                continue
            for arch in arches:
                if arch in arches_for(spec):
                    build_fixture(name, spec, arch, out, Path(tmp))
                    built += 1
    print(f"built {built} payloads into {os.path.relpath(out, Path.cwd())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

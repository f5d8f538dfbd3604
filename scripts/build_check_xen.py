#!/usr/bin/env python3
"""Build the small hypervisor-like images `lp-rewrite check --xen-syms` is tested with.

For each architecture, testdata/check/src/*.c is compiled and linked into
testdata/check/<arch>/xen-syms the way Xen links its own xen-syms, as far as
the checker can tell:

* every object's STT_FILE symbol is the source path relative to xen/
  (``objcopy --redefine-sym``, as CONFIG_ENFORCE_UNIQUE_SYMBOLS does), and
  dup.c is built twice under one name, so a static in it is ambiguous;
* x86 code is built with ``-fcf-protection=branch -mmanual-endbr`` (Xen's
  CONFIG_XEN_IBT): only ``cf_check`` functions start with ENDBR64;
* the linker script brackets ``.init.data.cf_clobber`` and
  ``.init.rodata.cf_clobber`` with ``__initdata_cf_clobber_start``/``_end``
  and ``.text`` with ``_stext``/``_etext``, as xen/arch/x86/xen.lds.S does
  (kernel.c seals one function through each of the two tables);
* ``__init`` code and ``__initdata`` go to the output sections
  ``.init.text`` and ``.init.data``, outside ``[_stext, _etext)``, as in
  Xen's xen-syms (memory Xen frees at the end of boot).

It also builds the payloads that only make sense against these images,
testdata/check/payloads/*.c, into testdata/check/<arch>/<name>.livepatch,
exactly as scripts/build_fixtures.py builds its fixtures (same flags, FILE
symbol ``common/<name>.c``, ``ld -r --build-id`` with the depends notes).
Flags and link addresses: scripts/toolchain.py.

    scripts/build_check_xen.py                  # rebuild testdata/check/<arch>/
    scripts/build_check_xen.py --out /tmp/xen   # elsewhere

Output is deterministic for a given toolchain.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_fixtures import build_fixture, toolchain_available  # the same directory
from toolchain import IMAGE_ARCH_CFLAGS, IMAGE_CFLAGS, PREFIX, XEN_TEXT

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "testdata" / "check" / "src"
PAYLOADS = ROOT / "testdata" / "check" / "payloads"
DEFAULT_OUT = ROOT / "testdata" / "check"

# (source, output object stem, FILE symbol, extra flags)
UNITS = [
    ("kernel.c", "kernel", "common/kernel.c", []),
    ("dup.c", "dup1", "common/dup.c", ["-DVARIANT=1", "-DDUP_ENTRY=dup_entry1"]),
    ("dup.c", "dup2", "common/dup.c", ["-DVARIANT=2", "-DDUP_ENTRY=dup_entry2"]),
]

LINKER_SCRIPT = """\
ENTRY(start)
SECTIONS
{{
    . = {base:#x};
    .text : {{
        _stext = .;
        *(.text .text.*)
        _etext = .;
    }}
    .rodata : {{ *(.rodata .rodata.*) }}
    .note.gnu.build-id : {{ *(.note.gnu.build-id) }}
    .data : {{ *(.data .data.*) }}
    .init.text : {{ *(.init.text) }}
    .init.data : {{
        . = ALIGN({ptr});
        __initdata_cf_clobber_start = .;
        *(.init.data.cf_clobber)
        *(.init.rodata.cf_clobber)
        __initdata_cf_clobber_end = .;
        *(.init.data .init.rodata)
    }}
    .bss : {{ *(.bss .bss.*) }}
    /DISCARD/ : {{ *(.comment) *(.note.GNU-stack) *(.eh_frame) *(.ARM.attributes) }}
}}
"""


def run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode or proc.stderr.strip():
        sys.stderr.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
        if proc.returncode:
            raise SystemExit(f"build_check_xen: command failed ({proc.returncode})")


def build(arch: str, out: Path, work: Path) -> Path:
    prefix = PREFIX[arch]
    gcc = prefix + "gcc"
    include = subprocess.run([gcc, "-print-file-name=include"], capture_output=True, text=True, check=True)
    flags = [*IMAGE_CFLAGS, *IMAGE_ARCH_CFLAGS[arch], "-isystem", include.stdout.strip(), f"-ffile-prefix-map={SRC}=."]
    objs = []
    for source, stem, file_name, extra in UNITS:
        obj = work / f"{arch}.{stem}.o"
        run([gcc, *flags, *extra, "-c", source, "-o", str(obj)], cwd=SRC)
        run([prefix + "objcopy", f"--redefine-sym={source}={file_name}", str(obj)], cwd=SRC)
        objs.append(str(obj))
    script = work / f"{arch}.lds"
    script.write_text(LINKER_SCRIPT.format(base=XEN_TEXT[arch], ptr=4 if arch == "arm" else 8))
    dest = out / arch / "xen-syms"
    dest.parent.mkdir(parents=True, exist_ok=True)
    ld = [
        prefix + "ld",
        "-T",
        str(script),
        "--build-id=sha1",
        "-z",
        "noexecstack",
        "-z",
        "max-page-size=0x1000",
        "--no-warn-rwx-segments",
    ]
    run([*ld, "-o", str(dest), *objs], cwd=SRC)
    return dest


def build_payloads(arch: str, out: Path, work: Path) -> list[Path]:
    """testdata/check/payloads/*.c, each built like a fixture of testdata/fixtures.toml."""
    built = []
    for source in sorted(PAYLOADS.glob("*.c")):
        # build_fixture compiles in testdata/src (fixture.h, notes.S); the source is named from there.
        spec: dict[str, object] = {"source": os.path.relpath(source, ROOT / "testdata" / "src")}
        spec["file"] = f"common/{source.name}"
        built.append(build_fixture(source.stem, spec, arch, out, work))
    return built


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: testdata/check)")
    ap.add_argument("--arch", action="append", choices=list(PREFIX), help="only these architectures")
    args = ap.parse_args(argv)
    arches = args.arch or list(PREFIX)
    missing = [a for a in arches if not toolchain_available(a)]
    if missing:
        print(f"build_check_xen: no toolchain for {', '.join(missing)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="lp-check-xen-") as tmp:
        payloads = 0
        for arch in arches:
            build(arch, args.out.resolve(), Path(tmp))
            payloads += len(build_payloads(arch, args.out.resolve(), Path(tmp)))
    print(f"built {len(arches)} image(s) and {payloads} payload(s) into {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

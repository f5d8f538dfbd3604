#!/usr/bin/env python3
"""A miniature of livepatch-build's last steps, built from testdata/lpbuild/.

livepatch-build (livepatch-build-tools, x86-64 only) ends a build with::

    create-diff-object [--resolve] original/X.o patched/X.o xen-syms output/X.o  # each changed object
    cp patched/Y.o output/Y.o                                                    # each new object
    ld -r -o NAME.livepatch --build-id=sha1 output/...o
        # --prelink instead: ld -r -o output.o ...; prelink output.o NAME.livepatch xen-syms
    strip -w -N 'livepatch_<hook>_data_*'... -N <each symbol of .livepatch.funcs> NAME.livepatch
    objcopy --add-section .livepatch.depends=depends.bin NAME.livepatch
    objcopy --set-section-flags .livepatch.depends=alloc,readonly NAME.livepatch
    # and the same two for .livepatch.xen_depends

This module redoes those steps on a small hypervisor and patch, so that the
tests can run lp-rewrite at each point where it can go:

* ``xen/`` is the hypervisor, compiled like Xen (FILE symbols renamed to the
  path relative to xen/, as CONFIG_ENFORCE_UNIQUE_SYMBOLS does; on x86 with
  CONFIG_XEN_IBT's ``-fcf-protection=branch -mmanual-endbr``, so only its
  ``cf_check`` functions, those whose address it takes, start with ENDBR64)
  and linked at Xen's address into ``xen-syms``. common/dup.c is built twice
  under one FILE name, like a multiply compiled Xen source.
* ``patch/`` holds the sources of create-diff-object's output objects: the
  changed and new functions, unchanged ones only declared. :func:`shape`
  gives a compiled object the rest of create-diff-object's shape
  (create-diff-object.c as of 2020): relocations against a bundled section's
  symbol moved to that section's function or object symbol, addend kept
  (kpatch_replace_sections_syms); the unchanged statics as undefined
  STB_LOCAL symbols of their old type (kpatch_include_symbol keeps their
  binding); every local function and object renamed ``FILE#name``
  (livepatch_rename_local_symbols); ``.livepatch.funcs`` sizes, and with
  ``resolve`` old_addr, from xen-syms (livepatch_create_patches_sections);
  ``sh_entsize`` of the two sections it creates; and the symbol order NULL,
  FILE, local functions, other locals, globals (kpatch_reorder_symbols).
  The ``.livepatch.funcs`` entries and ``.livepatch.strings`` themselves
  come from the sources (testdata/lpbuild/lpbuild.h).
* :func:`prelink` does what prelink.c does: every undefined symbol becomes
  SHN_ABS with its xen-syms address, looked up with lookup.c's rules (a
  local after dropping everything up to '#', in the scope of the nearest
  preceding FILE symbol; a global among STB_GLOBAL symbols). Only symbol
  values and section indices change (prelink also regenerates the string
  and symbol tables, which changes nothing else).
* :func:`strip_metadata_symbols` and :func:`add_depends` run the real strip
  and objcopy with livepatch-build's arguments.

On Arm there is no create-diff-object, and GNU ld -r there refuses undefined
local symbols; the Arm objects therefore name unchanged statics with
undefined *global* ``FILE#name`` symbols (``local_statics=False``).

The xen-syms lookups here follow lookup.c and share no code with lp_rewrite,
so the tests compare two independent answers.

    scripts/lpbuild_mini.py --out /tmp/mini             # /tmp/mini/{xen-syms,output/,mini.livepatch}
    scripts/lpbuild_mini.py --out /tmp/mini --prelink   # the --prelink variant
"""

from __future__ import annotations

import argparse
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lp_rewrite.elf import consts as C
from lp_rewrite.elf.file import ElfFile
from lp_rewrite.elf.writer import serialize

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
try:
    import build_fixtures
    import toolchain  # the same compilers and flags as the fixtures
finally:
    sys.path.pop(0)

LPBUILD = ROOT / "testdata" / "lpbuild"
PREFIX = toolchain.PREFIX
# Where the hypervisor is linked: Xen's own text addresses.
XEN_BASE = toolchain.LPBUILD_XEN_TEXT
# create-diff-object refuses a function smaller than the patch instruction.
PATCH_INSN_SIZE = {"x86_64": 5, "aarch64": 4, "arm": 4}
HOOK_PREFIXES = tuple(
    f"livepatch_{h}_data_"
    for h in ("load", "unload", "preapply", "apply", "postapply", "prerevert", "revert", "postrevert")
)
# The hypervisor: (source, FILE name, extra flags); dup.c twice under one name.
XEN_OBJECTS = (
    ("xen/common/stubs.c", "common/stubs.c", ()),
    ("xen/common/a.c", "common/a.c", ()),
    ("xen/common/b.c", "common/b.c", ()),
    ("xen/common/dup.c", "common/dup.c", ("-DVARIANT=1",)),
    ("xen/common/dup.c", "common/dup.c", ("-DVARIANT=2",)),
)
# create-diff-object's output objects: FILE name -> unchanged statics they
# reference (name -> symbol type), which stay in the hypervisor.
PATCH_OBJECTS: Mapping[str, Mapping[str, int]] = {
    "common/a.c": {"bar": C.STT_FUNC, "a_count": C.STT_OBJECT},
    "common/b.c": {"helper": C.STT_FUNC},
}
NEW_OBJECTS = ("common/c.c",)  # new files, copied into the payload as they are
DUP_OBJECT = "common/dup.c"  # a patch to the twice-compiled static (its own payload)
DEPENDS = "00112233445566778899aabbccddeeff00112233"
XEN_DEPENDS = "deadbeef000102030405060708090a0b0c0d0e0f"


def run(cmd: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def toolchain_available(arch: str) -> bool:
    return build_fixtures.toolchain_available(arch) and toolchain.have(arch, "objcopy", "strip", "objdump")


# -- xen-syms lookups, after livepatch-build-tools' lookup.c -------------------


@dataclass(frozen=True)
class XenSym:
    name: str
    value: int
    size: int
    bind: str
    kind: str


class XenSymsLookup:
    """xen-syms' ELF symbol table, searched the way lookup.c searches it."""

    def __init__(self, path: Path, *, first_of_ambiguous: bool = False) -> None:
        from elftools.elf.elffile import ELFFile
        from elftools.elf.sections import SymbolTableSection

        self.first_of_ambiguous = first_of_ambiguous

        with open(path, "rb") as f:
            symtab = ELFFile(f).get_section_by_name(".symtab")
            assert isinstance(symtab, SymbolTableSection), f"{path}: no symbol table"
            self.symbols = [
                XenSym(s.name, s["st_value"], s["st_size"], s["st_info"]["bind"], s["st_info"]["type"])
                for s in symtab.iter_symbols()
                if s["st_shndx"] != "SHN_UNDEF"
            ]

    def local(self, name: str, hint: str) -> XenSym:
        """lookup_local_symbol(): the one STB_LOCAL ``name`` in FILE ``hint``'s groups."""
        match: XenSym | None = None
        in_file = False
        for s in self.symbols:
            if s.kind == "STT_FILE":
                in_file = s.name == hint
                continue
            if in_file and s.bind == "STB_LOCAL" and s.name == name:
                if match is not None and self.first_of_ambiguous:
                    return match
                if match is not None:
                    raise LookupError(f"lookup_local_symbol {name} ({hint}): ambiguous")
                match = s
        if match is None:
            raise LookupError(f"lookup_local_symbol {name} ({hint}): not found")
        return match

    def global_(self, name: str) -> XenSym:
        """lookup_global_symbol(): the first STB_GLOBAL ``name``."""
        for s in self.symbols:
            if s.bind == "STB_GLOBAL" and s.name == name:
                return s
        raise LookupError(f"lookup_global_symbol {name}: not found")

    def by_xen_name(self, name: str) -> XenSym:
        """A ``.livepatch.funcs`` name: ``FILE#func`` for a static, else global."""
        if "#" in name:
            hint, _, func = name.rpartition("#")
            return self.local(func, hint)
        return self.global_(name)


# -- building ---------------------------------------------------------------


def compile_object(arch: str, src: str, obj: Path, file_name: str, extra: Iterable[str] = ()) -> Path:
    """Compile like build_fixtures (Xen's flags, with CET-IBT on x86), then name the FILE symbol as Xen does."""
    gcc = PREFIX[arch] + "gcc"
    include = run([gcc, "-print-file-name=include"]).strip()
    flags = toolchain.PAYLOAD_CFLAGS + toolchain.PAYLOAD_ARCH_CFLAGS[arch] + toolchain.IBT_CFLAGS.get(arch, [])
    flags += ["-isystem", include, "-I../include", "-I.", f"-ffile-prefix-map={LPBUILD}=.", *extra]
    obj.parent.mkdir(parents=True, exist_ok=True)
    run([gcc, *flags, "-c", src, "-o", str(obj)], cwd=LPBUILD)
    run([PREFIX[arch] + "objcopy", f"--redefine-sym={Path(src).name}={file_name}", str(obj)])
    return obj


def build_xen_syms(arch: str, work: Path, base: int | None = None) -> Path:
    """The miniature hypervisor's xen-syms, linked at Xen's address (or at ``base``)."""
    objs = []
    for n, (src, file_name, extra) in enumerate(XEN_OBJECTS):
        objs.append(str(compile_object(arch, src, work / "xen" / f"{n}.o", file_name, extra)))
    out = work / "xen-syms"
    text = XEN_BASE[arch] if base is None else base
    run([PREFIX[arch] + "ld", "-o", str(out), f"-Ttext={text:#x}", "-e", "0", "--build-id=sha1", *objs])
    return out


@dataclass
class _Sym:
    name: str
    info: int
    other: int
    shndx: int
    value: int
    size: int

    @property
    def bind(self) -> int:
        return self.info >> 4

    @property
    def kind(self) -> int:
        return self.info & 0xF


def shape(
    obj: Path,
    out: Path,
    *,
    arch: str,
    xen: XenSymsLookup,
    statics: Mapping[str, int],
    resolve: bool = False,
    local_statics: bool = True,
) -> Path:
    """Give a compiled object create-diff-object's output shape (see the module doc)."""
    elf = ElfFile(obj.read_bytes(), str(obj))
    lay = elf.layout
    t = elf.symbols
    if t.shndx_section is not None or any(s.sh_type == C.SHT_GROUP for s in elf.sections):
        raise RuntimeError(f"{obj}: extended indices or groups: not a create-diff-object input here")
    syms = [_Sym(t.name(i), t.info[i], t.other[i], t.shndx[i], t.value[i], t.size[i]) for i in range(t.count)]
    hint = next((s.name for s in syms if s.kind == C.STT_FILE), None)
    if hint is None:
        raise RuntimeError(f"{obj}: FILE symbol not found in output. Stripped?")

    # kpatch_replace_sections_syms: a bundled section's symbol -> its one symbol.
    members: dict[int, list[int]] = {}
    for i, s in enumerate(syms):
        if s.kind in (C.STT_FUNC, C.STT_OBJECT) and 0 < s.shndx < C.SHN_LORESERVE:
            members.setdefault(s.shndx, []).append(i)
    bundled = {sec: ids[0] for sec, ids in members.items() if len(ids) == 1 and syms[ids[0]].value == 0}
    replace = {i: bundled[s.shndx] for i, s in enumerate(syms) if s.kind == C.STT_SECTION and s.shndx in bundled}
    relocs: dict[int, list[list[int]]] = {}
    for idx in elf.relocation_sections:
        tab = elf.relocations(idx)
        relocs[idx] = [
            [tab.offsets[k], tab.types[k], replace.get(tab.syms[k], tab.syms[k]), tab.addends[k] if tab.addends else 0]
            for k in range(tab.count)
        ]

    # Unchanged statics: undefined, their old binding and type back.
    for s in syms:
        if s.shndx == C.SHN_UNDEF and s.name in statics:
            s.info = C.st_info(C.STB_LOCAL if local_statics else C.STB_GLOBAL, statics[s.name])
            s.other = C.STV_DEFAULT
            if not local_statics:
                s.name = f"{hint}#{s.name}"

    # livepatch_create_patches_sections: sizes and (--resolve) old_addr from xen-syms.
    funcs = elf.section_by_name(".livepatch.funcs")
    strings = elf.section_by_name(".livepatch.strings")
    if funcs is None or strings is None:
        raise RuntimeError(f"{obj}: no .livepatch.funcs/.livepatch.strings (see testdata/lpbuild/lpbuild.h)")
    ptr = lay.ptr_size
    entry = 104 if ptr == 8 else 92
    fdata = bytearray(elf.section_data(funcs.index))
    field: dict[int, tuple[int, int]] = {}
    for idx, rows in relocs.items():
        if elf.sections[idx].sh_info == funcs.index:
            for off, _rtype, sym, addend in rows:
                implicit = struct.unpack_from("<I", fdata, off)[0] if ptr == 4 else 0
                field[off] = (sym, addend + implicit)
    sdata = bytes(elf.section_data(strings.index))
    for base in range(0, len(fdata), entry):
        name_sym, name_off = field[base]
        start = syms[name_sym].value + name_off
        name = sdata[start : sdata.index(b"\0", start)].decode()
        new_sym, _ = field[base + ptr]
        original = xen.by_xen_name(name)
        if original.size < PATCH_INSN_SIZE[arch]:
            raise RuntimeError(f"{name} too small to patch")
        ptr_fmt = "<Q" if ptr == 8 else "<I"
        struct.pack_into(ptr_fmt, fdata, base + 2 * ptr, original.value if resolve else 0)
        struct.pack_into("<II", fdata, base + 3 * ptr, syms[new_sym].size, original.size)
    entsizes = {funcs.index: entry, strings.index: 1}

    # livepatch_rename_local_symbols.
    for s in syms[1:]:
        if s.bind == C.STB_LOCAL and s.kind in (C.STT_FUNC, C.STT_OBJECT) and s.name:
            s.name = f"{hint}#{s.name}"

    # kpatch_reorder_symbols: NULL, FILE, local FUNC, other locals, globals.
    def rank(i: int) -> int:
        s = syms[i]
        if s.kind == C.STT_FILE:
            return 1
        if s.bind == C.STB_LOCAL:
            return 2 if s.kind == C.STT_FUNC else 3
        return 4

    order = [0, *sorted(range(1, len(syms)), key=rank)]
    new_index = {old: new for new, old in enumerate(order)}
    first_global = next((n for n, old in enumerate(order) if rank(old) == 4), len(order)) if len(order) > 1 else 1

    strtab = bytearray(b"\0")
    symdata = bytearray()
    for old in order:
        s = syms[old]
        name_off = 0
        if s.name:
            name_off = len(strtab)
            strtab += s.name.encode() + b"\0"
        symdata += lay.pack_sym(name_off, s.info, s.other, s.shndx, s.value, s.size)
    new_data: dict[int, bytes] = {elf.symtab_index: bytes(symdata), t.strtab_index: bytes(strtab)}
    for idx, rows in relocs.items():
        is_rela = elf.sections[idx].sh_type == C.SHT_RELA
        buf = bytearray()
        for off, rtype, sym, addend in rows:
            info = lay.r_info(new_index[sym], rtype)
            buf += lay.rela.pack(off, info, addend) if is_rela else lay.rel.pack(off, info)
        new_data[idx] = bytes(buf)
    new_data[funcs.index] = bytes(fdata)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(serialize(elf, new_data, {elf.symtab_index: first_global}, entsizes))
    return out


def prelink(src: Path, dst: Path, xen: XenSymsLookup) -> Path:
    """prelink.c: every undefined symbol becomes SHN_ABS at its xen-syms address."""
    elf = ElfFile(src.read_bytes(), str(src))
    lay = elf.layout
    t = elf.symbols
    symdata = bytearray(elf.section_data(elf.symtab_index))
    curfile = ""
    for i in range(1, t.count):
        name = t.name(i)
        if t.type(i) == C.STT_FILE:
            curfile = name
        if not name or t.shndx[i] != C.SHN_UNDEF:
            continue
        found = xen.local(name.partition("#")[2] or name, curfile) if t.bind(i) == C.STB_LOCAL else xen.global_(name)
        off = i * lay.sym.size
        symdata[off : off + lay.sym.size] = lay.pack_sym(
            t.name_off[i], t.info[i], t.other[i], C.SHN_ABS, found.value, t.size[i]
        )
    dst.write_bytes(serialize(elf, {elf.symtab_index: bytes(symdata)}))
    return dst


def ld_r(arch: str, out: Path, objs: Iterable[Path]) -> Path:
    run([PREFIX[arch] + "ld", "-r", "-o", str(out), "--build-id=sha1", *map(str, objs)])
    return out


def strip_metadata_symbols(arch: str, path: Path) -> None:
    """livepatch-build's strip_metadata_symbols (hook prefixes as it means them, unquoted)."""
    names: list[str] = []
    listing = subprocess.run(
        [PREFIX[arch] + "objdump", "-w", "-j", ".livepatch.funcs", "-t", str(path)], capture_output=True, text=True
    )
    if listing.returncode == 0:
        seen = False
        for line in listing.stdout.splitlines():
            if line.startswith("SYMBOL TABLE:"):
                seen = True
            elif seen and line.split():
                names.append(line.split()[-1])
    cmd = [PREFIX[arch] + "strip", "-w"]
    for prefix in HOOK_PREFIXES:
        cmd += ["-N", prefix + "*"]
    for name in sorted(set(names)):
        cmd += ["-N", name]
    run([*cmd, str(path)])


def depends_note(build_id: str) -> bytes:
    """perl -e "print pack 'VVVZ*H*', 4, 20, 3, 'GNU', ID"."""
    return struct.pack("<III", 4, len(build_id) // 2, 3) + b"GNU\0" + bytes.fromhex(build_id)


def add_depends(arch: str, path: Path, work: Path) -> None:
    objcopy = PREFIX[arch] + "objcopy"
    for section, build_id in ((".livepatch.depends", DEPENDS), (".livepatch.xen_depends", XEN_DEPENDS)):
        note = work / f"{section.strip('.').replace('.', '_')}.bin"
        note.write_bytes(depends_note(build_id))
        run([objcopy, "--add-section", f"{section}={note}", str(path)])
        run([objcopy, "--set-section-flags", f"{section}=alloc,readonly", str(path)])


@dataclass
class Miniature:
    """One arch's hypervisor and create-diff-object output, ready to link."""

    arch: str
    work: Path
    xen_syms: Path
    objects: list[Path]  # output/common/*.o: the create-diff-object ones, then new files
    patched: list[Path]  # the ones with .livepatch.funcs


def build(arch: str, work: Path, *, resolve: bool = False) -> Miniature:
    """xen-syms plus livepatch-build's output/ directory for this patch."""
    xen_syms = build_xen_syms(arch, work)
    xen = XenSymsLookup(xen_syms)
    objects: list[Path] = []
    for file_name, statics in PATCH_OBJECTS.items():
        raw = compile_object(arch, f"patch/{file_name}", work / "patched" / f"{file_name}.o", file_name)
        objects.append(
            shape(
                raw,
                work / "output" / f"{file_name[:-2]}.o",
                arch=arch,
                xen=xen,
                statics=statics,
                resolve=resolve,
                local_statics=arch == "x86_64",
            )
        )
    patched = list(objects)
    for file_name in NEW_OBJECTS:
        objects.append(compile_object(arch, f"patch/{file_name}", work / "output" / f"{file_name[:-2]}.o", file_name))
    return Miniature(arch, work, xen_syms, objects, patched)


def build_dup_object(mini: Miniature, out: Path, *, resolve: bool = False) -> Path:
    """create-diff-object's output for a patch to common/dup.c's twin() (old_addr 0, or with
    ``resolve`` the first twin's address: what a build that picked one writes)."""
    raw = compile_object(mini.arch, f"patch/{DUP_OBJECT}", mini.work / "patched" / "dup.o", DUP_OBJECT)
    # create-diff-object itself stops at the ambiguous name; take the first
    # match to get the object built (old_size, and the literal, come from it).
    xen = XenSymsLookup(mini.xen_syms, first_of_ambiguous=True)
    return shape(raw, out, arch=mini.arch, xen=xen, statics={}, resolve=resolve, local_statics=mini.arch == "x86_64")


def livepatch_build_tail(
    mini: Miniature,
    out_dir: Path,
    name: str = "mini",
    *,
    objects: Iterable[Path] | None = None,
    prelinked: bool = False,
    after: Callable[[str, Path], None] | None = None,
) -> Path:
    """create_patch() after create-diff-object: link (and prelink), strip, depends notes.

    ``after(step, payload)`` runs after each step: "link" (ld -r, or prelink),
    "strip" and "depends"; the tests put lp-rewrite there.
    """
    objs = list(mini.objects if objects is None else objects)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = out_dir / f"{name}.livepatch"
    if prelinked:
        linked = ld_r(mini.arch, out_dir / "output.o", objs)
        prelink(linked, payload, XenSymsLookup(mini.xen_syms))
    else:
        ld_r(mini.arch, payload, objs)
    payload.chmod(0o755)  # livepatch-build: chmod +x
    steps: list[tuple[str, Callable[[], None]]] = [
        ("link", lambda: None),
        ("strip", lambda: strip_metadata_symbols(mini.arch, payload)),
        ("depends", lambda: add_depends(mini.arch, payload, out_dir)),
    ]
    for step, action in steps:
        action()
        if after is not None:
            after(step, payload)
    return payload


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="output directory (like livepatch-build -o)")
    ap.add_argument("--arch", choices=list(PREFIX), default="x86_64")
    ap.add_argument("--prelink", action="store_true", help="create-diff-object --resolve, then prelink")
    args = ap.parse_args(argv)
    if not toolchain_available(args.arch):
        print(f"lpbuild_mini: no {PREFIX[args.arch]}gcc/binutils", file=sys.stderr)
        return 2
    out = args.out.resolve()
    mini = build(args.arch, out, resolve=args.prelink)
    payload = livepatch_build_tail(mini, out, prelinked=args.prelink)
    print(payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""The long fuzz run: millions of mutated payloads through the reader and rewriter.

The contract under test is the command line's, checked in-process (no
subprocess per input): for any bytes, ``explain``, ``check`` and ``rewrite``
either succeed -- and then the rewrite's output passed the built-in proof,
the ``verify`` certificate (:func:`lp_rewrite.certificate.certify`, what
``rewrite --verify`` runs) and a second run on it is a byte-identical no-op
-- or fail with an exit-2 error whose message is one line. The certificate
may refuse only the *original*, the way Xen's loader would (then
``rewrite --verify`` exits 2), and it must refuse the original against
itself the same way. Anything else is a *crash*: another exception (the
CLI's exit 70), a failed proof or a certificate that disagrees with an
accepted rewrite (exit 1), a hang (more than ``--timeout`` CPU seconds), or
a memory blow-up. Each crash is counted under its *site* (exception type and
innermost project frame; for a certificate disagreement, also the shape of
its message) and its input saved under ``--crash-dir``.

Inputs are the committed fixtures (all three architectures) plus variants
this script derives from them (extended section numbering, a
``.symtab_shndx`` section), mutated by a structure-aware mutator -- it edits
fields of the ELF header, section headers, symbols, relocations,
``.livepatch.funcs`` entries, relocated places and string tables, with
boundary values -- mixed with plain byte flips, splices and truncation.

Engines:

* ``atheris`` (default when installed: ``pip install atheris``): libFuzzer,
  coverage-guided, with the structure-aware mutator mixed with libFuzzer's.
* ``builtin``: a seeded mutation loop with a pool of accepted mutants
  (reproducible with ``--seed``; no extra dependency).

Examples::

    python scripts/fuzz.py --runs 1000000 --jobs 2            # the long run
    python scripts/fuzz.py --engine builtin --runs 20000      # quick, reproducible
    python scripts/fuzz.py --replay fuzz-crashes/             # re-run saved crashes

Exit status: 0 when no crash (certificate disagreements included) was
found, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import re
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Fuzz the tree this script belongs to, whatever an editable install points at.
sys.path.insert(0, str(ROOT))
SEED_DIR = ROOT / "testdata" / "build"
MAX_LEN = 1 << 16  # fixtures are < 10 KiB; mutants may grow a little

# --------------------------------------------------------------------------
# Seeds


def fixture_seeds() -> list[bytes]:
    return [p.read_bytes() for p in sorted(SEED_DIR.glob("*/*.livepatch"))]


def _u(data: bytes | bytearray, off: int, size: int) -> int:
    return int.from_bytes(data[off : off + size], "little")


def _shdr_geometry(data: bytes | bytearray) -> tuple[bool, int, int, int, int]:
    """(is64, e_shoff, shentsize, e_shnum, e_shstrndx) of a well-formed object."""
    is64 = data[4] == 2
    if is64:
        return True, _u(data, 0x28, 8), 64, _u(data, 0x3C, 2), _u(data, 0x3E, 2)
    return False, _u(data, 0x20, 4), 40, _u(data, 0x30, 2), _u(data, 0x32, 2)


def extended_numbering(data: bytes) -> bytes:
    """The same object with e_shnum = 0 and e_shstrndx = SHN_XINDEX (gABI extended numbering)."""
    buf = bytearray(data)
    is64, shoff, _ent, shnum, shstrndx = _shdr_geometry(buf)
    if is64:
        struct.pack_into("<HH", buf, 0x3C, 0, 0xFFFF)
        struct.pack_into("<Q", buf, shoff + 0x20, shnum)  # section 0's sh_size
    else:
        struct.pack_into("<HH", buf, 0x30, 0, 0xFFFF)
        struct.pack_into("<I", buf, shoff + 0x14, shnum)
    struct.pack_into("<I", buf, shoff + (0x28 if is64 else 0x18), shstrndx)  # section 0's sh_link
    return bytes(buf)


def _section_headers(data: bytes | bytearray) -> tuple[struct.Struct, list[list[int]]]:
    is64, shoff, ent, shnum, _ = _shdr_geometry(data)
    hdr = struct.Struct("<IIQQQQIIQQ" if is64 else "<IIIIIIIIII")
    return hdr, [list(hdr.unpack_from(data, shoff + i * ent)) for i in range(shnum)]


def edit_sections(data: bytes, edit: Callable[[list[list[int]], bytearray], None]) -> bytes:
    """Let ``edit`` change the section headers (``[sh_name, sh_type, sh_flags,
    sh_addr, sh_offset, sh_size, sh_link, sh_info, sh_addralign, sh_entsize]``,
    appending to the list adds a section) and append data to the file; a new
    header table is then written at the end. The old table stays behind as
    bytes no section claims."""
    buf = bytearray(data)
    hdr, headers = _section_headers(buf)
    is64 = buf[4] == 2
    edit(headers, buf)
    buf.extend(bytes(-len(buf) % 8))
    shoff = len(buf)
    buf.extend(b"".join(hdr.pack(*h) for h in headers))
    if is64:
        struct.pack_into("<Q", buf, 0x28, shoff)
        struct.pack_into("<H", buf, 0x3C, len(headers))
    else:
        struct.pack_into("<I", buf, 0x20, shoff)
        struct.pack_into("<H", buf, 0x30, len(headers))
    return bytes(buf)


def append_blob(buf: bytearray, blob: bytes, align: int = 8) -> int:
    """Append ``blob`` (aligned) to the file; its offset."""
    buf.extend(bytes(-len(buf) % max(align, 1)))
    pos = len(buf)
    buf.extend(blob)
    return pos


def section_index(data: bytes, name: str) -> int:
    """Index of the first section called ``name`` (read without the project's reader)."""
    _, _, _, _, shstrndx = _shdr_geometry(data)
    _, headers = _section_headers(data)
    names = headers[shstrndx]
    table = data[names[4] : names[4] + names[5]]
    for i, h in enumerate(headers):
        if table[h[0] : table.index(b"\0", h[0])] == name.encode():
            return i
    raise KeyError(name)


def add_section(data: bytes, name: str, blob: bytes, sh_type: int, **fields: int) -> bytes:
    """The object with one more section (named in a grown copy of the section
    name table). ``fields``: flags, link, info, align, entsize."""
    _, _, _, _, shstrndx = _shdr_geometry(data)

    def edit(headers: list[list[int]], buf: bytearray) -> None:
        names = headers[shstrndx]
        table = bytes(buf[names[4] : names[4] + names[5]]) + name.encode() + b"\0"
        name_off = names[5]
        names[4], names[5] = append_blob(buf, table, 1), len(table)
        align = fields.get("align", 1)
        offset = append_blob(buf, blob, align)
        headers.append(
            [
                name_off,
                sh_type,
                fields.get("flags", 0),
                0,
                offset,
                len(blob),
                fields.get("link", 0),
                fields.get("info", 0),
                align,
                fields.get("entsize", 0),
            ]
        )

    return edit_sections(data, edit)


def with_symtab_shndx(data: bytes, every: int = 2) -> bytes:
    """The same object with a ``.symtab_shndx`` section holding every ``every``-th
    symbol's section index (its st_shndx becomes SHN_XINDEX), as an assembler
    writes one for objects with more than 65279 sections."""
    buf = bytearray(data)
    is64 = buf[4] == 2
    _, headers = _section_headers(buf)
    symtab = next(i for i, h in enumerate(headers) if h[1] == 2)
    symsize, shndx_at = (24, 6) if is64 else (16, 14)
    nsym = headers[symtab][5] // symsize
    ext = bytearray(4 * nsym)
    for i in range(1, nsym, every):
        pos = headers[symtab][4] + i * symsize + shndx_at
        s = _u(buf, pos, 2)
        if 0 < s < 0xFF00:
            struct.pack_into("<H", buf, pos, 0xFFFF)
            struct.pack_into("<I", ext, 4 * i, s)
    return add_section(bytes(buf), ".symtab_shndx", bytes(ext), 18, link=symtab, align=4, entsize=4)


def all_seeds() -> list[bytes]:
    base = fixture_seeds()
    extra = []
    for data in base:
        extra.append(extended_numbering(data))
        extra.append(with_symtab_shndx(data))
    return base + extra


# --------------------------------------------------------------------------
# Structure-aware mutation


@dataclass
class Fields:
    """Editable fields of a (possibly damaged) object: kind -> [(offset, width)]."""

    by_kind: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    shnum: int = 0
    nsyms: int = 0

    def add(self, kind: str, off: int, width: int, size: int) -> None:
        if off >= 0 and off + width <= size:
            self.by_kind.setdefault(kind, []).append((off, width))


_EHDR64 = [(16, 2), (18, 2), (20, 4), (24, 8), (32, 8), (40, 8), (48, 4), (52, 2), (54, 2), (56, 2), (58, 2)]
_EHDR64 += [(60, 2), (62, 2)]
_EHDR32 = [(16, 2), (18, 2), (20, 4), (24, 4), (28, 4), (32, 4), (36, 4), (40, 2), (42, 2), (44, 2), (46, 2)]
_EHDR32 += [(48, 2), (50, 2)]
_SHDR64 = [(0, 4), (4, 4), (8, 8), (16, 8), (24, 8), (32, 8), (40, 4), (44, 4), (48, 8), (56, 8)]
_SHDR32 = [(0, 4), (4, 4), (8, 4), (12, 4), (16, 4), (20, 4), (24, 4), (28, 4), (32, 4), (36, 4)]
_SYM64 = [(0, 4), (4, 1), (5, 1), (6, 2), (8, 8), (16, 8)]
_SYM32 = [(0, 4), (4, 4), (8, 4), (12, 1), (13, 1), (14, 2)]
_CAP = 4096  # entries looked at per table: enough to reach every fixture's fields


def locate(data: bytes | bytearray) -> Fields:
    """Find fields by reading the headers leniently (never the project's reader)."""
    size = len(data)
    out = Fields()
    for i in range(min(size, 16)):
        out.add("ident", i, 1, size)
    if size < 52 or data[:4] != b"\x7fELF":
        return out
    is64 = data[4] == 2
    for off, w in _EHDR64 if is64 else _EHDR32:
        out.add("ehdr", off, w, size)
    if is64 and size < 64:
        return out
    _, shoff, ent, shnum, shstrndx = _shdr_geometry(data)
    layout = _SHDR64 if is64 else _SHDR32
    ptr = 8 if is64 else 4
    headers: list[tuple[int, ...]] = []
    if 0 < shoff < size:
        if shnum == 0 and shoff + ent <= size:
            shnum = _u(data, shoff + (32 if is64 else 20), ptr)
        shnum = min(shnum, (size - shoff) // ent, _CAP)
        fmt = struct.Struct("<IIQQQQIIQQ" if is64 else "<IIIIIIIIII")
        for i in range(shnum):
            base = shoff + i * ent
            for off, w in layout:
                out.add("shdr", base + off, w, size)
            headers.append(fmt.unpack_from(data, base))
    out.shnum = len(headers)
    names: dict[int, bytes] = {}
    if 0 < shstrndx < len(headers):
        s = headers[shstrndx]
        if s[4] + s[5] <= size:
            table = bytes(data[s[4] : s[4] + s[5]])
            for i, h in enumerate(headers):
                end = table.find(b"\0", h[0])
                names[i] = table[h[0] : end] if end >= 0 else b""
    for i, h in enumerate(headers):
        sh_type, sh_offset, sh_size, sh_info = h[1], h[4], h[5], h[7]
        if sh_type == 8 or sh_offset >= size:
            continue
        end = min(size, sh_offset + sh_size)
        if sh_type == 2:  # symbol table
            symsize = 24 if is64 else 16
            count = min((end - sh_offset) // symsize, _CAP)
            out.nsyms = max(out.nsyms, count)
            for k in range(count):
                for off, w in _SYM64 if is64 else _SYM32:
                    out.add("sym", sh_offset + k * symsize + off, w, size)
        elif sh_type in (4, 9):  # RELA / REL
            entsize = (3 if sh_type == 4 else 2) * ptr
            target = headers[sh_info] if 0 < sh_info < len(headers) else None
            for k in range(min((end - sh_offset) // entsize, _CAP)):
                base = sh_offset + k * entsize
                out.add("rel", base, ptr, size)  # r_offset
                if is64:
                    out.add("rel", base + 8, 4, size)  # type
                    out.add("rel", base + 12, 4, size)  # symbol
                else:
                    out.add("rel", base + 4, 1, size)
                    out.add("rel", base + 5, 3, size)
                if sh_type == 4:
                    out.add("rel", base + 2 * ptr, ptr, size)
                if target is not None and target[1] != 8:
                    place = target[4] + _u(data, base, ptr)
                    for d in (-2, -1):
                        out.add("place", place + d, 1, size)
                    out.add("place", place, 4, size)
        elif sh_type == 3:  # string table: its NULs and some name bytes
            for k in range(sh_offset, min(end, sh_offset + _CAP)):
                if data[k] == 0 or k % 7 == 0:
                    out.add("str", k, 1, size)
        if names.get(i) == b".livepatch.funcs":
            voff = 3 * ptr + 8
            version = data[sh_offset + voff] if sh_offset + voff < size else 2
            entry = {(1, 8): 64, (1, 4): 52, (2, 8): 104, (2, 4): 92}.get((version, ptr), 104 if is64 else 92)
            for k in range(min((end - sh_offset) // entry, _CAP)):
                base = sh_offset + k * entry
                for off, w in ((0, ptr), (ptr, ptr), (2 * ptr, ptr), (3 * ptr, 4), (3 * ptr + 4, 4), (voff, 1)):
                    out.add("funcs", base + off, w, size)
    return out


def _value(rng: random.Random, old: int, width: int, ctx: Fields, size: int) -> int:
    bits = 8 * width
    mask = (1 << bits) - 1
    pick = rng.randrange(16)
    if pick == 0:
        return 0
    if pick == 1:
        return rng.choice((1, 2, 3, 4, 8, 16))
    if pick == 2:
        return old + rng.choice((1, -1))
    if pick == 3:
        return old + rng.randint(-64, 64)
    if pick == 4:
        return old ^ (1 << rng.randrange(bits))
    if pick == 5:
        return rng.choice((mask, mask >> 1, (mask >> 1) + 1))
    if pick == 6:
        return rng.getrandbits(bits)
    if pick == 7:
        return size + rng.randint(-16, 16)
    if pick == 8:
        return ctx.shnum + rng.randint(-2, 1)
    if pick == 9:
        return ctx.nsyms + rng.randint(-2, 1)
    if pick == 10:
        return rng.choice((0xFF00, 0xFFF1, 0xFFF2, 0xFFFF, 0xFEFF))
    if pick == 11:
        return 1 << rng.randrange(bits)
    if pick == 12:
        return rng.randrange(max(ctx.shnum, 1))
    if pick == 13:
        return rng.randrange(max(ctx.nsyms, 1))
    if pick == 14:
        return old * 2
    return old // 2


def field_edit(buf: bytearray, rng: random.Random) -> None:
    ctx = locate(buf)
    if not ctx.by_kind:
        return
    kind = rng.choice(sorted(ctx.by_kind))
    off, width = rng.choice(ctx.by_kind[kind])
    old = _u(buf, off, width)
    # String bytes: a NUL moved, '#', '.', a letter, a non-ASCII byte, a case flip.
    strings = (0, 0x23, 0x2E, 0x41, 0xFF, old ^ 0x20)
    new = rng.choice(strings) if kind == "str" else _value(rng, old, width, ctx, len(buf))
    buf[off : off + width] = (new & ((1 << (8 * width)) - 1)).to_bytes(width, "little")


def mutate(data: bytes, rng: random.Random, max_len: int = MAX_LEN) -> bytes:
    """One to four stacked mutations, mostly structure-aware."""
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        op = rng.random()
        n = len(buf)
        if op < 0.6 or n == 0:
            field_edit(buf, rng)
        elif op < 0.78:
            pos = rng.randrange(n)
            buf[pos] ^= 1 << rng.randrange(8)
        elif op < 0.83:
            pos = rng.randrange(n)
            buf[pos] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif op < 0.88:
            del buf[rng.randrange(n) :]
        elif op < 0.92:
            a, b = sorted(rng.randrange(n) for _ in range(2))
            del buf[a : min(b, a + 64)]
        elif op < 0.96:
            a = rng.randrange(n)
            chunk = buf[a : a + rng.randint(1, 64)]
            pos = rng.randrange(n)
            buf[pos : pos + len(chunk)] = chunk
        else:
            pos = rng.randrange(n)
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return bytes(buf[:max_len])


# --------------------------------------------------------------------------
# The contract


class Hang(BaseException):
    """Raised by the CPU-time watchdog (a BaseException: no `except Exception` may swallow it)."""


@dataclass
class Outcome:
    # "ok" (exit 0), "refused" (exit 2) or "crash" (anything else, a certificate
    # disagreeing with an accepted rewrite included).
    kind: str
    site: str = ""
    detail: str = ""
    # For "ok": CERTIFIED, XEN_REFUSES (the certificate refused the original as
    # Xen's loader would) or "" (no certificate: --no-certify, or none in this tree).
    proof: str = ""


CERTIFIED = "certified"
XEN_REFUSES = "xen-refuses"


class Target:
    """The pipeline under test, imported once (optionally under atheris' instrumentation)."""

    POLICY_SPECS: tuple[dict[str, Any], ...] = (
        {},
        {"local_aliases": True},
        {"local_aliases": True, "linker_check": False},
        {"default_keep": False},
        {"keep_sections": (".text*", ".data*")},
        {"rename_template": "__new_{name}"},
        {"xen_limits": False},  # --ignore-xen-limits
    )

    def __init__(self, modules: dict[str, ModuleType], certify: bool = True) -> None:
        self.pipeline = modules["lp_rewrite.pipeline"]
        self.report = modules["lp_rewrite.report"]
        self.cli_rewrite = modules["lp_rewrite.cli.rewrite"]
        self.errors = modules["lp_rewrite.errors"]
        self.one_line = modules["lp_rewrite.cli.shared"].one_line  # how the command line prints an error
        policy = modules["lp_rewrite.policy"].Policy
        self.policies = []
        for spec in self.POLICY_SPECS:
            with contextlib.suppress(TypeError):  # an option this tree does not have
                self.policies.append(policy(**spec))
        certificate = modules.get("lp_rewrite.certificate")
        self.certify = certificate.certify if certificate is not None and certify else None
        gate: tuple[str, ...] = ("lp_rewrite.check.run", "lp_rewrite.check.render", "lp_rewrite.check.batch")
        gate += ("lp_rewrite.check.sarif", "lp_rewrite.check.findings")
        self.gate = [modules[n] for n in gate] if all(n in modules for n in gate) else None

    @staticmethod
    def import_modules() -> dict[str, ModuleType]:
        import importlib

        names = [
            "lp_rewrite.errors",
            "lp_rewrite.elf.file",
            "lp_rewrite.elf.layout",
            "lp_rewrite.elf.writer",
            "lp_rewrite.arch",
            "lp_rewrite.arch.x86_64",
            "lp_rewrite.arch.x86_insn",
            "lp_rewrite.arch.aarch64",
            "lp_rewrite.arch.arm",
            "lp_rewrite.read",
            "lp_rewrite.identify",
            "lp_rewrite.decide",
            "lp_rewrite.apply",
            "lp_rewrite.verify",
            "lp_rewrite.policy",
            "lp_rewrite.pipeline",
            "lp_rewrite.report",
            "lp_rewrite.cli.shared",
            "lp_rewrite.cli.rewrite",
        ]
        modules = {n: importlib.import_module(n) for n in names}
        # The `verify` certificate (the Xen-semantics loader) and the `check` gate, where the tree has them.
        for optional in ("lp_rewrite.certificate", "lp_rewrite.check.run", "lp_rewrite.check.render"):
            with contextlib.suppress(ImportError):
                modules[optional] = importlib.import_module(optional)
        with contextlib.suppress(ImportError):
            for name in ("lp_rewrite.check.batch", "lp_rewrite.check.sarif", "lp_rewrite.check.findings"):
                modules[name] = importlib.import_module(name)
        return modules

    def _explain(self, data: bytes, policy: Any) -> None:
        a = self.pipeline.analyse(data, policy, everything=True)
        report = self.report
        report.dumps(
            {
                "replacements": report.replacement_records(a.payload, a.funcs),
                "decisions": [report.decision_record(a.payload, a.funcs, d) for d in a.decisions],
            }
        )
        report.replacements_table(a.payload, a.funcs)
        report.decisions_table(a.payload, a.funcs, a.decisions)
        report.reason_legend(d.reason for d in a.decisions)

    def _check(self, data: bytes, policy: Any) -> None:
        """`check` (the CI gate): findings are its normal exit 1; only a refusal or a crash matters here."""
        assert self.gate is not None
        run, render, batch, sarif, findings = self.gate
        result = batch.BatchResult([run.check_payload(data, run.CheckOptions(policy))], 0.0)
        threshold = findings.Severity.ERROR
        render.text(result, threshold)
        render.json_report(result, threshold)
        self.report.dumps(sarif.sarif_log(result))
        result.exit_code(threshold)

    def _rewrite(self, data: bytes, policy: Any) -> Any:
        result = self.pipeline.rewrite(data, policy=policy)
        if not result.changed and result.output != data:
            return "unchanged payload is not byte-identical"
        self.cli_rewrite.summary_text(result)
        self.cli_rewrite.summary_record(result, True)
        unreadable = independent_reader_refuses(result.output)
        if unreadable and unreadable != independent_reader_refuses(data):
            return f"pyelftools cannot read the output, but reads the input: {unreadable.partition(':')[0]}"
        again = self.pipeline.rewrite(result.output, policy=policy)
        if again.changed or again.output != result.output:
            return "second run is not a no-op"
        return result

    def _guard(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Outcome | None, Any]:
        """(None, value) when ``fn`` returns; else the outcome of what it raised."""
        try:
            return None, fn(*args, **kwargs)
        except self.errors.LpRewriteError as exc:
            msg = self.one_line(str(exc))
            if exc.exit_code != 2:
                return _crash(exc, f"exit {exc.exit_code}"), None
            if not msg.strip() or "\n" in msg or "\r" in msg:
                return Outcome("crash", "multi-line or empty message", repr(msg)), None
            return Outcome("refused", detail=msg), None
        except Hang as exc:
            return _crash(exc, "hang"), None
        except MemoryError as exc:
            return _crash(exc, "memory"), None
        except RecursionError as exc:
            return _crash(exc, "recursion"), None
        except Exception as exc:
            return _crash(exc, "exception"), None

    def run(self, data: bytes) -> Outcome:
        policy = self.policies[zlib.crc32(data) % len(self.policies)]
        explained, _ = self._guard(self._explain, data, policy)
        if explained is not None and explained.kind == "crash":
            return explained
        if self.gate is not None:
            checked, _ = self._guard(self._check, data, policy)
            if checked is not None and checked.kind == "crash":
                return checked
        rewritten, result = self._guard(self._rewrite, data, policy)
        if rewritten is not None:
            return rewritten
        if isinstance(result, str):
            return Outcome("crash", result)
        if self.certify is None:
            return Outcome("ok")
        return self._certified(data, result.output, policy)

    def _certified(self, data: bytes, output: bytes, policy: Any) -> Outcome:
        """`rewrite --verify`: every accepted rewrite (changed or not) must be certified."""
        assert self.certify is not None
        certified, _ = self._guard(self.certify, data, output, policy=policy)
        if certified is None:
            return Outcome("ok", proof=CERTIFIED)
        if certified.kind == "refused":
            # Exit 2 means the ORIGINAL does not load (then `rewrite --verify` exits 2):
            # certifying the original against itself must refuse it with the same message.
            alone, _ = self._guard(self.certify, data, data, policy=policy)
            if alone is None or alone.kind != "refused" or alone.detail != certified.detail:
                why = f"certify(original, output) refused: {certified.detail}\ncertify(original, original): "
                why += "accepted" if alone is None else f"{alone.kind} {alone.site} {alone.detail}"
                return Outcome("crash", "certificate: refuses the output, not the original", why)
            return Outcome("ok", proof=XEN_REFUSES)
        if certified.site.startswith("exit 1: VerificationError"):
            # One site per shape of message: the same disagreement on other bytes counts once.
            message = certified.detail.strip().splitlines()[-1]
            shape = re.sub(_VARYING, "#", message.partition("rewrite: ")[2])
            where = certified.site.split(" at ")[1]
            site = f"certificate disagrees at {where}: {shape[:90]}".encode("utf-8", "backslashreplace").decode()
            return Outcome("crash", site, certified.detail)
        return certified


def independent_reader_refuses(output: bytes) -> str:
    """Why pyelftools (a second, independent ELF reader) cannot build every non-empty section of ``output``,
    or '' (tests/test_fuzz.py holds accepted rewrites to this too).

    An accepted rewrite must be as whole to any reader as its input was
    (whose contents we carry over, e.g. a damaged .ARM.attributes that Xen
    never reads).
    """
    from elftools.common.exceptions import ELFError
    from elftools.construct import ConstructError
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(io.BytesIO(output))
        for i in range(elf.num_sections()):
            # Not an empty one: pyelftools parses some types (.ARM.attributes)
            # from the offset without looking at the size, reading the next section.
            if elf._get_section_header(i)["sh_size"]:
                elf.get_section(i)
    except (ELFError, ConstructError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


# What varies between two instances of one disagreement: numbers, hex bytes, names, asides.
_VARYING = re.compile(r"0x[0-9a-f]+|\b[0-9a-f]{4,}\b|\d+|'[^']*'|\([^)]*\)")


def _crash(exc: BaseException, what: str) -> Outcome:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/lp_rewrite/" in f.filename]
    top = (ours or frames)[-1] if frames else None
    where = f"{Path(top.filename).name}:{top.lineno} {top.name}" if top else "?"
    return Outcome("crash", f"{what}: {type(exc).__name__} at {where}", "".join(traceback.format_exception(exc)))


# --------------------------------------------------------------------------
# Bookkeeping shared by both engines


@dataclass
class Stats:
    runs: int = 0
    ok: int = 0
    refused: int = 0
    crashes: int = 0
    sites: Counter[str] = field(default_factory=Counter)
    certified: int = 0  # of the accepted: certificates that passed
    xen_refuses: int = 0  # of the accepted: originals the certificate refused as Xen would
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "ok": self.ok,
            "refused": self.refused,
            "crashes": self.crashes,
            "sites": dict(self.sites),
            "certified": self.certified,
            "xen_refuses": self.xen_refuses,
            "seconds": round(self.seconds, 1),
        }

    @classmethod
    def merge(cls, docs: list[dict[str, Any]]) -> Stats:
        out = cls()
        for d in docs:
            out.runs += d["runs"]
            out.ok += d["ok"]
            out.refused += d["refused"]
            out.crashes += d["crashes"]
            out.sites.update(d["sites"])
            out.certified += d["certified"]
            out.xen_refuses += d["xen_refuses"]
            out.seconds = max(out.seconds, d["seconds"])
        return out


class Harness:
    """Runs inputs with a CPU watchdog, counts outcomes, saves crashing inputs."""

    def __init__(self, target: Target, crash_dir: Path, timeout: float, stats_file: Path | None) -> None:
        self.target = target
        self.crash_dir = crash_dir
        self.timeout = timeout
        self.stats = Stats()
        self.stats_file = stats_file
        self.start = time.monotonic()
        self.rss_mb = _maxrss_mb()
        signal.signal(signal.SIGVTALRM, self._on_timer)

    @staticmethod
    def _on_timer(signum: int, frame: FrameType | None) -> None:
        raise Hang("CPU time limit exceeded")

    def one(self, data: bytes) -> Outcome:
        # ITIMER_VIRTUAL: process CPU time (libFuzzer owns ITIMER_REAL / SIGALRM).
        signal.setitimer(signal.ITIMER_VIRTUAL, self.timeout)
        try:
            outcome = self.target.run(data)
        except Hang as exc:  # fired outside the target's own handlers
            outcome = _crash(exc, "hang")
        finally:
            signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        rss = _maxrss_mb()
        if outcome.kind != "crash" and rss - self.rss_mb > 256:
            outcome = Outcome("crash", "memory: peak RSS grew by more than 256 MiB on one input")
        self.rss_mb = rss
        st = self.stats
        st.runs += 1
        if outcome.kind == "ok":
            st.ok += 1
            st.certified += outcome.proof == CERTIFIED
            st.xen_refuses += outcome.proof == XEN_REFUSES
        elif outcome.kind == "refused":
            st.refused += 1
        else:
            st.crashes += 1
            st.sites[outcome.site] += 1
            if st.sites[outcome.site] <= 5:
                self._save(data, outcome, "crash")
        if st.runs % 2000 == 0:
            self.flush()
        return outcome

    def _save(self, data: bytes, outcome: Outcome, kind: str) -> None:
        self.crash_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha1(data).hexdigest()[:16]
        slug = hashlib.sha1(outcome.site.encode("utf-8", "backslashreplace")).hexdigest()[:8]
        (self.crash_dir / f"{kind}-{slug}-{digest}.bin").write_bytes(data)
        text = outcome.site + "\n\n" + outcome.detail
        (self.crash_dir / f"{kind}-{slug}-{digest}.txt").write_text(text, errors="backslashreplace")

    def flush(self) -> None:
        self.stats.seconds = time.monotonic() - self.start
        if self.stats_file is not None:
            tmp = self.stats_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.stats.to_json()))
            os.replace(tmp, self.stats_file)


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _limit_memory(mb: int) -> None:
    if mb > 0:
        resource.setrlimit(resource.RLIMIT_AS, (mb << 20, mb << 20))


# --------------------------------------------------------------------------
# Engines (each worker is one process running many inputs)


def worker_builtin(args: argparse.Namespace, stats_file: Path) -> None:
    _limit_memory(args.memory_mb)
    target = Target(Target.import_modules(), certify=not args.no_certify)
    harness = Harness(target, Path(args.crash_dir), args.timeout, stats_file)
    rng = random.Random(args.seed * 1000 + args.worker)
    seeds = all_seeds()
    pool: list[bytes] = []  # mutants the tool accepted: bases that reach deeper code
    for _ in range(args.runs):
        base = rng.choice(pool) if pool and rng.random() < 0.3 else rng.choice(seeds)
        data = mutate(base, rng, args.max_len)
        if harness.one(data).kind == "ok" and data not in seeds:
            if len(pool) < 4096:
                pool.append(data)
            else:
                pool[rng.randrange(len(pool))] = data
    harness.flush()


def worker_atheris(args: argparse.Namespace, stats_file: Path, corpus: Path) -> None:
    import atheris  # type: ignore[import-untyped]  # ships no type information

    _limit_memory(args.memory_mb)
    with atheris.instrument_imports(include=["lp_rewrite"]):
        modules = Target.import_modules()
    harness = Harness(Target(modules, certify=not args.no_certify), Path(args.crash_dir), args.timeout, stats_file)
    limit = args.runs

    def test_one_input(data: bytes) -> None:
        harness.one(bytes(data))
        if harness.stats.runs >= limit:
            harness.flush()
            os._exit(0)

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.35:
            return bytes(atheris.Mutate(data, max_size))
        return mutate(data, rng, max_size)

    flags = [
        sys.argv[0],
        str(corpus),
        f"-max_len={args.max_len}",
        f"-seed={args.seed * 1000 + args.worker + 1}",
        "-timeout=120",  # libFuzzer's wall-clock backstop; the CPU watchdog is --timeout
        f"-rss_limit_mb={args.memory_mb + 512 if args.memory_mb else 0}",
        "-print_final_stats=1",
        f"-artifact_prefix={Path(args.crash_dir).resolve()}/libfuzzer-",
        "-reload=30",
    ]
    Path(args.crash_dir).mkdir(parents=True, exist_ok=True)  # libFuzzer's own artifacts (e.g. a timeout) go there
    atheris.Setup(flags, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


# --------------------------------------------------------------------------
# Driver


def _seed_corpus(corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    for data in all_seeds():
        (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)


def _read_stats(files: list[Path]) -> Stats:
    docs = []
    for f in files:
        try:
            docs.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue
    return Stats.merge(docs)


def _report(st: Stats, label: str) -> str:
    rate = st.runs / st.seconds if st.seconds else 0.0
    return (
        f"{label}: {st.runs} inputs in {st.seconds:.0f} s ({rate:.0f}/s), {st.ok} accepted "
        f"({st.certified} certified, {st.xen_refuses} originals Xen's loader refuses), "
        f"{st.refused} refused (exit 2), {st.crashes} crashes at {len(st.sites)} unique sites"
    )


def drive(args: argparse.Namespace) -> int:
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            engine = "builtin"
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="lp-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus"
    if engine == "atheris":
        _seed_corpus(corpus)
    per = [args.runs // args.jobs + (1 if k < args.runs % args.jobs else 0) for k in range(args.jobs)]
    stats_files = [work / f"stats-{k}.json" for k in range(args.jobs)]
    procs = []
    for k, n in enumerate(per):
        cmd = [sys.executable, __file__, "--worker", str(k), "--engine", engine, "--runs", str(n)]
        cmd += ["--seed", str(args.seed), "--timeout", str(args.timeout), "--memory-mb", str(args.memory_mb)]
        cmd += ["--max-len", str(args.max_len), "--crash-dir", str(args.crash_dir), "--work-dir", str(work)]
        cmd += ["--no-certify"] if args.no_certify else []
        log = open(work / f"worker-{k}.log", "wb")  # noqa: SIM115 - closed after the worker exits
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log))
    print(f"fuzz: engine {engine}, {args.jobs} worker(s), {args.runs} inputs; work dir {work}", flush=True)
    last = time.monotonic()
    while any(p.poll() is None for p, _ in procs):
        time.sleep(1)
        if time.monotonic() - last >= args.progress:
            last = time.monotonic()
            print(_report(_read_stats(stats_files), "progress"), flush=True)
    bad_exit = []
    for k, (p, log) in enumerate(procs):
        log.close()
        if p.returncode != 0:
            bad_exit.append(f"worker {k} exited with status {p.returncode} (see {work}/worker-{k}.log)")
    st = _read_stats(stats_files)
    print(_report(st, "total"))
    for site, n in st.sites.most_common():
        print(f"  {n:8d}  {site}")
    for line in bad_exit:
        print("  " + line)
    if st.crashes:
        print(f"inputs saved in {args.crash_dir}")
    return 1 if st.crashes or bad_exit else 0


def replay(paths: list[Path], certify: bool = True) -> int:
    target = Target(Target.import_modules(), certify=certify)
    bad = 0
    for path in _inputs(paths):
        outcome = target.run(path.read_bytes())
        print(f"{path}: {outcome.kind} {outcome.site}")
        if outcome.kind == "crash":
            bad += 1
            print(outcome.detail)
    return 1 if bad else 0


def _inputs(paths: list[Path]) -> Iterator[Path]:
    for p in paths:
        if p.is_dir():
            yield from sorted(q for q in p.iterdir() if q.suffix == ".bin")
        else:
            yield p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1_000_000, help="inputs to run in total (default 1M)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    ap.add_argument("--engine", choices=("auto", "atheris", "builtin"), default="auto")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=5.0, help="CPU seconds one input may take")
    ap.add_argument("--memory-mb", type=int, default=2048, help="address-space limit per worker (0: none)")
    ap.add_argument("--max-len", type=int, default=MAX_LEN)
    ap.add_argument("--crash-dir", default="fuzz-crashes")
    ap.add_argument("--work-dir", help="corpus, logs and per-worker stats (default: a new temp dir)")
    ap.add_argument("--progress", type=float, default=60.0, help="seconds between progress lines")
    ap.add_argument(
        "--no-certify",
        action="store_true",
        help="skip the `verify` certificate of each rewrite (the contract then no longer requires a certified output)",
    )
    ap.add_argument("--replay", nargs="+", type=Path, metavar="PATH", help="re-run saved inputs and show tracebacks")
    ap.add_argument("--worker", type=int, default=-1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sys.setrecursionlimit(10_000)
    for stream in (sys.stdout, sys.stderr):  # payload names in messages may hold undecodable bytes
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    if args.replay:
        return replay(args.replay, certify=not args.no_certify)
    if args.worker >= 0:
        work = Path(args.work_dir)
        stats_file = work / f"stats-{args.worker}.json"
        if args.engine == "atheris":
            worker_atheris(args, stats_file, work / "corpus")
        else:
            worker_builtin(args, stats_file)
        return 0
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())

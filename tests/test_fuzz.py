"""Property-based fuzzing of the command line's contract (bounded for CI).

Hypothesis mutates the committed fixtures of all three architectures: bit
flips, byte overwrites, truncation, and edits of fields of the ELF header,
the section headers, symbols, relocations and ``.livepatch.funcs`` entries
(located with pyelftools on the pristine fixture), with boundary values and
small deltas. For every mutant, ``rewrite -o`` and ``explain`` must:

* exit 0 -- and then the output exists, is whole (pyelftools reads every
  section header of it), passes the project's reader, and a second rewrite
  of it changes nothing -- or exit 2 with exactly one line on stderr and no
  output file at all (no temporary file either);
* never print a traceback, never exit otherwise (70 is an internal error);
* leave the input's bytes unchanged.

CI runs ``LP_REWRITE_FUZZ_EXAMPLES`` examples (default 250, about 20 s). A
long run: ``LP_REWRITE_FUZZ_EXAMPLES=100000 pytest tests/test_fuzz.py``, or
``scripts/fuzz.py`` (millions of inputs in-process; see the README).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from io import BytesIO
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lp_rewrite.cli import app
from lp_rewrite.pipeline import rewrite
from lp_rewrite.read import read_payload
from tests.conftest import COMMITTED, ROOT

FIXTURES = sorted(COMMITTED.glob("*/*.livepatch"))
EXAMPLES = int(os.environ.get("LP_REWRITE_FUZZ_EXAMPLES", "250"))
RUNNER = CliRunner()

BOUNDARY = [0, 1, 2, 3, 4, 8, 0x7F, 0x80, 0xFF, 0x100, 0xFF00, 0xFFF1, 0xFFF2, 0xFFFF, 0x10000]
BOUNDARY += [0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 1 << 32, 1 << 60, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]


@dataclass(frozen=True)
class Layout:
    """Editable fields of one pristine fixture: kind -> [(offset, width)]."""

    data: bytes
    fields: dict[str, list[tuple[int, int]]]


@cache
def layout(path: Path) -> Layout:
    data = path.read_bytes()
    elf = ELFFile(BytesIO(data))
    is64 = elf.elfclass == 64
    ptr = 8 if is64 else 4
    fields: dict[str, list[tuple[int, int]]] = {}

    def add(kind: str, base: int, spec: list[tuple[int, int]]) -> None:
        fields.setdefault(kind, []).extend((base + off, width) for off, width in spec)

    if is64:
        add("ehdr", 0, [(16, 2), (18, 2), (20, 4), (32, 8), (40, 8), (48, 4), (52, 2)])
        add("ehdr", 0, [(54, 2), (56, 2), (58, 2), (60, 2), (62, 2)])
        shdr = [(0, 4), (4, 4), (8, 8), (16, 8), (24, 8), (32, 8), (40, 4), (44, 4), (48, 8), (56, 8)]
        sym, symsize = [(0, 4), (4, 1), (5, 1), (6, 2), (8, 8), (16, 8)], 24
    else:
        add("ehdr", 0, [(16, 2), (18, 2), (20, 4), (28, 4), (32, 4), (36, 4), (40, 2)])
        add("ehdr", 0, [(42, 2), (44, 2), (46, 2), (48, 2), (50, 2)])
        shdr = [(4 * i, 4) for i in range(10)]
        sym, symsize = [(0, 4), (4, 4), (8, 4), (12, 1), (13, 1), (14, 2)], 16
    add("ident", 0, [(i, 1) for i in range(4, 16)])
    for i, section in enumerate(elf.iter_sections()):
        add("shdr", elf["e_shoff"] + i * elf["e_shentsize"], shdr)
        h = section.header
        if h["sh_type"] == "SHT_SYMTAB":
            for k in range(h["sh_size"] // symsize):
                add("sym", h["sh_offset"] + k * symsize, sym)
        elif h["sh_type"] in ("SHT_RELA", "SHT_REL"):
            rela = h["sh_type"] == "SHT_RELA"
            entsize = (3 if rela else 2) * ptr
            info = [(ptr, 4), (ptr + 4, 4)] if is64 else [(ptr, 1), (ptr + 1, 3)]
            for k in range(h["sh_size"] // entsize):
                add("rel", h["sh_offset"] + k * entsize, [(0, ptr), *info, *([(2 * ptr, ptr)] if rela else [])])
        elif h["sh_type"] == "SHT_STRTAB":
            add("str", h["sh_offset"], [(k, 1) for k in range(h["sh_size"])])
        if section.name == ".livepatch.funcs":
            entry = 104 if is64 else 92
            for k in range(h["sh_size"] // entry):
                spec = [(0, ptr), (ptr, ptr), (2 * ptr, ptr), (3 * ptr, 4), (3 * ptr + 4, 4), (3 * ptr + 8, 1)]
                add("funcs", h["sh_offset"] + k * entry, spec)
    return Layout(data, fields)


# One mutation: (kind, a position in [0, 1), a value or a bit, a mode).
mutation = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(0, 7), st.just("")),
    st.tuples(st.just("byte"), st.floats(0, 1, exclude_max=True), st.integers(0, 255), st.just("")),
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True), st.just(0), st.just("")),
    st.tuples(
        st.sampled_from(["ehdr", "ident", "shdr", "sym", "rel", "funcs", "str"]),
        st.floats(0, 1, exclude_max=True),
        st.one_of(st.sampled_from(BOUNDARY), st.integers(-64, 64), st.integers(0, (1 << 64) - 1)),
        st.sampled_from(["set", "add"]),
    ),
)


def mutate(path: Path, mutations: list[tuple[str, float, int, str]]) -> bytes:
    lay = layout(path)
    buf = bytearray(lay.data)
    for kind, where, value, mode in mutations:
        if not buf:
            break
        if kind == "flip":
            buf[int(where * len(buf))] ^= 1 << value
        elif kind == "byte":
            buf[int(where * len(buf))] = value
        elif kind == "truncate":
            del buf[int(where * len(buf)) :]
        else:
            places = lay.fields.get(kind)
            if not places:
                continue
            off, width = places[int(where * len(places))]
            if off + width > len(buf):
                continue
            old = int.from_bytes(buf[off : off + width], "little")
            new = old + value if mode == "add" else value
            buf[off : off + width] = (new % (1 << (8 * width))).to_bytes(width, "little")
    return bytes(buf)


def _cli(*args: str | Path) -> tuple[int, str, str]:
    result = RUNNER.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"exception escaped the command line: {result.exception!r}")
    return result.exit_code, result.stdout, result.stderr


def check_contract(data: bytes, workdir: Path) -> int:
    """Run rewrite and explain on ``data``; assert the contract; return rewrite's exit status."""
    src = workdir / "in.livepatch"
    src.write_bytes(data)
    out_dir = workdir / "out"
    out_dir.mkdir()
    out = out_dir / "result.livepatch"
    code, stdout, stderr = _cli("rewrite", src, "-o", out)
    assert "Traceback" not in stderr + stdout
    assert code in (0, 2), (code, stderr)
    assert src.read_bytes() == data, "the input was modified"
    if code == 2:
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lp-rewrite: error: "), stderr
        assert list(out_dir.iterdir()) == [], "a refused input left a file behind"
    else:
        assert [p.name for p in out_dir.iterdir()] == ["result.livepatch"]
        written = out.read_bytes()
        elf = ELFFile(BytesIO(written))  # an independent reader sees a whole object
        assert [s.header for s in elf.iter_sections()]
        read_payload(written)
        again = rewrite(written)
        assert not again.changed and again.output == written, "a second run is not a no-op"
    code_explain, stdout, stderr = _cli("explain", src)
    assert "Traceback" not in stderr + stdout
    assert code_explain in (0, 2), (code_explain, stderr)
    if code_explain == 2:
        assert len(stderr.strip().splitlines()) == 1, stderr
    return code


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(path=st.sampled_from(FIXTURES), mutations=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_fixtures_keep_the_contract(
    path: Path, mutations: list[tuple[str, float, int, str]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    check_contract(mutate(path, mutations), tmp_path_factory.mktemp("fuzz"))


def test_the_mutator_reaches_both_outcomes(tmp_path: Path) -> None:
    """Edits that keep the object valid and edits that break it: both exits are exercised."""
    path = COMMITTED / "x86_64" / "global_refs.livepatch"
    lay = layout(path)
    harmless = mutate(path, [("str", 0.99, 0, "add")])  # the last byte of a string table: already NUL
    assert harmless == lay.data
    (tmp_path / "a").mkdir()
    assert check_contract(harmless, tmp_path / "a") == 0
    (tmp_path / "b").mkdir()
    assert check_contract(mutate(path, [("ehdr", 0.0, 0, "set")]), tmp_path / "b") == 2  # e_type 0


def test_the_long_fuzzer_runs(tmp_path: Path) -> None:
    """scripts/fuzz.py works (the built-in engine; the long run uses it or atheris)."""
    where = ["--work-dir", str(tmp_path / "work"), "--crash-dir", str(tmp_path / "crashes")]
    budget = ["--engine", "builtin", "--runs", "400", "--jobs", "1", "--seed", "3"]
    proc = subprocess.run(
        [sys.executable, "scripts/fuzz.py", *budget, *where],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "total: 400 inputs" in proc.stdout and " 0 crashes at 0 unique sites" in proc.stdout, proc.stdout
    assert not (tmp_path / "crashes").exists()

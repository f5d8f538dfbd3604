"""Property-based fuzzing of the command line's contract (bounded for CI).

Hypothesis mutates the committed fixtures of all three architectures: bit
flips, byte overwrites, truncation, and edits of fields of the ELF header,
the section headers, symbols, relocations, relocated places, string tables
and ``.livepatch.funcs`` entries (located on the pristine fixture by the
long fuzzer's own locator, scripts/lp_fuzz/fields.py), with boundary values
and small deltas. For every mutant:

* ``rewrite -o`` exits 0 -- and then the output exists, is whole
  (pyelftools reads every section header of it), passes the project's
  reader, is certified by :func:`lp_rewrite.certificate.certify` (what
  ``rewrite --verify`` runs; the certificate may only refuse the *original*,
  as Xen's loader would, and then refuses it against itself the same way),
  and a second rewrite of it changes nothing -- or exits 2 with exactly one
  ``lp-rewrite: error:`` line on stderr and no output file at all (no
  temporary file either);
* ``explain`` exits 0, or 2 with one ``lp-rewrite: error:`` line;
* ``check --format json`` exits 0 or 1 with a JSON report of the one payload
  whose verdict matches the exit status, or 2 with one ``lp-rewrite: error:``
  line;
* none prints a traceback or exits otherwise (70 is an internal error), none
  modifies the input, and none takes more than ``EXAMPLE_CPU_SECONDS`` of CPU
  (or ``EXAMPLE_WALL_SECONDS`` of wall time) on one example: a hang fails
  the test instead of stalling CI.

CI runs ``LP_REWRITE_FUZZ_EXAMPLES`` examples (default 250, a few seconds),
derandomized: the same examples on every run of a tree. Setting the variable
draws fresh examples each time. A long run: ``LP_REWRITE_FUZZ_EXAMPLES=100000 pytest tests/test_fuzz.py``, or
``scripts/fuzz.py`` (millions of inputs in-process; see docs/robustness.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from types import FrameType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lp_fuzz.fields import KINDS, Fields, edit, locate
from lp_fuzz.target import independent_reader_refuses
from typer.testing import CliRunner

from lp_rewrite.certificate import certify
from lp_rewrite.cli import app
from lp_rewrite.errors import InputError, VerificationError
from lp_rewrite.pipeline import rewrite
from lp_rewrite.read import read_payload
from tests.conftest import COMMITTED, ROOT

FIXTURES = sorted(COMMITTED.glob("*/*.livepatch"))
EXAMPLES = int(os.environ.get("LP_REWRITE_FUZZ_EXAMPLES", "250"))
# The bounded run is the same every time (a landing is not a lottery); a run
# with LP_REWRITE_FUZZ_EXAMPLES set draws new examples each time.
DERANDOMIZE = "LP_REWRITE_FUZZ_EXAMPLES" not in os.environ
# Per example (all commands together). The slowest examples take well under a
# second of CPU; the wall-clock bound is a backstop for a process that waits.
EXAMPLE_CPU_SECONDS = 10.0
EXAMPLE_WALL_SECONDS = 60.0
RUNNER = CliRunner()

BOUNDARY = [0, 1, 2, 3, 4, 8, 0x7F, 0x80, 0xFF, 0x100, 0xFF00, 0xFFF1, 0xFFF2, 0xFFFF, 0x10000]
BOUNDARY += [0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 1 << 32, 1 << 60, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]


@cache
def pristine(path: Path) -> tuple[bytes, Fields]:
    """A fixture's bytes and its fields, located once by the long fuzzer's locator (scripts/lp_fuzz/fields.py)."""
    data = path.read_bytes()
    return data, locate(data)


# One mutation: (kind, a position in [0, 1), a value or a bit, a mode).
mutation = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(0, 7), st.just("")),
    st.tuples(st.just("byte"), st.floats(0, 1, exclude_max=True), st.integers(0, 255), st.just("")),
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True), st.just(0), st.just("")),
    st.tuples(
        st.sampled_from(KINDS),
        st.floats(0, 1, exclude_max=True),
        st.one_of(st.sampled_from(BOUNDARY), st.integers(-64, 64), st.integers(0, (1 << 64) - 1)),
        st.sampled_from(["set", "add"]),
    ),
)


def mutate(path: Path, mutations: list[tuple[str, float, int, str]]) -> bytes:
    """The fixture with the mutations applied in order; field edits use the pristine fixture's fields."""
    data, fields = pristine(path)
    buf = bytearray(data)
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
            edit(buf, fields, kind, where, value, mode)
    return bytes(buf)


class _Alarm(BaseException):
    """Raised by the per-example timers: a BaseException, so that no handler in the command line swallows it."""


@contextmanager
def time_limit(cpu: float = EXAMPLE_CPU_SECONDS, wall: float = EXAMPLE_WALL_SECONDS) -> Iterator[None]:
    """Fail (AssertionError, which hypothesis reports and shrinks) when the body takes too long.

    ITIMER_PROF counts the process's CPU time (a busy loop), ITIMER_REAL the
    wall clock (a wait). Python runs the handler between bytecodes, so a
    single C call that never returns is out of reach; everything else is not.
    """

    def fire(signum: int, frame: FrameType | None) -> None:
        raise _Alarm(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, fire) for sig in (signal.SIGPROF, signal.SIGALRM)}
    try:
        try:
            signal.setitimer(signal.ITIMER_PROF, cpu)
            signal.setitimer(signal.ITIMER_REAL, wall)
            yield
        finally:  # a timer firing in here still lands in the except below
            signal.setitimer(signal.ITIMER_PROF, 0)
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Alarm as exc:
        what = f"{cpu} s of CPU" if str(exc) == "SIGPROF" else f"{wall} s of wall time"
        raise AssertionError(f"one example took more than {what} (a hang?)") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _cli(*args: str | Path) -> tuple[int, str, str]:
    result = RUNNER.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"exception escaped the command line: {result.exception!r}")
    assert "Traceback" not in result.stderr + result.stdout, (args[0], result.stderr)
    return result.exit_code, result.stdout, result.stderr


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lp-rewrite: error: "), stderr
    return lines[0]


def assert_certified(data: bytes, written: bytes) -> None:
    """What `rewrite --verify` proves of an accepted rewrite.

    The certificate may refuse (exit 2) only an original that Xen's loader
    would refuse: then certifying the original against itself refuses it with
    the same message. A disagreement (exit 1) or anything else fails.
    """
    try:
        certify(data, written)
    except InputError as exc:
        with pytest.raises(InputError) as alone:
            certify(data, data)
        assert str(alone.value) == str(exc), f"the certificate refuses the output, not the original: {exc}"


def check_rewrite(src: Path, data: bytes, out_dir: Path) -> int:
    out = out_dir / "result.livepatch"
    code, _stdout, stderr = _cli("rewrite", src, "-o", out)
    assert code in (0, 2), (code, stderr)
    assert src.read_bytes() == data, "rewrite modified the input"
    if code == 2:
        _one_error_line(stderr)
        assert list(out_dir.iterdir()) == [], "a refused input left a file behind"
        return code
    assert [p.name for p in out_dir.iterdir()] == ["result.livepatch"]
    written = out.read_bytes()
    # An independent reader sees a whole object, unless the input's own
    # contents (carried over) already stop it.
    assert independent_reader_refuses(written) in ("", independent_reader_refuses(data))
    read_payload(written)
    assert_certified(data, written)
    again = rewrite(written)
    assert not again.changed and again.output == written, "a second run is not a no-op"
    return code


def check_explain(src: Path, data: bytes) -> None:
    code, _stdout, stderr = _cli("explain", src)
    assert code in (0, 2), (code, stderr)
    if code == 2:
        _one_error_line(stderr)
    assert src.read_bytes() == data, "explain modified the input"


def check_gate(src: Path, data: bytes) -> None:
    """`check`: exit 0/1 with a report of this payload whose verdict is the exit status; or exit 2 with
    one error line (unreadable); or exit 2 with the whole report of a payload a part of which could not
    be analysed (LP012), one error line per such part and the summary line."""
    code, stdout, stderr = _cli("check", src, "--format", "json")
    assert code in (0, 1, 2), (code, stderr)
    assert src.read_bytes() == data, "check modified the input"
    if code == 2 and not stdout.strip():
        _one_error_line(stderr)
        return
    report = json.loads(stdout)
    (payload,) = report["payloads"]
    assert payload["path"] == str(src) and payload["error"] is None, payload
    assert report["summary"]["failed"] == (code != 0), report["summary"]
    errors = [f for f in payload["findings"] if f["severity"] == "error" and not f["suppressed"]]
    assert (code != 0) == bool(errors), payload["findings"]
    incomplete = [f["message"] for f in errors if f["rule"] == "LP012"]
    assert (code == 2) == bool(incomplete), payload["findings"]
    *lines, summary = stderr.strip().splitlines()
    assert lines == [f"lp-rewrite: error: {src}: {m}" for m in incomplete], stderr
    assert summary.startswith("lp-rewrite check: 1 payload(s)"), stderr


def check_contract(data: bytes, workdir: Path) -> int:
    """Run rewrite, explain and check on ``data``; assert the contract; return rewrite's exit status."""
    src = workdir / "in.livepatch"
    src.write_bytes(data)
    out_dir = workdir / "out"
    out_dir.mkdir()
    with time_limit():
        code = check_rewrite(src, data, out_dir)
        check_explain(src, data)
        check_gate(src, data)
    return code


@settings(
    max_examples=EXAMPLES,
    derandomize=DERANDOMIZE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(path=st.sampled_from(FIXTURES), mutations=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_fixtures_keep_the_contract(
    path: Path, mutations: list[tuple[str, float, int, str]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    check_contract(mutate(path, mutations), tmp_path_factory.mktemp("fuzz"))


def test_the_certificate_check_fails_a_rewrite_that_is_not_one(tmp_path: Path) -> None:
    """An "accepted rewrite" whose output is its unrewritten input is caught (exit 1, not a refusal)."""
    data = (COMMITTED / "x86_64" / "global_refs.livepatch").read_bytes()
    assert rewrite(data).changed
    with pytest.raises(VerificationError, match="not a verified rewrite"):
        assert_certified(data, data)
    assert_certified(data, rewrite(data).output)


def test_the_time_limit_stops_a_hang() -> None:
    with pytest.raises(AssertionError, match=r"more than 0.2 s of CPU"), time_limit(cpu=0.2, wall=30):
        while True:
            pass
    with pytest.raises(AssertionError, match=r"more than 0.2 s of wall time"), time_limit(cpu=30, wall=0.2):
        signal.pause()
    assert signal.getsignal(signal.SIGPROF) == signal.SIG_DFL and signal.getsignal(signal.SIGALRM) == signal.SIG_DFL


def test_the_mutator_reaches_both_outcomes(tmp_path: Path) -> None:
    """Edits that keep the object valid and edits that break it: both exits are exercised."""
    path = COMMITTED / "x86_64" / "global_refs.livepatch"
    harmless = mutate(path, [("str", 0.99, 0, "add")])  # adds 0 to a string byte
    assert harmless == pristine(path)[0]
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


@pytest.mark.parametrize("name", ["x86_64/global_refs", "arm/global_refs"])
def test_the_locator_finds_every_kind_of_field(name: str) -> None:
    """The one locator (scripts/lp_fuzz/fields.py) reaches every kind the hypothesis run draws, RELA and REL alike."""
    data, fields = pristine(COMMITTED / f"{name}.livepatch")
    assert set(fields.by_kind) == set(KINDS)
    assert all(off + width <= len(data) for places in fields.by_kind.values() for off, width in places)
    assert fields.by_kind["ehdr"][0] == (16, 2)  # e_type first: the mutator's "ehdr 0.0" edit

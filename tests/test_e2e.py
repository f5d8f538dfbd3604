"""End-to-end test on a real hypervisor.

Boots Xen under QEMU/TCG with a busybox dom0, on four targets: Debian
bookworm's Xen 4.17 on x86-64 (the stock hypervisor), arm64 and arm32
(Debian's source rebuilt with CONFIG_LIVEPATCH=y), and Debian trixie's Xen
4.20 on x86-64 (the stock hypervisor, with 4.20's xen-livepatch).  The first
payload of each flow (testdata/e2e/) replaces a Xen function and hands the
hypervisor a pointer to it, which binds to the payload's copy: on 4.17 its
load hook registers the replacement as a debug-key handler; Xen 4.20
registers debug keys only at boot, so there it installs the replacement as
the NMI callback and key 'N' raises an NMI.  The flows (:data:`FLOWS`):

* ``global``/``static``/``nmi``: apply, key, revert, unload, key;
* ``replace``: xapi's cumulative update -- the cumulative successor (same
  function, another marker) is applied with ``xen-livepatch replace``, then
  the superseded payload is unloaded, the key pressed, the successor
  reverted and unloaded, the key pressed again;
* ``stacked``: the successor applied on top of the first payload, both
  reverted and unloaded in order, the key pressed after each.

Raw payloads: the key after the registering payload's unload makes Xen jump
into freed memory and panic (one boot per flow). Payloads rewritten by
``lp_rewrite rewrite``: every step works and every key press prints what
the function that patches Xen's original at that moment prints (all flows in
one boot). Each key press is cut out of the serial log exactly, by markers
that ``sendkey`` writes to Xen's own console around it.

On arm32 the boots also show the two loader crashes ``check`` predicts, with
Xen's in-tree ``xen_hello_world`` test payload: its objcopy-made notes
(``sh_addralign`` 1, LP016) abort the upload; re-aligned by
``rewrite --align-notes`` it uploads, and its ``b printk`` tail call (LP014)
lands 4 bytes short.

The heavy lifting (downloads, hypervisor rebuild, payload build, initramfs,
QEMU) is in scripts/e2e/; this module drives it and asserts on the serial log.

On any failure (an assertion, a failed script, an unexpected exception, in
a check or in the boot itself) whatever exists of that step's files is
copied to <artifacts>/<target>-<step>/ -- serial log, boot.sh output, the
Arm .dtb, the initramfs build output, the prepare logs -- and the
original error is re-raised with a note saying where. The session ends with
a summary (printed whatever pytest captures) of the hypervisor versions and
the wall time of each prepare and boot.

Environment:
  LP_REWRITE_E2E_REQUIRED=1   a would-be skip (not root, no package registry,
                              a target left out) fails instead (CI sets it)
  LP_REWRITE_ARTIFACTS        where the files of failed steps are copied
                              (default ./e2e-artifacts)
  LP_REWRITE_E2E_CACHE        cache base directory (default /tmp/lp-rewrite-e2e)
  LP_REWRITE_E2E_TARGETS      e.g. "arm64" to run one target only (a skip of
                              the others; a failure with LP_REWRITE_E2E_REQUIRED=1)
  LP_REWRITE_E2E_BOOT_TIMEOUT seconds per QEMU boot (default 300)
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import summary_lines
from tests.elf_sections import ro_offsets

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "e2e"
SKIP_RC = 77  # scripts/e2e/lib.sh: "cannot run here"
TIMEOUT_RC = 124  # timeout(1)
ALL_TARGETS = ("x86_64", "arm64", "arm32", "x86_64-4.20")  # scripts/e2e/lib.sh: E2E_TARGETS
TARGETS = tuple(
    (
        os.environ.get("LP_REWRITE_E2E_TARGETS") or os.environ.get("LP_REWRITE_E2E_ARCHES") or " ".join(ALL_TARGETS)
    ).split()
)
REQUIRED = os.environ.get("LP_REWRITE_E2E_REQUIRED") == "1"
CACHE_BASE = Path(os.environ.get("LP_REWRITE_E2E_CACHE") or "/tmp/lp-rewrite-e2e")
BOOT_TIMEOUT = int(os.environ.get("LP_REWRITE_E2E_BOOT_TIMEOUT", "300"))
PREPARE_TIMEOUT = 1800


def arch_of(target: str) -> str:
    """x86_64-4.20 -> x86_64."""
    return target.split("-", 1)[0]


@dataclass(frozen=True)
class Payload:
    """One payload built from testdata/e2e/ and what runs when its replacement is called."""

    name: str  # file stem in build/raw/ and the xen-livepatch name
    replaced: str  # the original's name in .livepatch.funcs (Xen's symbol-table spelling)
    new_line: str  # printed by the payload's replacement
    original_line: str  # printed by Xen's original function
    stores_pointer: bool  # its load hook registers the replacement: LP001 raw, a rewrite to do


GLOBAL = Payload("replaced_global", "dump_runq", "lp-e2e: NEW dump_runq (key 'Z')", "sched_smt_power_savings:", True)
STATIC = Payload(
    "replaced_static",
    "common/keyhandler.c#show_handlers",
    "lp-e2e: NEW show_handlers (key 'Y')",
    "'Y' pressed -> showing installed handlers",
    True,
)
CUMULATIVE_REPLACE = Payload(
    "cumulative_replace", "dump_runq", "lp-e2e: NEW2 dump_runq (key 'Z')", GLOBAL.original_line, False
)
CUMULATIVE_STACKED = Payload(
    "cumulative_stacked", "dump_runq", "lp-e2e: NEW2 dump_runq (key 'Z')", GLOBAL.original_line, False
)
# Xen 4.20 (x86): keyhandlers are registered only at boot, so the stored
# pointer is the NMI callback and key 'N' raises the NMI (testdata/e2e/nmi_*.c).
# Xen's microcode_nmi_callback prints nothing and returns 0 outside a
# microcode load; Xen then hands the NMI to dom0 as one of unknown reason.
# So the original's mark is only the key's own line, with no payload line
# and the key press completing (the end marker) instead of a panic.
UCODE_NMI = "arch/x86/cpu/microcode/core.c#microcode_nmi_callback"
NMI_ORIGINAL = "Triggering NMI on APIC ID"
NMI_STATIC = Payload("nmi_static", UCODE_NMI, "lp-e2e: NEW microcode_nmi_callback", NMI_ORIGINAL, True)
NMI_REPLACE = Payload("nmi_cumulative_replace", UCODE_NMI, "lp-e2e: NEW2 microcode_nmi_callback", NMI_ORIGINAL, False)
NMI_STACKED = Payload("nmi_cumulative_stacked", UCODE_NMI, "lp-e2e: NEW2 microcode_nmi_callback", NMI_ORIGINAL, False)

CRASH = "crash"  # a Key expectation: Xen jumps into freed payload memory and panics


@dataclass(frozen=True)
class Key:
    """Press ``key``; what Xen must print between sendkey's markers, raw and rewritten (or CRASH)."""

    key: str
    label: str  # unique in a boot: the markers are "lp-e2e-xen: LABEL: begin/end"
    raw: str
    rewritten: str


@dataclass(frozen=True)
class Flow:
    """A sequence of dom0 steps (scripts/e2e/dom0/scenarios.sh): ("upload", name) ... or Key."""

    name: str
    steps: tuple[tuple[str, str] | Key, ...]
    payloads: tuple[Payload, ...]
    panic_frame: str  # the function in Xen's call trace when the raw payload's pointer is called

    def crash_key(self) -> Key:
        """The first key press that panics Xen with the raw payloads (the raw boot ends there)."""
        return next(s for s in self.steps if isinstance(s, Key) and s.raw == CRASH)


def _load(p: Payload, how: str = "apply") -> tuple[tuple[str, str], ...]:
    return (("upload", p.name), (how, p.name))


def _drop(p: Payload) -> tuple[tuple[str, str], ...]:
    return (("revert", p.name), ("unload", p.name))


def single(name: str, a: Payload, key: str, frame: str) -> Flow:
    """Apply, key, revert, unload, key: the registered pointer outlives the payload."""
    return Flow(
        name,
        (
            *_load(a),
            Key(key, f"{name}-applied", a.new_line, a.new_line),
            *_drop(a),
            Key(key, f"{name}-unloaded", CRASH, a.original_line),
        ),
        (a,),
        frame,
    )


def replace(name: str, a: Payload, b: Payload, key: str, frame: str) -> Flow:
    """xapi (ocaml/xapi/livepatch.ml): `replace` with the cumulative successor b, then unload the superseded a.

    Until a's unload the raw pointer still runs a's copy; rewritten, it runs what patches Xen now.
    """
    return Flow(
        name,
        (
            *_load(a),
            Key(key, f"{name}-first", a.new_line, a.new_line),
            *_load(b, "replace"),
            Key(key, f"{name}-replaced", a.new_line, b.new_line),
            ("unload", a.name),
            Key(key, f"{name}-first-unloaded", CRASH, b.new_line),
            *_drop(b),
            Key(key, f"{name}-all-unloaded", CRASH, a.original_line),
        ),
        (a, b),
        frame,
    )


def stacked(name: str, a: Payload, b: Payload, key: str, frame: str) -> Flow:
    """b applied on top of a, then both reverted and unloaded, top first."""
    return Flow(
        name,
        (
            *_load(a),
            *_load(b),
            Key(key, f"{name}-both", a.new_line, b.new_line),
            *_drop(b),
            Key(key, f"{name}-top-unloaded", a.new_line, a.new_line),
            *_drop(a),
            Key(key, f"{name}-all-unloaded", CRASH, a.original_line),
        ),
        (a, b),
        frame,
    )


KEY_FRAME, NMI_FRAME = "handle_keypress", "do_nmi"
FLOWS = {
    "4.17": (
        single("global", GLOBAL, "Z", KEY_FRAME),
        single("static", STATIC, "Y", KEY_FRAME),
        replace("replace", GLOBAL, CUMULATIVE_REPLACE, "Z", KEY_FRAME),
        stacked("stacked", GLOBAL, CUMULATIVE_STACKED, "Z", KEY_FRAME),
    ),
    "4.20": (
        single("nmi", NMI_STATIC, "N", NMI_FRAME),
        replace("nmi-replace", NMI_STATIC, NMI_REPLACE, "N", NMI_FRAME),
        stacked("nmi-stacked", NMI_STATIC, NMI_STACKED, "N", NMI_FRAME),
    ),
}


def xen_version_of(target: str) -> str:
    """x86_64-4.20 -> 4.20; a target without a version boots 4.17."""
    return target.split("-", 1)[1] if "-" in target else "4.17"


def flows_of(target: str) -> tuple[Flow, ...]:
    return FLOWS[xen_version_of(target)]


def payloads_of(target: str) -> list[Payload]:
    return list(dict.fromkeys(p for flow in flows_of(target) for p in flow.payloads))


# What Xen prints when it jumps into the freed payload from handle_keypress.
PANIC_LINES = {
    "x86_64": "FATAL PAGE FAULT",
    "arm64": "Unexpected Trap: Instruction Abort",
    "arm32": "Unexpected Trap: Prefetch Abort",
}
ANY_PANIC = re.compile(r"Panic on CPU|FATAL PAGE FAULT|Unexpected Trap|Xen BUG at")


def skip_or_fail(reason: str) -> None:
    """Skip, unless CI asked for the e2e to be mandatory."""
    if REQUIRED:
        pytest.fail(f"e2e required (LP_REWRITE_E2E_REQUIRED=1) but: {reason}")
    print(f"SKIP e2e: {reason}", file=sys.stderr)
    pytest.skip(reason)


def artifacts_dir() -> Path:
    return Path(os.environ.get("LP_REWRITE_ARTIFACTS") or Path.cwd() / "e2e-artifacts")


def cache_dir(target: str) -> Path:
    """$E2E_DIR of scripts/e2e/lib.sh: the per-target cache."""
    return CACHE_BASE / target


# -- wall time and versions, for the session's closing summary ---------------------


@dataclass
class Record:
    """What the closing summary says: per target, the versions and each timed step."""

    versions: dict[str, str] = field(default_factory=dict)  # target -> one line
    steps: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # target -> [(step, seconds)]

    def time(self, target: str, step: str, seconds: float) -> None:
        self.steps.setdefault(target, []).append((step, seconds))

    def lines(self, wall: float) -> list[str]:
        out = [f"{target}: {line}" for target, line in self.versions.items()]
        total = 0.0
        for target, steps in self.steps.items():
            prepare = sum(t for step, t in steps if step == "prepare")
            boots = [(step, t) for step, t in steps if step != "prepare"]
            boot_time = sum(t for _, t in boots)
            each = ", ".join(f"{step} {t:.1f} s" for step, t in boots)
            out.append(
                f"{target}: prepare {prepare:.1f} s + {len(boots)} boots {boot_time:.1f} s ({each})"
                f" = {prepare + boot_time:.1f} s"
            )
            total += prepare + boot_time
        out.append(f"total: prepare + boots {total:.1f} s; e2e tests wall time {wall:.1f} s")
        return out


RECORD = Record()


@pytest.fixture(scope="module", autouse=True)
def closing_summary(request: pytest.FixtureRequest) -> Iterator[None]:
    """Hand the versions and wall times to the session summary (tests/conftest.py)."""
    t0 = time.monotonic()
    yield
    if RECORD.steps or RECORD.versions:
        lines = summary_lines(request.config, "e2e: hypervisor versions and wall time")
        lines.extend(RECORD.lines(time.monotonic() - t0))


# -- keeping what a failed step leaves behind -------------------------------------


def prepare_logs(target: str) -> list[Path]:
    """The prepare step's logs: prepare.sh's own output (saved by the fixture), apt-get, the arm64 build."""
    d = cache_dir(target)
    return [*sorted(d.glob("*.log")), *sorted(d.glob("apt/*.log")), d / "build" / "prepared.env"]


def step_files(work: Path, label: str) -> list[Path]:
    """A boot's files: serial log, boot.sh and build-initramfs.sh output, the arm64 .dtb (not the initramfs)."""
    return [p for p in sorted(work.glob(f"{label}.*")) if not p.name.endswith(".cpio.gz")]


def keep(target: str, label: str, files: Iterable[Path]) -> str:
    """Copy whichever of ``files`` exist to <artifacts>/<target>-<label>/; say what was kept. Never raises."""
    dest = artifacts_dir() / f"{target}-{label}"
    kept, problems = [], []
    try:
        shutil.rmtree(dest, ignore_errors=True)  # nothing stale from an earlier run
        dest.mkdir(parents=True, exist_ok=True)
        for path in files:
            if not path.is_file():
                continue
            try:
                # Names relative to the cache, flattened: apt/source.log -> apt_source.log.
                rel = path.relative_to(cache_dir(target)) if path.is_relative_to(cache_dir(target)) else Path(path.name)
                name = "_".join(p for p in rel.parts if p != "pytest")
                shutil.copyfile(path, dest / name)
                kept.append(name)
            except OSError as exc:
                problems.append(f"{path}: {exc}")
    except Exception as exc:  # whatever goes wrong here must not hide the failure itself
        problems.append(f"{type(exc).__name__}: {exc}")
    note = f"[{target} {label}] kept in {dest}: {', '.join(kept) or 'nothing (no file existed yet)'}"
    return note + "".join(f"\n  could not keep {p}" for p in problems)


@contextmanager
def kept_on_failure(target: str, label: str, files: Callable[[], Iterable[Path]]) -> Iterator[None]:
    """On any failure in the body (not a skip), keep ``files()`` and re-raise the original error with a note."""
    try:
        yield
    except pytest.skip.Exception:
        raise
    except BaseException as exc:
        note = keep(target, label, files())
        print(note, file=sys.stderr)
        exc.add_note(note)
        raise


@contextmanager
def kept_step(prep: Prepared, label: str) -> Iterator[None]:
    """kept_on_failure for one boot of a prepared target: its own files, the payloads, the prepare logs."""
    with kept_on_failure(
        prep.target, label, lambda: [*step_files(prep.work, label), *payloads(prep), *prepare_logs(prep.target)]
    ):
        yield


@dataclass(frozen=True)
class Prepared:
    """Output of scripts/e2e/prepare.sh for one target."""

    target: str
    e2e_dir: Path
    xen_syms: Path
    xen_build_id: str
    xen_version: str  # 4.17 or 4.20
    raw_dir: Path
    xen_tests: Path | None  # arm32: Xen's in-tree test payloads, built with this hypervisor
    work: Path  # this run's rewritten payloads, initramfs images, logs: $E2E_DIR/pytest
    deb_version: str  # of Debian's xen binary packages
    booted_version: str  # of the hypervisor QEMU boots (Arm: the rebuilt source package)
    booted_from: str

    @property
    def arch(self) -> str:
        return arch_of(self.target)

    @property
    def payloads(self) -> list[Payload]:
        return payloads_of(self.target)

    @property
    def flows(self) -> tuple[Flow, ...]:
        return flows_of(self.target)

    def raw(self, p: Payload) -> Path:
        return self.raw_dir / f"{p.name}.livepatch"

    def rewritten(self, p: Payload) -> Path:
        return self.work / "rewritten" / f"{p.name}.livepatch"


@dataclass(frozen=True)
class BootLog:
    target: str
    label: str
    path: Path
    text: str = field(repr=False)
    rc: int
    seconds: float

    def between(self, start: str, end: str | None) -> str:
        """The log from the line holding `start` up to the one holding `end` (or the end of the log)."""
        i = self.text.find(start)
        if i < 0:
            return ""
        j = self.text.find(end, i + len(start)) if end else -1
        return self.text[i:] if j < 0 else self.text[i:j]

    def key_output(self, key: Key) -> str | None:
        """What Xen printed for one key press, between sendkey's markers; None if it never ended."""
        begin, end = f"lp-e2e-xen: {key.label}: begin", f"lp-e2e-xen: {key.label}: end"
        i = self.text.find(begin)
        j = self.text.find(end, i + 1) if i >= 0 else -1
        return None if j < 0 else self.text[i:j]

    def after_key(self, key: Key) -> str:
        """From a key press's begin marker to the end of the log (where a panic is)."""
        return self.between(f"lp-e2e-xen: {key.label}: begin", None)


def run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run from the repo root with the repo on PYTHONPATH (lp_rewrite need not be installed).

    The command gets its own process group, killed whole on timeout (apt-get,
    make and QEMU children included).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, err = proc.communicate()
            pytest.fail(f"{' '.join(cmd)} timed out after {timeout}s:\n{err[-3000:]}")
        finally:
            kill_group(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL whatever is left of a command's process group."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def lp_rewrite(*args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "lp_rewrite", *args], timeout=300)


def kill_qemu(pidfile: Path, initrd: Path) -> None:
    """Kill the QEMU of a boot by the PID it wrote, if it is somehow still there.

    Only if that PID is still this boot's QEMU: a stale pidfile's PID may now
    be another job's QEMU, so its command line must name this boot's pidfile
    (-pidfile) and initramfs.
    """
    try:
        pid = int(pidfile.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return  # no pidfile, or the process is gone
    ours = os.fsencode(pidfile) in argv and any(os.fsencode(initrd) in arg for arg in argv)
    if comm.startswith("qemu-system") and ours:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def steps_text(flows: Iterable[Flow]) -> str:
    """/payload/steps for scripts/e2e/dom0/scenarios.sh."""
    lines = []
    for flow in flows:
        for step in flow.steps:
            lines.append(f"key {step.key} {step.label}" if isinstance(step, Key) else " ".join(step))
        lines.append("list")
    return "\n".join(lines) + "\n"


def boot(prep: Prepared, label: str, steps: str, payload_files: dict[str, Path]) -> BootLog:
    """Build an initramfs running ``steps`` on ``payload_files`` (name -> file), boot it, return the log.

    boot.sh bounds QEMU with `timeout`; this waits a little longer, then kills
    the boot's process group and QEMU by PID whatever happened.
    """
    initrd = prep.work / f"{label}.cpio.gz"
    steps_file = prep.work / f"{label}.steps"
    steps_file.write_text(steps)
    specs = [f"{name}:{path}" for name, path in payload_files.items()]
    r = run([str(SCRIPTS / "build-initramfs.sh"), prep.target, str(initrd), str(steps_file), *specs], timeout=300)
    (prep.work / f"{label}.initramfs.txt").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, f"build-initramfs.sh failed:\n{r.stderr[-3000:]}"

    log = prep.work / f"{label}.log"
    pidfile = Path(f"{log}.pid")
    cmd = [str(SCRIPTS / "boot.sh"), prep.target, str(initrd), str(log), str(BOOT_TIMEOUT)]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    out = ""
    try:
        out, _ = proc.communicate(timeout=BOOT_TIMEOUT + 60)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = TIMEOUT_RC
    finally:
        kill_group(proc)
        kill_qemu(pidfile, initrd)
        proc.wait()
        seconds = time.monotonic() - t0
        RECORD.time(prep.target, label, seconds)
        (prep.work / f"{label}.boot.txt").write_text(f"{' '.join(cmd)}\nrc={proc.returncode}\n{out}")
    print(f"[{prep.target}] boot {label}: rc={rc} {seconds:.1f}s\n{out.strip()}")
    text = log.read_text(errors="replace").replace("\r", "") if log.exists() else ""
    return BootLog(prep.target, label, log, text, rc, seconds)


@contextmanager
def target_lock(target: str) -> Iterator[None]:
    """Hold <cache>/<target>.lock: one e2e session per target and cache at a time.

    prepare.sh rebuilds the payloads in place and the boots share the cache's
    work directory, so a concurrent session (or scripts/e2e/run.sh, which takes
    the same lock) must wait.
    """
    base = CACHE_BASE
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f"{target}.lock", "w") as lock:
        deadline = time.monotonic() + PREPARE_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{base / target}.lock held by another e2e run for {PREPARE_TIMEOUT}s")
                time.sleep(2)
        yield  # the lock goes with the file


@pytest.fixture(scope="module")
def prepared(request: pytest.FixtureRequest) -> Iterator[Prepared]:
    """Download/build everything for one target (cached across runs by the scripts).

    Each test names its targets with indirect parametrization (``ON_EVERY_TARGET``).
    """
    target: str = request.param
    if target not in ALL_TARGETS:
        pytest.fail(f"LP_REWRITE_E2E_TARGETS names unknown target {target!r} (known: {' '.join(ALL_TARGETS)})")
    if os.geteuid() != 0:
        skip_or_fail("needs root (apt-get, dpkg --add-architecture)")
    with target_lock(target):
        with kept_on_failure(target, "prepare", lambda: prepare_logs(target)):
            prep = _prepare(target)
        print(f"[{target}] hypervisor {prep.booted_version} ({prep.booted_from}); xen debs {prep.deb_version}")
        yield prep


def _prepare(target: str) -> Prepared:
    t0 = time.monotonic()
    r = run([str(SCRIPTS / "prepare.sh"), target], timeout=PREPARE_TIMEOUT)
    seconds = time.monotonic() - t0
    RECORD.time(target, "prepare", seconds)
    # Kept with the cache's other logs (the work directory below is emptied).
    with suppress(OSError):
        (cache_dir(target) / "prepare.log").write_text(f"rc={r.returncode} {seconds:.1f}s\n{r.stderr}{r.stdout}")
    print(f"[{target}] prepare.sh: rc={r.returncode} {seconds:.1f}s")
    if r.returncode == SKIP_RC:
        skips = [ln.split("SKIP: ", 1)[1] for ln in r.stderr.splitlines() if "SKIP: " in ln]
        skip_or_fail(f"{target}: {skips[-1] if skips else r.stderr[-500:]}")
    assert r.returncode == 0, f"scripts/e2e/prepare.sh {target} failed:\n{r.stderr[-4000:]}"
    env_file = Path(r.stdout.strip().splitlines()[-1])
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    # Not pytest's tmp_path: other pytest sessions prune those, and a fixed
    # place next to the cache is easier to find when debugging by hand.
    work = Path(env["E2E_DIR"]) / "pytest"
    shutil.rmtree(work, ignore_errors=True)
    (work / "rewritten").mkdir(parents=True)
    prep = Prepared(
        target=target,
        e2e_dir=Path(env["E2E_DIR"]),
        xen_syms=Path(env["XEN_SYMS"]),
        xen_build_id=env["XEN_BUILD_ID"],
        xen_version=env["XEN_VER"],
        raw_dir=Path(env["RAW_DIR"]),
        xen_tests=Path(env["XEN_TESTS_DIR"]) if env.get("XEN_TESTS_DIR") else None,
        work=work,
        deb_version=env["XEN_DEB_VERSION"],
        booted_version=env["XEN_BOOTED_VERSION"],
        booted_from=env["XEN_BOOTED_FROM"],
    )
    differs = "" if prep.booted_version == prep.deb_version else " (differs; not an error)"
    RECORD.versions[target] = (
        f"Xen {prep.xen_version}: hypervisor {prep.booted_version} ({prep.booted_from}); "
        f"Debian xen binary packages {prep.deb_version}{differs}; build-id {prep.xen_build_id}"
    )
    return prep


@pytest.fixture(scope="module")
def rewritten(prepared: Prepared) -> Prepared:
    """Rewrite every raw payload with the CLI, as a payload build would."""
    with kept_on_failure(prepared.target, "rewrite", lambda: payloads(prepared)):
        for p in prepared.payloads:
            raw, out = prepared.raw(p), prepared.rewritten(p)
            r = lp_rewrite("rewrite", str(raw), "-o", str(out))
            assert r.returncode == 0, f"lp_rewrite rewrite {raw} failed:\n{r.stdout}{r.stderr}"
            assert out.is_file(), f"lp_rewrite rewrite wrote no {out}"
            if p.stores_pointer:
                assert out.read_bytes() != raw.read_bytes(), f"{p.name}: rewrite changed nothing"
    return prepared


def payloads(prep: Prepared) -> list[Path]:
    """The raw and rewritten payloads (kept when a step about them fails)."""
    return [f for p in prep.payloads for f in (prep.raw(p), prep.rewritten(p))]


def check_booted_ours(log: BootLog, prep: Prepared) -> None:
    assert log.rc != TIMEOUT_RC, f"QEMU timed out after {BOOT_TIMEOUT}s"
    assert "=== lp-e2e: dom0 init ready" in log.text, "dom0 never reached /init"
    assert f"build-id {prep.xen_build_id}" in log.text, (
        f"dom0 did not report the expected hypervisor build-id {prep.xen_build_id}"
    )
    assert f"=== lp-e2e: xen {prep.xen_version}." in log.text, f"dom0 did not report Xen {prep.xen_version}"


def dom0_marker(step: tuple[str, str] | Key) -> str:
    """The line scripts/e2e/dom0/scenarios.sh prints when a step succeeded."""
    if isinstance(step, Key):
        return f"=== lp-e2e: rc=0: sendkey {step.key} {step.label} ==="
    op, name = step
    command = {
        "upload": f"xen-livepatch upload {name} /payload/{name}.livepatch",
        "unload": f"xen-livepatch unload {name}",
    }.get(op, f"retry xen-livepatch {op} {name}")
    return f"=== lp-e2e: rc=0: {command} ==="


def check_flow(log: BootLog, flow: Flow, mode: str) -> None:
    """Every step of ``flow`` worked and each key printed what ``mode`` ("raw"/"rewritten") expects.

    dom0's own markers are in order among themselves, not with Xen's lines,
    so steps are checked within the flow's share of dom0's output, and key
    output between sendkey's markers on Xen's console.
    """
    for step in flow.steps:
        if isinstance(step, Key):
            expected = step.raw if mode == "raw" else step.rewritten
            if expected == CRASH:
                after = log.after_key(step)
                assert after, f"{flow.name}: key {step.label} was never pressed"
                assert log.key_output(step) is None, f"raw {flow.name}: Xen survived key {step.label}"
                for line in (PANIC_LINES[arch_of(log.target)], flow.panic_frame):
                    assert line in after, f"raw {flow.name}: no {line!r} after key {step.label}"
                return  # the boot ends with that panic
            out = log.key_output(step)
            assert out is not None, f"{flow.name}: key {step.label} never finished"
            assert expected in out, f"{flow.name}: key {step.label} printed no {expected!r}:\n{out[-1500:]}"
            # No other payload's code ran (a key prints one function's line).
            others = {p.new_line for p in flow.payloads} - {expected}
            wrong = [line for line in others if line in out and expected not in line]
            assert not wrong, f"{flow.name}: key {step.label} also printed {wrong}"
        assert dom0_marker(step) in log.text, f"{flow.name}: step {step} failed (no {dom0_marker(step)!r})"


ON_EVERY_TARGET = pytest.mark.parametrize("prepared", [t for t in TARGETS if t in ALL_TARGETS], indirect=True)


def files_of(prep: Prepared, flows: Iterable[Flow], mode: str) -> dict[str, Path]:
    get = prep.raw if mode == "raw" else prep.rewritten
    return {p.name: get(p) for flow in flows for p in flow.payloads}


@pytest.mark.parametrize(
    ("prepared", "flow"),
    [(t, f) for t in TARGETS if t in ALL_TARGETS for f in flows_of(t)],
    ids=[f"{t}-{f.name}" for t in TARGETS if t in ALL_TARGETS for f in flows_of(t)],
    indirect=["prepared"],
)
def test_raw_payload_crashes_xen(prepared: Prepared, flow: Flow) -> None:
    """Baseline: the raw payload leaves a dangling keyhandler; the key after its unload panics Xen."""
    label = f"raw-{flow.name}"
    with kept_step(prepared, label):
        log = boot(prepared, label, steps_text([flow]), files_of(prepared, [flow], "raw"))
        check_booted_ours(log, prepared)
        check_flow(log, flow, "raw")
        assert "=== lp-e2e: all steps done ===" not in log.text, f"raw {flow.name}: dom0 finished every step"


@ON_EVERY_TARGET
def test_rewritten_payloads_keep_xen_alive(rewritten: Prepared) -> None:
    """Every flow with the rewritten payloads in one boot: no crash, each key runs what patches Xen then."""
    prep = rewritten
    with kept_step(prep, "rewritten"):
        log = boot(prep, "rewritten", steps_text(prep.flows), files_of(prep, prep.flows, "rewritten"))
        check_booted_ours(log, prep)
        panic = ANY_PANIC.search(log.text)
        if panic:
            step = re.findall(r"=== lp-e2e[^=]*: ([^=]*) ===", log.text[: panic.start()])
            pytest.fail(
                f"Xen crashed with the rewritten payloads: {panic.group(0)!r} "
                f"after step {step[-1] if step else '(none)'!r}"
            )
        for flow in prep.flows:
            check_flow(log, flow, "rewritten")
        assert "=== lp-e2e: all steps done ===" in log.text, "dom0 final marker missing"
        assert log.rc == 0, f"boot.sh exited {log.rc}"


@ON_EVERY_TARGET
def test_verify_accepts_rewrite(rewritten: Prepared) -> None:
    """`lp_rewrite verify RAW REWRITTEN --xen-syms` certifies each rewrite."""
    with kept_on_failure(rewritten.target, "verify", lambda: payloads(rewritten)):
        for p in rewritten.payloads:
            r = lp_rewrite(
                "verify", str(rewritten.raw(p)), str(rewritten.rewritten(p)), "--xen-syms", str(rewritten.xen_syms)
            )
            assert r.returncode == 0, f"verify {p.name} exited {r.returncode}:\n{r.stdout}{r.stderr}"


def check_findings(prep: Prepared, payload: Path) -> tuple[int, list[dict[str, object]]]:
    """`lp_rewrite check --xen-syms --format json` on one payload: (exit status, its findings).

    Findings the payload allows itself (``suppressed``: the NMI payload's
    one-shot tasklet, LP002) are left out: they do not fail the check.
    """
    r = lp_rewrite("check", "--xen-syms", str(prep.xen_syms), "--format", "json", str(payload))
    assert r.returncode in (0, 1), f"check {payload} exited {r.returncode}:\n{r.stdout}{r.stderr}"
    (report,) = json.loads(r.stdout)["payloads"]
    assert report["error"] is None, report
    findings: list[dict[str, object]] = [f for f in report["findings"] if not f.get("suppressed")]
    return r.returncode, findings


@ON_EVERY_TARGET
def test_check_flags_raw_and_passes_rewritten(rewritten: Prepared) -> None:
    """`lp_rewrite check --xen-syms`: a raw payload that stores a pointer has LP001 on the replaced function only;
    the others and every rewritten payload pass."""
    with kept_on_failure(rewritten.target, "check", lambda: payloads(rewritten)):
        for p in rewritten.payloads:
            code, findings = check_findings(rewritten, rewritten.raw(p))
            if p.stores_pointer:
                # One LP001 per reference to the payload's copy (two on arm64: adrp + add).
                assert code == 1 and findings, f"check found nothing in raw {p.name}"
                assert {(f["rule"], f["symbol"]) for f in findings} == {("LP001", p.replaced)}, findings
            else:
                assert (code, findings) == (0, []), f"check on raw {p.name}: exit {code}, {findings}"
            code, findings = check_findings(rewritten, rewritten.rewritten(p))
            assert (code, findings) == (0, []), f"check on rewritten {p.name}: exit {code}, {findings}"


ARM_TARGETS = [t for t in TARGETS if arch_of(t) in ("arm64", "arm32")]  # they build Xen's test payloads
HELLO = "xen_hello_world"  # Xen's in-tree test payload (xen/test/livepatch), built by scripts/e2e/build-xen.sh


DEPENDS_NOTES = (".livepatch.depends", ".livepatch.xen_depends")


def rules(findings: list[dict[str, object]]) -> set[object]:
    return {f["rule"] for f in findings}


@pytest.mark.parametrize("prepared", ARM_TARGETS, indirect=True)
def test_arm_loader_crashes_are_predicted(prepared: Prepared) -> None:
    """Xen's Arm loader faults, on the unmodified hypervisor, exactly where `check --xen-syms` predicts them.

    xen_hello_world as Xen builds it: its objcopy-made depends notes have
    sh_addralign 1 and land unaligned.  On arm32 `check` says so (LP016) and
    the upload takes a Data Abort in xen_build_id_check (Xen runs with
    alignment checking); arm64 Xen reads them as they are, and there `check`
    says nothing and the upload works.  Re-aligned by
    `rewrite --align-notes`, LP016 is gone and it uploads; on arm32 its
    `b printk` tail call, an odd number of words away, is one Xen's
    0x00FFFFFE mask encodes 4 bytes short (LP014): Xen crashes in the load
    hook at APPLY.  Without LP014 (arm64) it applies, reverts and unloads.
    The e2e payloads (arm32: built with -mlong-calls) have neither finding.
    """
    prep = prepared
    assert prep.xen_tests is not None, "build-xen.sh built no in-tree test payloads"
    hello = prep.xen_tests / f"{HELLO}.livepatch"
    aligned = prep.work / f"{HELLO}.aligned.livepatch"
    with kept_on_failure(prep.target, "hello-check", lambda: [hello, aligned]):
        _, findings = check_findings(prep, hello)
        found = {(f["rule"], f["symbol"]) for f in findings}
        misaligned = "LP016" in rules(findings)
        # Independently of the check (pyelftools): where Xen's move_payload() puts the notes.
        placed = ro_offsets(hello.read_bytes())
        assert all(placed[n] % 4 for n in DEPENDS_NOTES), placed  # unaligned on both arches
        assert misaligned == (prep.arch == "arm32"), findings
        if prep.arch == "arm32":  # seen on the real hypervisor; pinned so a silent rule fails here
            assert found == {
                ("LP016", ".livepatch.depends"),
                ("LP016", ".livepatch.xen_depends"),
                ("LP014", "printk"),
            }, findings
        r = lp_rewrite("rewrite", "--align-notes", str(hello), "-o", str(aligned))
        assert r.returncode == 0, f"rewrite --align-notes failed:\n{r.stdout}{r.stderr}"
        _, findings = check_findings(prep, aligned)
        assert {(f["rule"], f["symbol"]) for f in findings} == {x for x in found if x[0] != "LP016"}, findings
        misencoded = "LP014" in rules(findings)
        for p in prep.payloads:
            _, findings = check_findings(prep, prep.raw(p))
            assert not {"LP014", "LP016"} & rules(findings), (p.name, findings)

    upload = ("upload", HELLO)
    steps = (upload, ("apply", HELLO), ("revert", HELLO), ("unload", HELLO))
    with kept_step(prep, "hello-raw"):
        log = boot(prep, "hello-raw", steps_text([Flow("hello", (upload,), (), "")]), {HELLO: hello})
        check_booted_ours(log, prep)
        after = log.between("=== lp-e2e: xen ", None)
        if misaligned:
            assert dom0_marker(upload) not in log.text, "LP016 predicted a fault, but the payload uploaded"
            assert "Data Abort" in after and "xen_build_id_check" in after, after[-3000:]
        else:
            assert dom0_marker(upload) in log.text and not ANY_PANIC.search(after), after[-3000:]

    with kept_step(prep, "hello-aligned"):
        log = boot(prep, "hello-aligned", steps_text([Flow("hello", steps, (), "")]), {HELLO: aligned})
        check_booted_ours(log, prep)
        assert dom0_marker(upload) in log.text, "the re-aligned payload did not upload"
        after = log.between(f"livepatch: {HELLO}: Applying", None)
        if misencoded:
            # hi_func, a load hook run by APPLY, tail-calls printk 4 bytes
            # short: printk's arguments are wrong by then and Xen faults in strlen.
            assert ANY_PANIC.search(after) and "strlen" in after, "the LP014 branch did not crash Xen at APPLY"
            assert "=== lp-e2e: all steps done ===" not in log.text
        else:
            assert not ANY_PANIC.search(log.text), after[-3000:]
            for step in steps:
                assert dom0_marker(step) in log.text, f"{step} failed"


@pytest.mark.parametrize("prepared", ARM_TARGETS, indirect=True)
def test_xen_in_tree_payloads_pass_through(prepared: Prepared) -> None:
    """Xen's own test payloads, as its build makes them, have nothing to rewrite: byte-identical, exit 0.

    Among them the hooks-only xen_action_hooks_nofunc and the NOP-only
    xen_nop, which a rewrite that insisted on work to do would refuse.
    """
    assert prepared.xen_tests is not None, "build-xen.sh built no in-tree test payloads"
    payloads = sorted(prepared.xen_tests.glob("*.livepatch"))
    assert {"xen_action_hooks_nofunc", "xen_nop", HELLO} <= {p.stem for p in payloads}, payloads
    with kept_on_failure(prepared.target, "in-tree", lambda: payloads):
        for payload in payloads:
            out = prepared.work / f"{payload.stem}.passed.livepatch"
            r = lp_rewrite("rewrite", str(payload), "-o", str(out))
            assert r.returncode == 0, f"rewrite {payload.name} exited {r.returncode}:\n{r.stdout}{r.stderr}"
            assert out.read_bytes() == payload.read_bytes(), f"{payload.name}: the rewrite changed it"


INIT_TARGETS = [t for t in TARGETS if t in ALL_TARGETS and xen_version_of(t) != "4.17"]


@pytest.mark.parametrize("prepared", INIT_TARGETS, indirect=True)
def test_call_into_freed_init_code_is_predicted(prepared: Prepared) -> None:
    """Xen 4.20 frees register_keyhandler() after boot: `check --xen-syms` says so (LP018), and Xen crashes there.

    The 4.17 keyhandler payload, built against 4.20, resolves the name at
    load (Xen's symbol table still lists init code) and its load hook's call
    jumps into freed memory at APPLY, rewritten or not.
    """
    prep = prepared
    raw = prep.raw(GLOBAL)
    with kept_on_failure(prep.target, "init-check", lambda: [raw]):
        code, findings = check_findings(prep, raw)
        assert code == 1 and {(f["rule"], f["symbol"]) for f in findings} == {
            ("LP001", GLOBAL.replaced),
            ("LP018", "register_keyhandler"),
        }, findings
    upload, apply = ("upload", GLOBAL.name), ("apply", GLOBAL.name)
    with kept_step(prep, "init-call"):
        log = boot(prep, "init-call", steps_text([Flow("init", (upload, apply), (), "")]), {GLOBAL.name: raw})
        check_booted_ours(log, prep)
        assert dom0_marker(upload) in log.text, "the payload did not upload"
        after = log.between(f"livepatch: {GLOBAL.name}: Applying", None)
        assert PANIC_LINES[prep.arch] in after and "lp_e2e_global_load_hook" in after, after[-3000:]


def test_every_target_runs() -> None:
    """LP_REWRITE_E2E_TARGETS may narrow a run by hand, never silently: leaving one out skips (CI: fails)."""
    unknown = [t for t in TARGETS if t not in ALL_TARGETS]
    assert not unknown, f"LP_REWRITE_E2E_TARGETS names unknown targets {unknown} (known: {ALL_TARGETS})"
    left_out = [t for t in ALL_TARGETS if t not in TARGETS]
    if left_out:
        skip_or_fail(f"LP_REWRITE_E2E_TARGETS={' '.join(TARGETS)!r} leaves out {', '.join(left_out)}")


def test_kill_qemu_kills_only_this_boots_qemu(tmp_path: Path) -> None:
    """A pidfile naming a QEMU of another boot (or no QEMU) kills nothing; this boot's QEMU is killed."""
    fake_qemu = tmp_path / "qemu-system-fake"  # /proc/PID/comm is the name exec'd: "qemu-system-fak"
    fake_qemu.symlink_to(sys.executable)
    pidfile, initrd = tmp_path / "boot.log.pid", tmp_path / "boot.cpio.gz"
    other_pid, other_initrd = tmp_path / "other.log.pid", tmp_path / "other.cpio.gz"
    sleeper = "import time; time.sleep(120)"

    def start(exe: Path | str, pid_arg: Path, initrd_arg: Path) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([str(exe), "-c", sleeper, "-pidfile", str(pid_arg), "-initrd", f"k,{initrd_arg}"])
        deadline = time.monotonic() + 30
        while b"-pidfile" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline, "the fake QEMU did not start"
            time.sleep(0.01)
        pidfile.write_text(f"{proc.pid}\n")
        return proc

    cases: list[tuple[Path | str, Path, Path, bool]] = [
        (fake_qemu, other_pid, other_initrd, False),  # another boot's QEMU, with our stale PID
        (fake_qemu, pidfile, other_initrd, False),
        (sys.executable, pidfile, initrd, False),  # not a QEMU at all
        (fake_qemu, pidfile, initrd, True),  # this boot's QEMU
    ]
    for exe, pid_arg, initrd_arg, killed in cases:
        proc = start(exe, pid_arg, initrd_arg)
        try:
            kill_qemu(pidfile, initrd)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5 if killed else 0.5)
            assert (proc.returncode == -signal.SIGKILL) == killed, (exe, pid_arg, initrd_arg, proc.returncode)
        finally:
            proc.kill()
            proc.wait()


def test_a_failure_keeps_what_exists_and_keeps_its_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Artifacts: present files are kept, missing ones are not an error, the original exception goes on."""
    monkeypatch.setenv("LP_REWRITE_ARTIFACTS", str(tmp_path / "artifacts"))
    (tmp_path / "boot.log").write_text("serial")
    files = [tmp_path / "boot.log", tmp_path / "boot.log.dtb"]  # no .dtb: the boot died before QEMU
    with pytest.raises(KeyError) as info, kept_on_failure("arm64", "boot", lambda: files):
        raise KeyError("the real failure")
    assert info.value.args == ("the real failure",)
    kept = tmp_path / "artifacts" / "arm64-boot"
    assert sorted(p.name for p in kept.iterdir()) == ["boot.log"] and (kept / "boot.log").read_text() == "serial"
    assert any(str(kept) in note for note in info.value.__notes__)
    with pytest.raises(pytest.skip.Exception), kept_on_failure("x86_64", "skipped", lambda: files):
        pytest.skip("a skip keeps nothing")
    assert not (tmp_path / "artifacts" / "x86_64-skipped").exists()

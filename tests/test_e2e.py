"""End-to-end test on a real hypervisor.

Boots Debian bookworm's Xen 4.17 (x86-64: the stock hypervisor; arm64: Debian's
source rebuilt with CONFIG_LIVEPATCH=y) under QEMU/TCG with a busybox dom0,
and runs two livepatch payloads whose load hook registers the payload's copy
of a replaced function as a debug-key handler (testdata/e2e/):

* raw payload: after revert + unload, pressing the key makes Xen jump into the
  freed payload and panic (one boot per scenario);
* payload rewritten by ``lp_rewrite rewrite``: the stored pointer is Xen's
  original function, so after unload the key runs the original and dom0 goes
  on to print its final marker (both scenarios in one boot).

The heavy lifting (downloads, hypervisor rebuild, payload build, initramfs,
QEMU) is in scripts/e2e/; this module drives it and asserts on the serial log.

On any failure (an assertion, a failed script, an unexpected exception, in
a check or in the boot itself) whatever exists of that step's files is
copied to <artifacts>/<arch>-<step>/ -- serial log, boot.sh output, the
arm64 .dtb, the initramfs build output, the prepare logs -- and the
original error is re-raised with a note saying where. The session ends with
a summary (printed whatever pytest captures) of the hypervisor versions and
the wall time of each prepare and boot.

Environment:
  LP_REWRITE_E2E_REQUIRED=1   a would-be skip (not root, no package registry,
                              an architecture left out) fails instead (CI sets it)
  LP_REWRITE_ARTIFACTS        where the files of failed steps are copied
                              (default ./e2e-artifacts)
  LP_REWRITE_E2E_CACHE        cache base directory (default /tmp/lp-rewrite-e2e)
  LP_REWRITE_E2E_ARCHES       e.g. "arm64" to run one architecture only (a skip of
                              the other; a failure with LP_REWRITE_E2E_REQUIRED=1)
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

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "e2e"
SKIP_RC = 77  # scripts/e2e/lib.sh: "cannot run here"
TIMEOUT_RC = 124  # timeout(1)
ALL_ARCHES = ("x86_64", "arm64")
ARCHES = tuple(os.environ.get("LP_REWRITE_E2E_ARCHES", " ".join(ALL_ARCHES)).split())
REQUIRED = os.environ.get("LP_REWRITE_E2E_REQUIRED") == "1"
CACHE_BASE = Path(os.environ.get("LP_REWRITE_E2E_CACHE") or "/tmp/lp-rewrite-e2e")
BOOT_TIMEOUT = int(os.environ.get("LP_REWRITE_E2E_BOOT_TIMEOUT", "300"))
PREPARE_TIMEOUT = 1800


@dataclass(frozen=True)
class Scenario:
    """One payload of testdata/e2e/ and what its key prints."""

    name: str
    key: str
    replaced: str  # the original's name in .livepatch.funcs (Xen's symbol-table spelling)
    new_line: str  # printed by the payload's replacement
    original_line: str  # printed by Xen's original function


SCENARIOS = (
    Scenario(
        "replaced_global",
        "Z",
        "dump_runq",
        "lp-e2e: NEW dump_runq (key 'Z') running from payload",
        "sched_smt_power_savings:",
    ),
    Scenario(
        "replaced_static",
        "Y",
        "common/keyhandler.c#show_handlers",
        "lp-e2e: NEW show_handlers (key 'Y') running from payload",
        "'Y' pressed -> showing installed handlers",
    ),
)

# What Xen prints when it jumps into the freed payload from handle_keypress.
PANIC_LINES = {
    "x86_64": ("FATAL PAGE FAULT", "handle_keypress"),
    "arm64": ("Unexpected Trap: Instruction Abort", "handle_keypress"),
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


def cache_dir(arch: str) -> Path:
    """$E2E_DIR of scripts/e2e/lib.sh: the per-arch cache."""
    return CACHE_BASE / arch


# -- wall time and versions, for the session's closing summary ---------------------


@dataclass
class Record:
    """What the closing summary says: per arch, the versions and each timed step."""

    versions: dict[str, str] = field(default_factory=dict)  # arch -> one line
    steps: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # arch -> [(step, seconds)]

    def time(self, arch: str, step: str, seconds: float) -> None:
        self.steps.setdefault(arch, []).append((step, seconds))

    def lines(self, wall: float) -> list[str]:
        out = [f"{arch}: {line}" for arch, line in self.versions.items()]
        total = 0.0
        for arch, steps in self.steps.items():
            prepare = sum(t for step, t in steps if step == "prepare")
            boots = [(step, t) for step, t in steps if step != "prepare"]
            boot_time = sum(t for _, t in boots)
            each = ", ".join(f"{step} {t:.1f} s" for step, t in boots)
            out.append(
                f"{arch}: prepare {prepare:.1f} s + {len(boots)} boots {boot_time:.1f} s ({each})"
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


def prepare_logs(arch: str) -> list[Path]:
    """The prepare step's logs: prepare.sh's own output (saved by the fixture), apt-get, the arm64 build."""
    d = cache_dir(arch)
    return [*sorted(d.glob("*.log")), *sorted(d.glob("apt/*.log")), d / "build" / "prepared.env"]


def step_files(work: Path, label: str) -> list[Path]:
    """A boot's files: serial log, boot.sh and build-initramfs.sh output, the arm64 .dtb (not the initramfs)."""
    return [p for p in sorted(work.glob(f"{label}.*")) if not p.name.endswith(".cpio.gz")]


def keep(arch: str, label: str, files: Iterable[Path]) -> str:
    """Copy whichever of ``files`` exist to <artifacts>/<arch>-<label>/; say what was kept. Never raises."""
    dest = artifacts_dir() / f"{arch}-{label}"
    kept, problems = [], []
    try:
        shutil.rmtree(dest, ignore_errors=True)  # nothing stale from an earlier run
        dest.mkdir(parents=True, exist_ok=True)
        for path in files:
            if not path.is_file():
                continue
            try:
                # Names relative to the cache, flattened: apt/source.log -> apt_source.log.
                rel = path.relative_to(cache_dir(arch)) if path.is_relative_to(cache_dir(arch)) else Path(path.name)
                name = "_".join(p for p in rel.parts if p != "pytest")
                shutil.copyfile(path, dest / name)
                kept.append(name)
            except OSError as exc:
                problems.append(f"{path}: {exc}")
    except Exception as exc:  # whatever goes wrong here must not hide the failure itself
        problems.append(f"{type(exc).__name__}: {exc}")
    note = f"[{arch} {label}] kept in {dest}: {', '.join(kept) or 'nothing (no file existed yet)'}"
    return note + "".join(f"\n  could not keep {p}" for p in problems)


@contextmanager
def kept_on_failure(arch: str, label: str, files: Callable[[], Iterable[Path]]) -> Iterator[None]:
    """On any failure in the body (not a skip), keep ``files()`` and re-raise the original error with a note."""
    try:
        yield
    except pytest.skip.Exception:
        raise
    except BaseException as exc:
        note = keep(arch, label, files())
        print(note, file=sys.stderr)
        exc.add_note(note)
        raise


@contextmanager
def kept_step(prep: Prepared, label: str) -> Iterator[None]:
    """kept_on_failure for one boot of a prepared arch: its own files, the payloads, the prepare logs."""
    with kept_on_failure(
        prep.arch, label, lambda: [*step_files(prep.work, label), *payloads(prep), *prepare_logs(prep.arch)]
    ):
        yield


@dataclass(frozen=True)
class Prepared:
    """Output of scripts/e2e/prepare.sh for one architecture."""

    arch: str
    e2e_dir: Path
    xen_syms: Path
    xen_build_id: str
    raw_dir: Path
    work: Path  # this run's rewritten payloads, initramfs images, logs: $E2E_DIR/pytest
    deb_version: str  # of Debian's xen binary packages
    booted_version: str  # of the hypervisor QEMU boots (arm64: the rebuilt source package)
    booted_from: str

    def raw(self, s: Scenario) -> Path:
        return self.raw_dir / f"{s.name}.livepatch"

    def rewritten(self, s: Scenario) -> Path:
        return self.work / "rewritten" / f"{s.name}.livepatch"


@dataclass(frozen=True)
class BootLog:
    arch: str
    label: str
    path: Path
    text: str = field(repr=False)
    rc: int
    seconds: float

    def between(self, start: str, end: str | None) -> str:
        """The log from the line holding `start` up to the one holding `end`."""
        i = self.text.find(start)
        if i < 0:
            return ""
        j = self.text.find(end, i + len(start)) if end else -1
        return self.text[i:] if j < 0 else self.text[i:j]


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


def has_subcommand(name: str) -> bool:
    return lp_rewrite(name, "--help").returncode == 0


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


def boot(prep: Prepared, label: str, scenarios: list[tuple[Scenario, Path]]) -> BootLog:
    """Build an initramfs running `scenarios` in order, boot it, return the log.

    boot.sh bounds QEMU with `timeout`; this waits a little longer, then kills
    the boot's process group and QEMU by PID whatever happened.
    """
    initrd = prep.work / f"{label}.cpio.gz"
    specs = [f"{s.name}:{s.key}:{payload}" for s, payload in scenarios]
    r = run([str(SCRIPTS / "build-initramfs.sh"), prep.arch, str(initrd), *specs], timeout=300)
    (prep.work / f"{label}.initramfs.txt").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, f"build-initramfs.sh failed:\n{r.stderr[-3000:]}"

    log = prep.work / f"{label}.log"
    pidfile = Path(f"{log}.pid")
    cmd = [str(SCRIPTS / "boot.sh"), prep.arch, str(initrd), str(log), str(BOOT_TIMEOUT)]
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
        RECORD.time(prep.arch, label, seconds)
        (prep.work / f"{label}.boot.txt").write_text(f"{' '.join(cmd)}\nrc={proc.returncode}\n{out}")
    print(f"[{prep.arch}] boot {label}: rc={rc} {seconds:.1f}s\n{out.strip()}")
    text = log.read_text(errors="replace").replace("\r", "") if log.exists() else ""
    return BootLog(prep.arch, label, log, text, rc, seconds)


@contextmanager
def arch_lock(arch: str) -> Iterator[None]:
    """Hold <cache>/<arch>.lock: one e2e session per arch and cache at a time.

    prepare.sh rebuilds the payloads in place and the boots share the cache's
    work directory, so a concurrent session (or scripts/e2e/run.sh, which takes
    the same lock) must wait.
    """
    base = CACHE_BASE
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f"{arch}.lock", "w") as lock:
        deadline = time.monotonic() + PREPARE_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{base / arch}.lock held by another e2e run for {PREPARE_TIMEOUT}s")
                time.sleep(2)
        yield  # the lock goes with the file


@pytest.fixture(scope="module", params=ARCHES)
def prepared(request: pytest.FixtureRequest) -> Iterator[Prepared]:
    """Download/build everything for one arch (cached across runs by the scripts)."""
    arch: str = request.param
    if os.geteuid() != 0:
        skip_or_fail("needs root (apt-get, dpkg --add-architecture)")
    with arch_lock(arch):
        with kept_on_failure(arch, "prepare", lambda: prepare_logs(arch)):
            prep = _prepare(arch)
        print(f"[{arch}] hypervisor {prep.booted_version} ({prep.booted_from}); xen debs {prep.deb_version}")
        yield prep


def _prepare(arch: str) -> Prepared:
    t0 = time.monotonic()
    r = run([str(SCRIPTS / "prepare.sh"), arch], timeout=PREPARE_TIMEOUT)
    seconds = time.monotonic() - t0
    RECORD.time(arch, "prepare", seconds)
    # Kept with the cache's other logs (the work directory below is emptied).
    with suppress(OSError):
        (cache_dir(arch) / "prepare.log").write_text(f"rc={r.returncode} {seconds:.1f}s\n{r.stderr}{r.stdout}")
    print(f"[{arch}] prepare.sh: rc={r.returncode} {seconds:.1f}s")
    if r.returncode == SKIP_RC:
        skips = [ln.split("SKIP: ", 1)[1] for ln in r.stderr.splitlines() if "SKIP: " in ln]
        skip_or_fail(f"{arch}: {skips[-1] if skips else r.stderr[-500:]}")
    assert r.returncode == 0, f"scripts/e2e/prepare.sh {arch} failed:\n{r.stderr[-4000:]}"
    env_file = Path(r.stdout.strip().splitlines()[-1])
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    # Not pytest's tmp_path: other pytest sessions prune those, and a fixed
    # place next to the cache is easier to find when debugging by hand.
    work = Path(env["E2E_DIR"]) / "pytest"
    shutil.rmtree(work, ignore_errors=True)
    (work / "rewritten").mkdir(parents=True)
    prep = Prepared(
        arch=arch,
        e2e_dir=Path(env["E2E_DIR"]),
        xen_syms=Path(env["XEN_SYMS"]),
        xen_build_id=env["XEN_BUILD_ID"],
        raw_dir=Path(env["RAW_DIR"]),
        work=work,
        deb_version=env["XEN_DEB_VERSION"],
        booted_version=env["XEN_BOOTED_VERSION"],
        booted_from=env["XEN_BOOTED_FROM"],
    )
    differs = "" if prep.booted_version == prep.deb_version else " (differs; not an error)"
    RECORD.versions[arch] = (
        f"hypervisor {prep.booted_version} ({prep.booted_from}); "
        f"Debian xen binary packages {prep.deb_version}{differs}; build-id {prep.xen_build_id}"
    )
    return prep


@pytest.fixture(scope="module")
def rewritten(prepared: Prepared) -> Prepared:
    """Rewrite both raw payloads with the CLI, as a payload build would."""
    with kept_on_failure(prepared.arch, "rewrite", lambda: payloads(prepared)):
        for s in SCENARIOS:
            raw, out = prepared.raw(s), prepared.rewritten(s)
            r = lp_rewrite("rewrite", str(raw), "-o", str(out))
            assert r.returncode == 0, f"lp_rewrite rewrite {raw} failed:\n{r.stdout}{r.stderr}"
            assert out.is_file(), f"lp_rewrite rewrite wrote no {out}"
            assert out.read_bytes() != raw.read_bytes(), f"{s.name}: rewrite changed nothing"
    return prepared


def payloads(prep: Prepared) -> list[Path]:
    """The raw and rewritten payloads (kept when a step about them fails)."""
    return [p for s in SCENARIOS for p in (prep.raw(s), prep.rewritten(s))]


def check_booted_ours(log: BootLog, prep: Prepared) -> None:
    assert log.rc != TIMEOUT_RC, f"QEMU timed out after {BOOT_TIMEOUT}s"
    assert "=== lp-e2e: dom0 init ready" in log.text, "dom0 never reached /init"
    assert f"build-id {prep.xen_build_id}" in log.text, (
        f"dom0 did not report the expected hypervisor build-id {prep.xen_build_id}"
    )


# Xen's own lines delimit Xen's output (the key handlers print through
# printk too); the dom0 markers only say which dom0 steps ran, since dom0's
# console output is not ordered with Xen's to the line.
# (scenarios.sh retries an APPLY/REVERT that Xen refused with EBUSY because a
# vCPU missed the rendezvous under TCG, hence the "rc=0" anchors.)
def xen_while_applied(log: BootLog, s: Scenario) -> str:
    return log.between(
        f"livepatch: {s.name} finished APPLY with rc=0", f"livepatch: {s.name} finished REVERT with rc=0"
    )


def xen_after_revert(log: BootLog, s: Scenario) -> str:
    """From the revert on: the unload, then the key press after it."""
    return log.between(f"livepatch: {s.name} finished REVERT with rc=0", None)


def check_applied_and_unloaded(log: BootLog, s: Scenario) -> None:
    """Upload, apply, key (new code runs), revert, unload all worked."""
    t = log.text
    assert f"livepatch: {s.name} finished APPLY with rc=0" in t, f"{s.name}: APPLY failed"
    assert s.new_line in xen_while_applied(log, s), f"{s.name}: the payload's new code did not run while applied"
    assert f"livepatch: {s.name} finished REVERT with rc=0" in t, f"{s.name}: REVERT failed"
    assert f"=== lp-e2e: rc=0: xen-livepatch unload {s.name} ===" in t, f"{s.name}: UNLOAD failed"
    assert f"=== lp-e2e: {s.name}: key {s.key} after unload ===" in t, f"{s.name}: no key press after unload"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_raw_payload_crashes_xen(prepared: Prepared, scenario: Scenario) -> None:
    """Baseline: the raw payload leaves a dangling keyhandler; the key panics Xen."""
    label = f"raw-{scenario.name}"
    with kept_step(prepared, label):
        log = boot(prepared, label, [(scenario, prepared.raw(scenario))])
        check_booted_ours(log, prepared)
        check_applied_and_unloaded(log, scenario)
        after = xen_after_revert(log, scenario)
        for line in PANIC_LINES[prepared.arch]:
            assert line in after, f"raw {scenario.name}: no '{line}' after the key following unload"
        assert f"=== lp-e2e: {scenario.name}: alive after key ===" not in log.text, (
            f"raw {scenario.name}: Xen survived the key after unload (no use-after-free?)"
        )


def test_rewritten_payloads_keep_xen_alive(rewritten: Prepared) -> None:
    """Both rewritten payloads in one boot: after unload the key runs Xen's original."""
    prep = rewritten
    with kept_step(prep, "rewritten"):
        log = boot(prep, "rewritten", [(s, prep.rewritten(s)) for s in SCENARIOS])
        check_booted_ours(log, prep)
        panic = ANY_PANIC.search(log.text)
        if panic:
            step = re.findall(r"=== lp-e2e: ([^=]*) ===", log.text[: panic.start()])
            pytest.fail(
                f"Xen crashed with the rewritten payloads: {panic.group(0)!r} "
                f"after dom0 step {step[-1] if step else '(none)'!r}"
            )
        for s in SCENARIOS:
            check_applied_and_unloaded(log, s)
            after = xen_after_revert(log, s)
            assert s.original_line in after, (
                f"{s.name}: the key after unload did not run Xen's original ({s.original_line!r})"
            )
            assert s.new_line not in after, f"{s.name}: payload code ran after unload"
            assert f"=== lp-e2e: {s.name}: alive after key ===" in log.text
        assert "=== lp-e2e: alive after key ===" in log.text, "dom0 final marker missing"
        assert log.rc == 0, f"boot.sh exited {log.rc}"


def test_verify_accepts_rewrite(rewritten: Prepared) -> None:
    """`lp_rewrite verify RAW REWRITTEN --xen-syms` certifies each rewrite."""
    if not has_subcommand("verify"):
        pytest.skip("lp_rewrite has no 'verify' subcommand")
    with kept_on_failure(rewritten.arch, "verify", lambda: payloads(rewritten)):
        for s in SCENARIOS:
            r = lp_rewrite(
                "verify",
                str(rewritten.raw(s)),
                str(rewritten.rewritten(s)),
                "--xen-syms",
                str(rewritten.xen_syms),
            )
            assert r.returncode == 0, f"verify {s.name} exited {r.returncode}:\n{r.stdout}{r.stderr}"


def check_findings(prep: Prepared, payload: Path) -> tuple[int, list[dict[str, object]]]:
    """`lp_rewrite check --xen-syms --format json` on one payload: (exit status, its findings)."""
    r = lp_rewrite("check", "--xen-syms", str(prep.xen_syms), "--format", "json", str(payload))
    assert r.returncode in (0, 1), f"check {payload} exited {r.returncode}:\n{r.stdout}{r.stderr}"
    (report,) = json.loads(r.stdout)["payloads"]
    assert report["error"] is None, report
    findings: list[dict[str, object]] = report["findings"]
    return r.returncode, findings


def test_check_flags_raw_and_passes_rewritten(rewritten: Prepared) -> None:
    """`lp_rewrite check --xen-syms`: the raw payload's findings are LP001 on the replaced function; none after."""
    if not has_subcommand("check"):
        pytest.skip("lp_rewrite has no 'check' subcommand")
    with kept_on_failure(rewritten.arch, "check", lambda: payloads(rewritten)):
        for s in SCENARIOS:
            code, findings = check_findings(rewritten, rewritten.raw(s))
            assert code == 1 and findings, f"check found nothing in raw {s.name}"
            # One LP001 per reference to the payload's copy (two on arm64: adrp + add).
            assert {(f["rule"], f["symbol"]) for f in findings} == {("LP001", s.replaced)}, findings
            code, findings = check_findings(rewritten, rewritten.rewritten(s))
            assert (code, findings) == (0, []), f"check on rewritten {s.name}: exit {code}, {findings}"


def test_every_architecture_runs() -> None:
    """LP_REWRITE_E2E_ARCHES may narrow a run by hand, never silently: leaving one out skips (CI: fails)."""
    unknown = [a for a in ARCHES if a not in ALL_ARCHES]
    assert not unknown, f"LP_REWRITE_E2E_ARCHES names unknown architectures {unknown} (known: {ALL_ARCHES})"
    left_out = [a for a in ALL_ARCHES if a not in ARCHES]
    if left_out:
        skip_or_fail(f"LP_REWRITE_E2E_ARCHES={' '.join(ARCHES)!r} leaves out {', '.join(left_out)}")


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

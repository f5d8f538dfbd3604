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

Environment:
  LP_REWRITE_E2E_REQUIRED=1   a would-be skip (not root, no package registry)
                              fails instead (CI sets it)
  LP_REWRITE_ARTIFACTS        where serial logs of failed checks are copied
                              (default ./e2e-artifacts)
  LP_REWRITE_E2E_CACHE        cache base directory (default /tmp/lp-rewrite-e2e)
  LP_REWRITE_E2E_ARCHES       e.g. "arm64" to run one architecture only
  LP_REWRITE_E2E_BOOT_TIMEOUT seconds per QEMU boot (default 300)
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "e2e"
SKIP_RC = 77  # scripts/e2e/lib.sh: "cannot run here"
TIMEOUT_RC = 124  # timeout(1)
ARCHES = tuple(os.environ.get("LP_REWRITE_E2E_ARCHES", "x86_64 arm64").split())
BOOT_TIMEOUT = int(os.environ.get("LP_REWRITE_E2E_BOOT_TIMEOUT", "300"))
PREPARE_TIMEOUT = 1800


@dataclass(frozen=True)
class Scenario:
    """One payload of testdata/e2e/ and what its key prints."""

    name: str
    key: str
    new_line: str  # printed by the payload's replacement
    original_line: str  # printed by Xen's original function


SCENARIOS = (
    Scenario(
        "replaced_global",
        "Z",
        "lp-e2e: NEW dump_runq (key 'Z') running from payload",
        "sched_smt_power_savings:",
    ),
    Scenario(
        "replaced_static",
        "Y",
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
    if os.environ.get("LP_REWRITE_E2E_REQUIRED") == "1":
        pytest.fail(f"e2e required (LP_REWRITE_E2E_REQUIRED=1) but: {reason}")
    print(f"SKIP e2e: {reason}", file=sys.stderr)
    pytest.skip(reason)


def artifacts_dir() -> Path:
    return Path(os.environ.get("LP_REWRITE_ARTIFACTS") or Path.cwd() / "e2e-artifacts")


@dataclass(frozen=True)
class Prepared:
    """Output of scripts/e2e/prepare.sh for one architecture."""

    arch: str
    e2e_dir: Path
    xen_syms: Path
    xen_build_id: str
    raw_dir: Path
    work: Path  # this run's rewritten payloads, initramfs images, logs: $E2E_DIR/pytest

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


@contextmanager
def keep_log_on_failure(log: BootLog) -> Iterator[None]:
    """On a failed check, copy the serial log to the artifact dir and say where."""
    try:
        yield
    except (AssertionError, pytest.fail.Exception) as exc:
        dest = artifacts_dir()
        dest.mkdir(parents=True, exist_ok=True)
        saved = dest / f"{log.arch}-{log.label}.log"
        shutil.copyfile(log.path, saved)
        raise AssertionError(f"{exc}\n[{log.arch} {log.label}] serial log kept at {saved}") from None


def kill_qemu(pidfile: Path) -> None:
    """Kill the QEMU of a boot by the PID it wrote, if it is somehow still there."""
    try:
        pid = int(pidfile.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text()
    except (OSError, ValueError):
        return  # no pidfile, or the process is gone
    if comm.startswith("qemu-system"):
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
    assert r.returncode == 0, f"build-initramfs.sh failed:\n{r.stderr[-3000:]}"

    log = prep.work / f"{label}.log"
    pidfile = Path(f"{log}.pid")
    cmd = [str(SCRIPTS / "boot.sh"), prep.arch, str(initrd), str(log), str(BOOT_TIMEOUT)]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=BOOT_TIMEOUT + 60)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        out, rc = "", TIMEOUT_RC
    finally:
        kill_group(proc)
        kill_qemu(pidfile)
        proc.wait()
    seconds = time.monotonic() - t0
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
    base = Path(os.environ.get("LP_REWRITE_E2E_CACHE") or "/tmp/lp-rewrite-e2e")
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
        t0 = time.monotonic()
        r = run([str(SCRIPTS / "prepare.sh"), arch], timeout=PREPARE_TIMEOUT)
        print(f"[{arch}] prepare.sh: rc={r.returncode} {time.monotonic() - t0:.1f}s")
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
        yield Prepared(
            arch=arch,
            e2e_dir=Path(env["E2E_DIR"]),
            xen_syms=Path(env["XEN_SYMS"]),
            xen_build_id=env["XEN_BUILD_ID"],
            raw_dir=Path(env["RAW_DIR"]),
            work=work,
        )


@pytest.fixture(scope="module")
def rewritten(prepared: Prepared) -> Prepared:
    """Rewrite both raw payloads with the CLI, as a payload build would."""
    for s in SCENARIOS:
        raw, out = prepared.raw(s), prepared.rewritten(s)
        r = lp_rewrite("rewrite", str(raw), "-o", str(out))
        assert r.returncode == 0, f"lp_rewrite rewrite {raw} failed:\n{r.stdout}{r.stderr}"
        assert out.is_file(), f"lp_rewrite rewrite wrote no {out}"
        assert out.read_bytes() != raw.read_bytes(), f"{s.name}: rewrite changed nothing"
    return prepared


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
    log = boot(prepared, f"raw-{scenario.name}", [(scenario, prepared.raw(scenario))])
    with keep_log_on_failure(log):
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
    log = boot(prep, "rewritten", [(s, prep.rewritten(s)) for s in SCENARIOS])
    with keep_log_on_failure(log):
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
    for s in SCENARIOS:
        r = lp_rewrite(
            "verify",
            str(rewritten.raw(s)),
            str(rewritten.rewritten(s)),
            "--xen-syms",
            str(rewritten.xen_syms),
        )
        assert r.returncode == 0, f"verify {s.name} exited {r.returncode}:\n{r.stdout}{r.stderr}"


def test_check_flags_raw_and_passes_rewritten(rewritten: Prepared) -> None:
    """`lp_rewrite check --xen-syms`: 1 on the raw payloads, 0 on the rewritten."""
    if not has_subcommand("check"):
        pytest.skip("lp_rewrite has no 'check' subcommand")
    for s in SCENARIOS:
        for payload, want in ((rewritten.raw(s), 1), (rewritten.rewritten(s), 0)):
            r = lp_rewrite("check", "--xen-syms", str(rewritten.xen_syms), str(payload))
            assert r.returncode == want, f"check {payload} exited {r.returncode}, want {want}:\n{r.stdout}{r.stderr}"

"""Bookkeeping shared by both engines, and the engines (each worker is one process running many inputs)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from lp_fuzz.mutate import mutate
from lp_fuzz.seeds import all_seeds
from lp_fuzz.target import CERTIFIED, XEN_REFUSES, Hang, Outcome, Target, _crash


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

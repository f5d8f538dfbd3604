"""The driver: workers, progress, the total and crash sites; ``--replay``."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import lp_fuzz
from lp_fuzz.engines import Stats, worker_atheris, worker_builtin
from lp_fuzz.mutate import MAX_LEN
from lp_fuzz.seeds import ROOT, all_seeds
from lp_fuzz.target import Target

# The command line the workers are started with (scripts/fuzz.py).
ENTRY = ROOT / "scripts" / "fuzz.py"


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
            import atheris  # type: ignore[import-untyped]  # noqa: F401

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
        cmd = [sys.executable, str(ENTRY), "--worker", str(k), "--engine", engine, "--runs", str(n)]
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
    ap = argparse.ArgumentParser(description=lp_fuzz.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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

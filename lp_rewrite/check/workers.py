"""Checking a batch's payloads in forked worker processes (``check --jobs N``).

Fork, not spawn: a worker starts as a copy of the command after its
imports, with its options and any loaded xen-syms, so only paths go out
and reports come back (pickled, in the order of the paths). A worker costs
a fork, not a second start-up and a second parse of xen-syms.

Signals belong to the command. Workers ignore SIGINT (a terminal sends it
to them too); SIGINT, SIGTERM and SIGHUP make the command cancel what has
not started, so each is one line and exit 128+N as without workers. A
worker dies with the command, even a SIGKILLed one (PR_SET_PDEATHSIG), so
a cancelled CI job leaves none behind. A worker that dies (the OOM killer,
a signal) fails the batch with one line rather than hanging it or dropping
its payloads.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

from lp_rewrite.check.findings import PayloadReport
from lp_rewrite.check.run import CheckOptions, report_or_reason
from lp_rewrite.errors import LpRewriteError

# Payloads per round trip at most: enough to amortise a round trip (~0.1 ms)
# over payloads that take ~3 ms each, few enough that the progress bar moves
# and that Ctrl-C waits for little.
CHUNK_MAX = 16

_options: CheckOptions | None = None  # a worker's copy of the command's options (set by _start)


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _start(options: CheckOptions, command: int) -> None:
    global _options
    _options = options
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with(command)


def _die_with(command: int) -> None:
    """Be killed when the command's process ends, however it ends (Linux; elsewhere, a no-op)."""
    import ctypes  # only in a worker: the command does not pay for it

    pr_set_pdeathsig = 1  # <linux/prctl.h>
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (AttributeError, OSError):
        return
    if os.getppid() != command:  # the command ended before prctl() took effect
        os._exit(1)


def _check(path: Path) -> PayloadReport:
    assert _options is not None, "a worker checks only after _start()"
    return report_or_reason(path, _options)


def checked_in_workers(files: Sequence[Path], options: CheckOptions, jobs: int) -> Iterator[PayloadReport]:
    """Each file's report (as ``report_or_reason``), in order, from ``jobs`` worker processes."""
    # Imported here: a check with one worker must not pay for them at start-up.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from lp_rewrite.write import signals_raise

    workers = min(jobs, len(files))
    chunk = max(1, min(CHUNK_MAX, len(files) // (workers * 4)))
    with signals_raise():
        pool = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("fork"), initializer=_start, initargs=(options, os.getpid())
        )
        try:
            yield from pool.map(_check, files, chunksize=chunk)
        except BrokenProcessPool:
            pool.shutdown(wait=False, cancel_futures=True)
            raise LpRewriteError(
                "a check worker process died (a signal, or out of memory); rerun with --jobs 1"
            ) from None
        except BaseException:  # a signal, or the consumer stopped: leave no work queued
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()

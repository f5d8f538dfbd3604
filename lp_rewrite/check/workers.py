"""Checking a batch's payloads in forked worker processes (``check --jobs N``).

A worker is a fork of the command after its imports, with its options,
any loaded xen-syms and the list of files, so only ranges of that list go
out and reports come back (pickled), over one pair of pipes per worker.
The command hands the next range to whichever worker answers and yields
the reports in the order of the files, so the report and every line on
stderr are those of one process.

No ``concurrent.futures`` or ``multiprocessing``: their manager threads and
exit-time joins are what can hang. Python 3.11's pool, cancelled and then
broken (a worker killed by a signal sent to the whole process group),
loses its manager thread to an InvalidStateError and waits at exit for
workers that nothing stops. Here the command owns every step: a worker
that stops answering is one line (exit 2); on any way out, normal or not,
the command closes the pipes, SIGKILLs the workers still running (they
only read files) and reaps them.

Signals are the command's to act on. It holds SIGINT, SIGTERM and SIGHUP
across the forks; each worker ignores all three (a terminal, ``timeout``
or systemd sends them to the whole group) and asks the kernel to SIGKILL
it when the command's process ends (PR_SET_PDEATHSIG), before it lets
them in. So each signal has one outcome, the command's one line and exit
128+N as without workers, and not a race between that and "a worker
died"; and a cancelled CI job leaves no worker behind holding its log pipe
open, even when the command itself is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import selectors
import signal
import struct
import traceback
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from lp_rewrite.check.findings import PayloadReport
from lp_rewrite.check.run import CheckOptions, report_or_reason
from lp_rewrite.errors import LpRewriteError
from lp_rewrite.write import signals_held, signals_raise, write_all

# Payloads per round trip at most: enough to amortise a round trip (~0.1 ms)
# over payloads that take ~3 ms each, few enough that the progress bar moves
# and that a slow payload does not hold up the report's order for long.
CHUNK_MAX = 16

_TASK = struct.Struct("<QQ")  # a range of the files: first, one past the last
_LENGTH = struct.Struct("<Q")  # before each answer: its pickle's length


class _Worker:
    """A forked worker: its pid, the pipe ends the command keeps, and the range it is checking."""

    __slots__ = ("busy", "pid", "reaped", "results", "tasks")

    def __init__(self, pid: int, tasks: int, results: int) -> None:
        self.pid, self.tasks, self.results = pid, tasks, results
        self.busy: tuple[int, int] | None = None
        self.reaped = False


def checked_in_workers(files: Sequence[Path], options: CheckOptions, jobs: int) -> Generator[PayloadReport, None, None]:
    """Each file's report (as ``report_or_reason``), in order, from ``jobs`` workers (fewer for fewer
    files; how many the CPUs allow is the caller's choice). Close the generator to stop early: it stops
    and reaps the workers."""
    count = max(1, min(jobs, len(files)))
    chunk = max(1, min(CHUNK_MAX, len(files) // (count * 4)))
    ranges = [(first, min(first + chunk, len(files))) for first in range(0, len(files), chunk)]
    workers: list[_Worker] = []
    answered = False
    with signals_raise():
        try:
            with signals_held():  # delivered when every worker has its own handlers
                for _ in range(count):
                    workers.append(_fork(files, options, workers))
            yield from _in_order(workers, ranges)
            answered = True
        finally:
            _stop(workers, answered)


def _fork(files: Sequence[Path], options: CheckOptions, earlier: list[_Worker]) -> _Worker:
    opened: list[int] = []
    command = os.getpid()  # taken before the fork: the worker checks that it is still its parent
    try:
        opened.extend(os.pipe())
        opened.extend(os.pipe())
        pid = os.fork()
    except OSError as exc:  # EMFILE, EAGAIN (a process limit): nothing of this worker is left open
        for fd in opened:
            os.close(fd)
        raise LpRewriteError(f"cannot start a check worker ({exc.strerror or exc}); rerun with --jobs 1") from None
    task_r, task_w, result_r, result_w = opened
    if pid == 0:  # the worker: it must never return into the command's stack
        status = 1
        try:
            # The command's ends, and the earlier workers' (a task pipe held open here would never end).
            for fd in (task_w, result_r, *(e for w in earlier for e in (w.tasks, w.results))):
                os.close(fd)
            _serve(files, options, command, task_r, result_w)
            status = 0
        finally:
            os._exit(status)
    os.close(task_r)
    os.close(result_w)
    return _Worker(pid, task_w, result_r)


def _serve(files: Sequence[Path], options: CheckOptions, command: int, tasks: int, results: int) -> None:
    """A worker's life: check each range it is given and answer, until the command closes its task pipe."""
    stop = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for sig in stop:
        signal.signal(sig, signal.SIG_IGN)  # the command stops its workers (with SIGKILL)
    _die_with(command)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stop)
    while (task := _read_exact(tasks, _TASK.size)) is not None:
        first, last = _TASK.unpack(task)
        try:
            answer = ("reports", [report_or_reason(files[k], options) for k in range(first, last)])
            blob = pickle.dumps(answer, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # a bug: the command reports it as one process would (an internal error)
            failure = ("failure", (f"{type(exc).__name__}: {exc}", traceback.format_exc()))
            blob = pickle.dumps(failure, pickle.HIGHEST_PROTOCOL)
        write_all(results, [_LENGTH.pack(len(blob)), blob])


def _die_with(command: int) -> None:
    """Be SIGKILLed when the command's process ends, however it ends (Linux; elsewhere, nothing)."""
    pr_set_pdeathsig = 1  # <linux/prctl.h>
    try:
        import ctypes  # only in a worker: the command does not pay for it

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (ImportError, AttributeError, OSError):  # a Python without ctypes, a libc without prctl
        return
    if os.getppid() != command:  # the command ended before prctl() took effect
        os._exit(1)


def _in_order(workers: list[_Worker], ranges: list[tuple[int, int]]) -> Iterator[PayloadReport]:
    """The reports of every range, in the ranges' order, from whichever worker answers first."""
    todo = iter(ranges)
    ends = dict(ranges)
    waiting: dict[int, list[PayloadReport]] = {}  # answers ahead of their turn, by their range's first file
    with selectors.DefaultSelector() as selector:
        for w in workers:
            if _hand(w, todo):
                selector.register(w.results, selectors.EVENT_READ, w)
        nxt = 0
        while nxt in ends:  # the first file of the next range to report
            if nxt in waiting:
                reports, nxt = waiting.pop(nxt), ends[nxt]
                yield from reports
                continue
            for key, _events in selector.select():
                ready: _Worker = key.data
                assert ready.busy is not None
                waiting[ready.busy[0]] = _receive(ready)
                if not _hand(ready, todo):
                    selector.unregister(ready.results)


def _hand(w: _Worker, todo: Iterator[tuple[int, int]]) -> bool:
    """Give ``w`` the next range; with none left, close its task pipe (it exits) and say False."""
    w.busy = next(todo, None)
    if w.busy is None:
        os.close(w.tasks)
        w.tasks = -1
        return False
    try:
        write_all(w.tasks, [_TASK.pack(*w.busy)])
    except BrokenPipeError:  # it died after its last answer, or before its first task
        _died(w)
    return True


def _receive(w: _Worker) -> list[PayloadReport]:
    size = _read_exact(w.results, _LENGTH.size)
    blob = None if size is None else _read_exact(w.results, _LENGTH.unpack(size)[0])
    if blob is None:
        _died(w)
    kind, value = pickle.loads(blob)
    if kind == "failure":
        summary, worker_traceback = value
        exc = RuntimeError(f"{summary} (in a check worker)")
        exc.add_note(worker_traceback)
        raise exc
    reports: list[PayloadReport] = value
    return reports


def _died(w: _Worker) -> NoReturn:
    _, status = os.waitpid(w.pid, 0)
    w.reaped = True
    raise LpRewriteError(f"a check worker process {_ended(status)}; rerun with --jobs 1")


def _ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        try:
            name = signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            name = f"signal {os.WTERMSIG(status)}"
        return f"was killed by {name} (the OOM killer sends SIGKILL)"
    return f"exited with status {os.waitstatus_to_exitcode(status)} before it answered"


def _stop(workers: list[_Worker], answered: bool) -> None:
    """Close the command's ends and reap every worker: one that has answered everything exits
    when its task pipe closes; one cut short is SIGKILLed (it only reads files). All are killed
    before any is waited for, with signals held: a second Ctrl-C must not leave one running."""
    with signals_held():
        for w in workers:
            for fd in (w.tasks, w.results):
                if fd >= 0:
                    os.close(fd)
            w.tasks = w.results = -1
            if not answered and not w.reaped:
                os.kill(w.pid, signal.SIGKILL)  # not reaped yet, so still this worker's pid
        for w in workers:
            if not w.reaped:
                with contextlib.suppress(ChildProcessError):  # a host program that reaps children itself
                    os.waitpid(w.pid, 0)
                w.reaped = True


def _read_exact(fd: int, size: int) -> bytes | None:
    """``size`` bytes, or None at end of file (a short read at end of file is end of file too)."""
    parts, left = [], size
    while left:
        part = os.read(fd, min(left, 1 << 20))
        if not part:
            return None
        parts.append(part)
        left -= len(part)
    return b"".join(parts)

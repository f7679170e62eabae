"""The process lane: cpu calls on a process pool, kept correct under faults.

loky (and the stdlib pool) have no per-call timeout, cannot stop a running
call, and fail *every* pending call when one worker dies, killing the other
workers as they go. This module puts a queue and a bookkeeper in front of
the pool so that a crash costs only the call that caused it::

    LaneRunner (pickled payload; an unpicklable input failed before this)
      |
      v
    ProcessLane.run ---- waits for a slot: our own FIFO (a Semaphore), so
      |                  cancelling a queued call removes exactly that call
      |  at most `workers` calls in the pool at once, one slot per call,
      |  held across re-dispatches
      v
    executor.submit(run_marked, entry, payload, marker)
      |                                      worker: marker <- its pid (exclusive)
      |                                              entry(payload)
      |                                              marker removed
      +-- bytes ------------------------------> the caller decodes them
      +-- pool broken (a worker died) --------> verdict, taken in the pool's
      |     thread by a done-callback, *before* the pool kills the others:
      |       this call's worker is dead      -> culprit: WorkerLost (charged)
      |       alive, or the call never started -> innocent: replace the pool,
      |                                          submit again (not charged)
      +-- deadline or cancelled -------------> take the call back: claim its
            marker first (the worker will skip it), or SIGKILL its worker
            (the pool breaks; the other calls are innocents, as above)

Which worker runs which call is a marker per submission in a per-lane
directory (on tmpfs where there is one): a symbolic link whose target is the
pid of the worker running the call (an ``O_EXCL`` file on Windows). It works
with any local pool without touching its internals or initializer, survives
the worker's death (the evidence a crash needs), and creating it is atomic
and exclusive, which makes "claim it before it starts" and "start it"
mutually exclusive without a lock shared between processes. It costs a
``symlink`` and an ``unlink`` per call: a few microseconds. Executors whose
workers are not local processes (Dask) get the queue and the bound but no
markers: Dask attributes its own crashes (``KilledWorker``) and a timed-out
call is cancelled, not killed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import itertools
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from ..logs import get_logger
from .pool import (
    default_executor,
    executor_workers,
    is_broken,
    is_default_pool,
    replacement,
    worker_processes,
)
from .worker import ENTRY_NAMES, NOT_RUN, make_mark, read_mark, run_marked

log = get_logger("engine")

#: An innocent call whose pool broke this many times under it *with nobody to
#: blame* (a worker that died idle, or after it returned) fails anyway: such a
#: crash loop must not run for ever. Breaks with a culprit never count.
MAX_DISRUPTIONS = 3


class WorkerLost(Exception):
    """The worker process running a call died; the scheduler names node and step.

    ``pid`` and ``exitcode`` are known for local pools (``exitcode`` < 0 is
    the signal number, negated, as in ``multiprocessing``).
    """

    def __init__(self, message: str, *, pid: int | None = None, exitcode: int | None = None):
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode


def is_worker_crash(exc: BaseException) -> bool:
    """True when ``exc`` says a worker process died under a call.

    loky's ``TerminatedWorkerError`` and the stdlib's ``BrokenProcessPool``
    (one is a subclass of the other), and dask.distributed's ``KilledWorker``
    (matched by class name, so Dask is never imported here).
    """
    if isinstance(exc, BrokenProcessPool | WorkerLost):
        return True
    return any(cls.__name__ == "KilledWorker" for cls in type(exc).__mro__)


def describe_exit(exitcode: int | None) -> str:
    """Exit code or signal in words, with the likely cause."""
    if exitcode is None:
        return "exit status unknown"
    if exitcode >= 0:
        return f"exited with code {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        return f"killed by signal {-exitcode}"
    hints = {
        "SIGKILL": ", possibly out of memory (the kernel's OOM killer sends SIGKILL)",
        "SIGSEGV": " (a segmentation fault, in native code)",
        "SIGBUS": " (a bus error, in native code)",
        "SIGABRT": " (aborted, e.g. a failed assertion in native code)",
    }
    return f"killed by signal {name}{hints.get(name, '')}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs; a zombie (died, not yet reaped) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not sys.platform.startswith("linux"):
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


@dataclass(frozen=True)
class Verdict:
    """What a broken pool meant for one call: did its own worker die?

    ``attributed`` says whether the break had a culprit at all (this call or
    another, of this run or another): only a break nobody can be blamed for
    counts toward ``MAX_DISRUPTIONS``.
    """

    culprit: bool
    pid: int | None = None
    exitcode: int | None = None
    attributed: bool = False


@dataclass(frozen=True)
class Break:
    """One broken pool as it was when the break was first reported."""

    #: pid -> exit code (None if unknown) of the workers found dead.
    dead: Mapping[int, int | None]
    #: A dead worker was running a call (its marker held its pid), or a lane
    #: killed it on purpose (a timeout, a cancellation): the break has a culprit.
    attributed: bool


class _Breaks:
    """The process's record of broken pools: who died, and whether anyone is to blame.

    One per process (``_BREAKS``), next to the one default pool it mostly
    describes: lanes of concurrent runs share that pool, so one break must be
    judged alike by all of them, and its culprit may be another run's call.

    A break is taken once, by the first verdict (in the pool's thread, before
    any caller hears of the break, so before a culprit's lane can remove its
    marker), and shared by the others. A worker closes its end of the pool's
    pipes a moment before the kernel marks it dead, so the snapshot waits (at
    most ``patience`` s) until at least one worker is seen dead, as loky does
    before it reports exit codes. Then the break is attributed when a dead
    worker's pid is in a marker of this driver (it was running a call) or was
    killed by a lane.

    Invariant: ``_seen`` maps id(executor) -> (executor, Break) for the last
    ``keep`` pools that broke (keeping the executor stops its id from being
    reused meanwhile); ``_killed`` holds the last pids lanes killed. Both are
    only touched under ``_lock`` (verdicts run in the pools' threads).
    """

    def __init__(self, patience: float = 0.5, keep: int = 8) -> None:
        self._lock = threading.Lock()
        self._seen: dict[int, tuple[Executor, Break]] = {}
        self._killed: collections.deque[int] = collections.deque(maxlen=64)
        self._patience = patience
        self._keep = keep

    def __repr__(self) -> str:
        return f"<_Breaks seen={len(self._seen)} killed={len(self._killed)}>"

    def killed(self, pid: int) -> None:
        """A lane killed worker ``pid`` on purpose: the break it causes has a culprit."""
        with self._lock:
            self._killed.append(pid)

    def known(self, executor: Executor) -> Break | None:
        """The break of ``executor`` if one was taken already."""
        with self._lock:
            found = self._seen.get(id(executor))
            return found[1] if found is not None and found[0] is executor else None

    def of(self, executor: Executor, procs: Mapping[int, Any]) -> Break:
        """The break of broken ``executor``, taken now if it is the first time it is asked."""
        with self._lock:
            found = self._seen.get(id(executor))
            if found is not None and found[0] is executor:
                return found[1]
            dead: dict[int, int | None] = {}
            deadline = time.monotonic() + self._patience
            while True:
                for pid in list(procs):
                    code = _exitcode(procs, pid)
                    if code is not None or not pid_alive(pid):
                        dead[pid] = code
                if dead or time.monotonic() > deadline:
                    break
                time.sleep(0.002)
            attributed = any(pid in self._killed for pid in dead) or _running_on(dead)
            brk = Break(dead=dead, attributed=attributed)
            self._seen.pop(id(executor), None)
            self._seen[id(executor)] = (executor, brk)
            while len(self._seen) > self._keep:
                del self._seen[next(iter(self._seen))]
            return brk


_BREAKS = _Breaks()


class _Submission:
    """One submission of one call to the pool.

    Invariant: ``verdict`` is written at most once, by the pool's thread, in
    a done-callback registered before the loop wraps ``future``, so the loop
    reads it only after it was written.
    """

    __slots__ = ("executor", "future", "marker", "procs", "verdict")

    def __init__(
        self,
        executor: Executor,
        marker: str | None,
        procs: dict[int, Any] | None,
    ) -> None:
        self.executor = executor
        self.marker = marker
        self.procs = procs
        self.future: Future[bytes] | None = None
        self.verdict: Verdict | None = None

    def judge(self, fut: Future[bytes]) -> None:
        """Done-callback, in the pool's thread: blame this call, or not, for a break.

        Both loky and the stdlib fail the pending futures *before* killing the
        surviving workers, so here the worker that died is dead and the
        others are still alive: liveness tells culprit from innocent.
        """
        if fut.cancelled() or self.marker is None:
            return
        exc = fut.exception()
        if exc is None or not is_worker_crash(exc):
            return
        pid = _read_pid(self.marker)
        brk = _BREAKS.of(self.executor, self.procs or {})
        if pid is None:  # never started, or finished before the break
            self.verdict = Verdict(culprit=False, attributed=brk.attributed)
            return
        if pid not in brk.dead and (pid in (self.procs or {}) or pid_alive(pid)):
            self.verdict = Verdict(culprit=False, pid=pid, attributed=brk.attributed)
            return
        code = brk.dead.get(pid)
        if code is None:
            code = _exitcode(self.procs, pid)
        if code is None:
            code = _exitcode_from_message(str(exc))
        self.verdict = Verdict(culprit=True, pid=pid, exitcode=code, attributed=True)


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class ProcessLane:
    """Runs pickled calls on a process pool for one run; see the module docstring.

    Invariant: at most ``workers`` calls are submitted and unfinished at once
    (one slot each, held across re-dispatches); every submission to a local
    pool has its own marker under ``_dir``; a call is only submitted to an
    executor that is not broken (it is replaced first); pools in ``_owned``
    were made here and are shut down by ``aclose``.
    """

    def __init__(
        self, executor: Executor | None, *, workers: int, pool_size: int | None = None
    ) -> None:
        self._given = executor
        # The default pool's size for this lane (None: sized to the machine).
        self._pool_size = pool_size
        self._default = is_default_pool(executor)
        self._executor: Executor | None = executor
        self._owned: list[Executor] = []
        self._slots = asyncio.Semaphore(max(1, workers))
        self._replacing = asyncio.Lock()
        self._dir: str | None = None
        self._seq = itertools.count()
        self._live: set[_Submission] = set()
        # Pools in which this lane killed a worker: about to break, so nothing
        # new goes there (a call sent now would only be lost and re-run).
        self._doomed: list[Executor] = []
        self._state = _State.OPEN
        # (executor, its worker processes or None, its size): looked up once per pool.
        self._known: tuple[Executor, dict[int, Any] | None, int] | None = None
        #: Calls submitted again after an innocent loss (for logs and tests).
        self.redispatched = 0
        #: Worker pids this lane killed to stop a timed-out or cancelled call.
        self.killed: list[int] = []

    def __repr__(self) -> str:
        kind = "default" if self._default else type(self._given).__name__
        return (
            f"<ProcessLane {self._state.value} executor={kind} running={len(self._live)} "
            f"redispatched={self.redispatched} killed={len(self.killed)}>"
        )

    @property
    def executor(self) -> Executor:
        """The pool calls go to now (the default pool is created on first use)."""
        if self._executor is None:
            self._executor = default_executor(self._pool_size)
        return self._executor

    async def run(
        self,
        entry: Callable[[bytes], bytes],
        payload: bytes,
        *,
        timeout: float | None = None,
        what: str = "call",
    ) -> bytes:
        """``entry(payload)`` in a worker process; its bytes.

        Raises ``TimeoutError`` once the call has run ``timeout`` seconds in a
        worker (see ``_wait``; restarted when an innocent call is submitted
        again), after making sure the call stops; ``WorkerLost`` when its own
        worker died; ``CancelledError`` after taking the call back the same way.
        """
        if self._state is _State.CLOSED:
            raise RuntimeError(f"{self!r} is closed; start a new run")
        async with self._slots:
            disruptions = 0
            while True:
                executor = self._executor
                if executor is None or self._doomed or is_broken(executor):
                    executor = await self._usable_executor()
                prepared = self._submission(executor)
                if self._cold(executor):
                    sub = await self._submit_off_loop(prepared, entry, payload)
                else:
                    sub = self._submit(prepared, entry, payload)
                if sub is not None:
                    self._live.add(sub)
                if sub is None:  # the pool broke between our check and the submit
                    known = _BREAKS.known(executor)
                    if known is None or not known.attributed:
                        disruptions += 1
                    if disruptions >= MAX_DISRUPTIONS:
                        raise WorkerLost(
                            f"{what}: the process pool broke {disruptions} times before the "
                            "call could start, with no call to blame; check what kills its workers"
                        )
                    continue
                assert sub.future is not None
                waiting = asyncio.wrap_future(sub.future)
                try:
                    if timeout is None:
                        data = await waiting
                    else:
                        data = await self._wait(sub, waiting, timeout)
                except (TimeoutError, asyncio.CancelledError):
                    waiting.cancel()  # nobody will read what the killed call left behind
                    self._take_back(sub)
                    raise
                except BaseException as exc:
                    self._live.discard(sub)
                    if not is_worker_crash(exc):
                        raise
                    _unlink(sub.marker)
                    verdict = sub.verdict
                    if sub.marker is None or (verdict is not None and verdict.culprit):
                        raise self._lost(what, exc, verdict) from exc
                    attributed = verdict is not None and verdict.attributed
                    if not attributed:
                        disruptions += 1
                    if disruptions >= MAX_DISRUPTIONS:
                        raise WorkerLost(
                            f"{what}: the process pool broke {disruptions} times while the call "
                            "ran on a healthy worker, each time with no call to blame (a worker "
                            f"died idle or after it returned: {exc}); check what kills its workers"
                        ) from exc
                    self.redispatched += 1
                    log.warning(
                        "cpu_call_redispatched",
                        call=what,
                        attributed=attributed,
                        disruptions=disruptions,
                    )
                    continue
                self._live.discard(sub)
                if data == NOT_RUN:  # only a closed lane's markers vanish
                    raise RuntimeError(f"{what} was not run: {self!r} closed under it")
                return data

    async def _wait(
        self, sub: _Submission, waiting: asyncio.Future[bytes], timeout: float | None
    ) -> bytes:
        """The call's bytes; ``TimeoutError`` once it has *run* for ``timeout`` seconds.

        Time spent queued in the pool (behind another run's calls, or while
        a fresh pool starts its workers) is not the node's: the clock starts
        when the worker writes the marker. Without markers (Dask) it starts
        at the submission.
        """
        if timeout is None:
            return await waiting
        if sub.marker is None:
            async with asyncio.timeout(timeout):
                return await waiting
        poll = min(max(timeout / 10, 0.01), 0.25)
        wait_s = timeout
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=wait_s)
            if done:
                return waiting.result()
            started = _started_at(sub.marker)
            if started is None:  # not started yet: look again soon
                wait_s = poll
                continue
            wait_s = started + timeout - time.time()
            if wait_s <= 0:
                raise TimeoutError(f"ran past its timeout of {timeout} s")

    # -- submitting ----------------------------------------------------------

    async def _usable_executor(self) -> Executor:
        executor = self._executor
        if executor is not None and not is_broken(executor) and executor not in self._doomed:
            return executor
        async with self._replacing:  # concurrent re-dispatches share one replacement
            executor = self._executor
            if executor is not None and executor in self._doomed:
                # The pool notices the killed worker within milliseconds.
                deadline = time.monotonic() + 5.0
                while not is_broken(executor) and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                self._doomed.remove(executor)
            if executor is None:
                executor = default_executor(self._pool_size)
            elif is_broken(executor):
                # Shutting a broken pool down may join its threads: off the loop.
                executor = await asyncio.to_thread(self._replace, executor)
            self._executor = executor
            return executor

    def _replace(self, broken: Executor) -> Executor:
        found = replacement(broken, default=self._default)
        if found is None:
            raise WorkerLost(
                f"the executor {broken!r} is broken (a worker died) and the engine cannot "
                "replace this kind of executor; pass a working one, or none for the default pool"
            )
        fresh, owned = found
        if owned:
            for old in self._owned:
                old.shutdown(wait=True)
            self._owned = [fresh]
        log.warning("process_pool_replaced", broken=repr(broken), fresh=repr(fresh))
        return fresh

    def _local(self, executor: Executor) -> tuple[dict[int, Any] | None, int]:
        """``executor``'s worker processes (None if not a local pool) and its size, cached."""
        known = self._known
        if known is not None and known[0] is executor:
            return known[1], known[2]
        procs, size = worker_processes(executor), executor_workers(executor)
        self._known = (executor, procs, size)
        return procs, size

    def _cold(self, executor: Executor) -> bool:
        """True when a local pool has fewer workers than its size: its next submit spawns."""
        procs, size = self._local(executor)
        return procs is not None and len(procs) < size

    def _submission(self, executor: Executor) -> _Submission:
        """A submission to ``executor`` with its marker's path, made on the loop's thread.

        Never in ``_submit``'s thread: two cold submissions at once would each
        create the lane's marker directory, and one would be left behind.
        """
        procs, _ = self._local(executor)
        return _Submission(executor, self._marker() if procs is not None else None, procs)

    def _submit(
        self, sub: _Submission, entry: Callable[[bytes], bytes], payload: bytes
    ) -> _Submission | None:
        """Hand ``sub`` to its executor; None if the pool broke first. Any thread."""
        executor = sub.executor
        try:
            fut = executor.submit(run_marked, ENTRY_NAMES.get(entry, entry), payload, sub.marker)
        except BrokenProcessPool:
            return None
        except RuntimeError:
            # A shared default pool shut down by someone else: a fresh one serves.
            if self._default and is_broken(executor):
                return None
            raise
        sub.future = fut
        fut.add_done_callback(sub.judge)  # before wrap_future's: see _Submission
        return sub

    async def _submit_off_loop(
        self, sub: _Submission, entry: Callable[[bytes], bytes], payload: bytes
    ) -> _Submission | None:
        """``_submit`` in a thread: a cold pool starts its workers inside ``submit``.

        Spawning costs ~20 ms a worker (0.37 s for 16), which on the loop's
        thread would stall every io call of the run. Scenario: the run is
        cancelled while the thread submits. The submission is then waited
        for and taken back, so no call is left running unsupervised.
        """
        fut = asyncio.ensure_future(asyncio.to_thread(self._submit, sub, entry, payload))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            if not fut.done():
                await asyncio.wait({fut})
            if not fut.cancelled() and fut.exception() is None:
                sent = fut.result()
                if sent is not None:
                    self._take_back(sent)
            raise

    def _marker(self) -> str:
        if self._dir is None:
            base = marker_base()
            _sweep(base)
            self._dir = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=base)
        return f"{self._dir}{os.sep}{next(self._seq)}"

    # -- faults ----------------------------------------------------------------

    def _lost(self, what: str, exc: BaseException, verdict: Verdict | None) -> WorkerLost:
        pid = verdict.pid if verdict else None
        code = verdict.exitcode if verdict else None
        if code is None:
            code = _exitcode_from_message(str(exc))
        where = f" (pid {pid})" if pid else ""
        return WorkerLost(
            f"the worker process running it{where} died: {describe_exit(code)}",
            pid=pid,
            exitcode=code,
        )

    def _take_back(self, sub: _Submission) -> None:
        """Make sure an abandoned call stops using a worker; never blocks for long.

        A call still in the executor's queue is cancelled, or claimed through
        its marker so the worker skips it; a running one has its worker
        killed (the pool breaks; the other calls in it are innocents).
        """
        self._live.discard(sub)
        if sub.future is not None:
            sub.future.cancel()
        if sub.marker is None:
            return  # not a local pool: cancelling the future is all there is
        pid = _claim(sub.marker)
        if pid is None:
            return
        # Only ever a worker of this pool: never the driver or a stranger.
        procs = sub.procs or {}
        if pid in procs and pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))  # Windows: no SIGKILL
            _BREAKS.killed(pid)
            self.killed.append(pid)
            if sub.executor not in self._doomed:
                self._doomed.append(sub.executor)
            log.warning("cpu_worker_killed", pid=pid)

    async def aclose(self) -> None:
        """Stop calls still running, drop the markers, shut owned pools down; idempotent."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        for sub in list(self._live):
            self._take_back(sub)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        owned, self._owned = self._owned, []
        for pool in owned:
            await asyncio.to_thread(pool.shutdown, wait=True)


# -- markers and exit codes ------------------------------------------------------

_PREFIX = "engine-cpu-"


def marker_base() -> str:
    """Where marker directories live: tmpfs (``/dev/shm``) where there is one."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()


def _running_on(pids: Mapping[int, Any]) -> bool:
    """True when a marker of this driver holds one of ``pids``: a call ran on that worker.

    Read only when a pool breaks. A marker is removed when its call ends, so
    one holding a dead worker's pid belongs to a call that was running when
    that worker died (or that a lane killed, which ``_Breaks`` knows anyway).
    """
    if not pids:
        return False
    base = marker_base()
    mine = f"{_PREFIX}{os.getpid()}-"
    try:
        dirs = [os.path.join(base, n) for n in os.listdir(base) if n.startswith(mine)]
    except OSError:
        return False
    for d in dirs:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            pid = _read_pid(os.path.join(d, name))
            if pid is not None and pid in pids:
                return True
    return False


def _sweep(base: str) -> None:
    """Remove marker directories of drivers that died without cleaning up (SIGKILL).

    Pids are compared within this host and pid namespace, which is the reach
    of ``/dev/shm`` (one per IPC namespace) and of the temp dir in practice.
    """
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        if not name.startswith(_PREFIX):
            continue
        pid = name[len(_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)


#: What the driver writes into a marker it claims: not a pid, so never run.
_CLAIMED = "claimed"


def _read_pid(marker: str) -> int | None:
    text = read_mark(marker)
    return int(text) if text is not None and text.isdigit() else None


def _started_at(marker: str) -> float | None:
    """When the worker took the call (the marker's time, wall clock); None if it has not."""
    if _read_pid(marker) is None:  # absent, or claimed by the driver
        return None
    try:
        return os.lstat(marker).st_mtime  # the marker itself, not what a link names
    except OSError:
        return None


def _claim(marker: str) -> int | None:
    """Take a call back: None when it will never run (claimed, or finished), else its pid."""
    try:
        make_mark(marker, _CLAIMED)
    except FileExistsError:
        pass
    except OSError:
        return None
    else:
        return None  # a marker the worker cannot create: it will not run the call
    # The worker owns the call. A marker file (Windows) is empty for a few
    # microseconds between its create and its write: wait that out (bounded).
    for _ in range(200):
        text = read_mark(marker)
        if text is None:
            return None  # it finished meanwhile: nothing runs on
        if text.isdigit():
            return int(text)
        time.sleep(0.0005)
    return None


def _unlink(marker: str | None) -> None:
    if marker is not None:
        with contextlib.suppress(OSError):
            os.unlink(marker)


def _exitcode(procs: Mapping[int, Any] | None, pid: int) -> int | None:
    """The exit code of dead worker ``pid``: from the pool's process object, else waitid."""
    proc = (procs or {}).get(pid)
    if proc is not None:
        try:
            code = proc.exitcode
        except Exception:
            code = None
        if isinstance(code, int):
            return code
    waitid = getattr(os, "waitid", None)
    if waitid is None:
        return None
    try:
        # WNOWAIT: read a dead child's status without reaping it (the pool will).
        info = waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except (ChildProcessError, OSError):
        return None
    if info is None:
        return None
    if info.si_code == os.CLD_EXITED:
        return int(info.si_status)
    return -int(info.si_status)


def _exitcode_from_message(message: str) -> int | None:
    """loky's "The exit codes of the workers are {SIGKILL(-9)}": the code when only one."""
    codes = re.findall(r"\((-?\d+)\)", message.split("exit codes", 1)[-1])
    return int(codes[0]) if "exit codes" in message and len(set(codes)) == 1 else None


__all__ = [
    "MAX_DISRUPTIONS",
    "Break",
    "ProcessLane",
    "Verdict",
    "WorkerLost",
    "describe_exit",
    "is_worker_crash",
    "pid_alive",
]

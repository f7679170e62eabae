"""The process lane: cpu calls on a process pool, kept correct under faults.

loky (and the stdlib pool) have no per-call timeout, cannot stop a running
call, and fail *every* pending call when one worker dies, killing the other
workers as they go. This module puts a queue and a bookkeeper in front of
the pool so that a crash costs only the call that caused it::

    CpuLane (a pickled request; an unpicklable input failed before this)
      |
      v
    ProcessLane.run ---- waits for a slot: our own FIFO (a Semaphore), so
      |                  cancelling a queued call removes exactly that call
      |  at most `workers` x IN_FLIGHT_PER_WORKER calls in a local pool at
      |  once (`workers` elsewhere), one slot per call, held across
      |  re-dispatches: the pool's own queue stays fed, so a worker that
      |  finishes takes the next call without waiting for the driver
      v
    executor.submit(run_marked, "calls", payload, marker)
      |                                      worker: marker <- its pid (exclusive)
      |                                              run_calls(payload)
      |                                              marker removed
      +-- bytes ------------------------------> the caller decodes them
      +-- pool broken (a worker died) --------> verdict, taken in the pool's
      |     thread by a done-callback, *before* the pool kills the others:
      |       this call's worker is dead      -> culprit: WorkerDied (charged)
      |       alive, or the call never started -> innocent: replace the pool,
      |                                          submit again (not charged)
      +-- deadline or cancelled -------------> take the call back: claim its
      |     marker first (the worker will skip it), or SIGKILL its worker
      |     and all it started (kill_tree: the worker leads a process group
      |     of its own); the pool breaks, the other calls are innocents
      +-- past its memory limit -------------> the memory watch (memory.py)
      |                                        kills the worker's tree: culprit
      +-- the executor cannot run anything --> ExecutorUnusable: shut down,
            (failures.py)                      an initializer that raises, no
                                               worker can be started

Which worker runs which call is a marker per submission in the driver's
marker directory (on tmpfs where there is one): a symbolic link whose target is the
pid of the worker running the call (an ``O_EXCL`` file on Windows). It works
with any local pool without touching its internals or initializer, survives
the worker's death (the evidence a crash needs), and creating it is atomic
and exclusive, which makes "claim it before it starts" and "start it"
mutually exclusive without a lock shared between processes. It costs a
``symlink`` and an ``unlink`` per call: a few microseconds. Executors whose
workers are not local processes (Dask) get the queue and the bound but no
markers: Dask attributes its own crashes (``KilledWorker``) and a timed-out
call is cancelled, not killed.

The parts live beside this module: ``failures`` (what can go wrong before a result comes back),
``markers``, ``breaks`` (who died, who is to blame), ``memory`` (the
memory watch), ``results`` (large results, received off the loop) and
``pool`` (the default pools, cloning a user's pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import os
import time
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..logs import get_logger
from ..procs import kill_tree, pid_alive
from .breaks import BREAKS, Submission, exitcode_from_message
from .failures import (
    ExecutorUnusable,
    WorkerDied,
    describe_exit,
    is_worker_crash,
    mb,
    shut_down_message,
    spawn_failed_message,
)
from .markers import claim, forget, marker_base, new_marker, started_at, unlink
from .memory import WATCH
from .pool import (
    bury,
    default_executor,
    executor_workers,
    initializer_of,
    is_broken,
    is_default_pool,
    is_shut_down,
    probe_initializer,
    replacement,
    worker_processes,
)
from .results import discard
from .worker import NOT_RUN, run_marked

log = get_logger("engine")

#: Calls in a local pool's queue per worker, at most (see ProcessLane.run).
IN_FLIGHT_PER_WORKER = 2

#: An innocent call whose pool broke this many times under it *with nobody to
#: blame* (a worker that died idle, or after it returned) fails anyway: such a
#: crash loop must not run for ever. Breaks with a culprit never count.
MAX_DISRUPTIONS = 3


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class ProcessLane:
    """Runs pickled calls on a process pool for one run; see the module docstring.

    Invariant: at most ``_window`` calls are submitted and unfinished at once
    (one slot each, held across re-dispatches); every submission to a local
    pool has its own marker (``markers.new_marker``); a call is only submitted to an
    executor that is not broken (it is replaced first); pools in ``_owned``
    were made here and are shut down by ``aclose``; once ``_unusable`` is
    set, every call fails with it (the executor cannot run anything).
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
        # A local pool's queue is kept fed beyond its workers: a call waiting
        # there is still the driver's to take back (its marker claims it) and
        # its timeout starts only when a worker takes it (the marker's time).
        # Elsewhere (Dask) a timeout starts at the submission: one per worker.
        local = executor is None or worker_processes(executor) is not None
        self._window = max(1, workers) * (IN_FLIGHT_PER_WORKER if local else 1)
        self._slots = asyncio.Semaphore(self._window)
        if executor is None:
            # Looked up now (creating the pool object starts no process): the
            # first call then skips the replacement path. One that cannot be
            # made (no file descriptor left) is the first call's to report.
            with contextlib.suppress(OSError):
                self._executor = default_executor(pool_size)
        self._replacing = asyncio.Lock()
        self._live: set[Submission] = set()
        # Pools in which this lane killed a worker: about to break, so nothing
        # new goes there (a call sent now would only be lost and re-run).
        self._doomed: list[Executor] = []
        self._state = _State.OPEN
        # (executor, its worker processes or None, its size): looked up once per pool.
        self._known: tuple[Executor, dict[int, Any] | None, int] | None = None
        # Set when the executor cannot run any call: every later call fails with it.
        self._unusable: ExecutorUnusable | None = None
        # Pools whose initializer was tried in a fresh worker after a break
        # nobody caused, with what it raised (None: it ran fine).
        self._probed: dict[Executor, str | None] = {}
        #: Calls submitted again after an innocent loss (for logs and tests).
        self.redispatched = 0
        #: Worker pids this lane killed to stop a timed-out or cancelled call.
        self.killed: list[int] = []
        # Workers of the pools this lane replaced (broken): their markers go at aclose.
        self._buried: list[int] = []

    def __repr__(self) -> str:
        kind = "default" if self._default else type(self._given).__name__
        return (
            f"<ProcessLane {self._state.value} executor={kind} running={len(self._live)} "
            f"redispatched={self.redispatched} killed={len(self.killed)}>"
        )

    @property
    def window(self) -> int:
        """Calls submitted and unfinished at once, at most (a local pool's queue is kept fed)."""
        return self._window

    @property
    def executor(self) -> Executor:
        """The pool calls go to now (the default pool is created on first use)."""
        if self._executor is None:
            self._executor = default_executor(self._pool_size)
        return self._executor

    async def run(
        self,
        payload: bytes,
        *,
        timeout: float | None = None,
        what: str = "call",
        memory_limit: int | None = None,
    ) -> bytes:
        """``worker.run_calls(payload)`` in a worker process; its frame (``results.opened``).

        Raises ``TimeoutError`` once the call has run ``timeout`` seconds in a
        worker (see ``_wait``; restarted when an innocent call is submitted
        again), after making sure the call stops; ``WorkerDied`` when its own
        worker died, or was ended because it (and what it started) used more
        than ``memory_limit`` bytes; ``ExecutorUnusable`` when the executor
        cannot run any call; ``CancelledError`` after taking the call back.
        """
        if self._state is _State.CLOSED:
            raise RuntimeError(f"{self!r} is closed; start a new run")
        if self._unusable is not None:
            raise self._unusable
        async with self._slots:
            disruptions = 0
            while True:
                executor = self._executor
                if executor is None or self._doomed or is_broken(executor):
                    executor = await self._usable_executor()
                prepared = self._submission(executor)
                if self._cold(executor):
                    sub = await self._submit_off_loop(prepared, payload)
                else:
                    sub = self._submit(prepared, payload)
                if sub is not None:
                    self._live.add(sub)
                if sub is None:  # the pool broke between our check and the submit
                    known = BREAKS.known(executor)
                    if known is None or not known.attributed:
                        disruptions += 1
                        await self._check_initializer(executor, what)
                    if disruptions >= MAX_DISRUPTIONS:
                        raise WorkerDied(
                            f"{what}: the process pool broke {disruptions} times before the "
                            "call could start, with no call to blame; check what kills its workers"
                        )
                    continue
                assert sub.future is not None
                if memory_limit is not None and sub.marker is not None and sub.procs is not None:
                    sub.watch = WATCH.watch(sub.marker, sub.procs, memory_limit)
                waiting = sub.waiting
                assert waiting is not None
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
                    WATCH.unwatch(sub.watch)
                    if not is_worker_crash(exc):
                        raise
                    unlink(sub.marker)
                    verdict = sub.verdict
                    if sub.marker is None or (verdict is not None and verdict.culprit):
                        raise self._lost(what, exc, sub) from exc
                    attributed = verdict is not None and verdict.attributed
                    if not attributed:
                        disruptions += 1
                        await self._check_initializer(sub.executor, what)
                    if disruptions >= MAX_DISRUPTIONS:
                        raise WorkerDied(
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
                WATCH.unwatch(sub.watch)
                if data == NOT_RUN:  # only a closed lane's markers vanish
                    raise RuntimeError(f"{what} was not run: {self!r} closed under it")
                return data

    async def _wait(
        self, sub: Submission, waiting: asyncio.Future[bytes], timeout: float | None
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
            started = started_at(sub.marker)
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
                try:
                    executor = default_executor(self._pool_size)
                except OSError as exc:  # its pipes and locks need file descriptors
                    raise self._refuse(
                        spawn_failed_message(None, exc, default=True), exc, sticky=False
                    ) from exc
            elif is_broken(executor):
                # Shutting a broken pool down may join its threads: off the loop.
                executor = await asyncio.to_thread(self._replace, executor)
            self._executor = executor
            return executor

    def _replace(self, broken: Executor) -> Executor:
        """A pool to use instead of ``broken``: the default pool's successor, or a clone.

        A user's pool is cloned the way it was made (``pool.clone``), or not
        at all: ``ExecutorUnusable`` when it was shut down, or is of a kind
        the engine cannot rebuild faithfully.
        """
        if not self._default and is_shut_down(broken):
            raise self._refuse(shut_down_message(broken))
        # Scenario: loky kills the survivors of a break with the children it
        # finds, and empties its list of workers, before this runs; a worker that
        # died on its own meanwhile, or a process in a survivor's group that is
        # not its child, would live on. Bury every worker the break saw as well.
        known = BREAKS.known(broken)
        workers = list({*(self._local(broken)[0] or ()), *(known.workers if known else ())})
        bury(workers)
        self._buried += workers
        try:
            found = replacement(broken, default=self._default)
        except OSError as exc:
            raise self._refuse(
                spawn_failed_message(broken, exc, default=self._default), exc, sticky=False
            ) from exc
        if found is None:
            raise self._refuse(
                f"the executor you passed ({type(broken).__name__}) broke (a worker process "
                "died) and the engine cannot rebuild that kind of executor the way you made "
                "it (it clones only loky's and the standard library's ProcessPoolExecutor, "
                "not subclasses); pass a pool it can clone, or none for the default pool"
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

    def _submission(self, executor: Executor) -> Submission:
        """A submission to ``executor`` with its marker's path, made on the loop's thread.

        Never in ``_submit``'s thread: two cold submissions at once would each
        create the lane's marker directory, and one would be left behind.
        """
        procs, _ = self._local(executor)
        marker = new_marker() if procs is not None else None
        return Submission(executor, marker, procs, asyncio.get_running_loop().create_future())

    def _submit(self, sub: Submission, payload: bytes) -> Submission | None:
        """Hand ``sub`` to its executor; None if the pool broke first. Any thread."""
        executor = sub.executor
        try:
            fut = executor.submit(run_marked, "calls", payload, sub.marker)
        except BrokenProcessPool:
            return None
        except RuntimeError as exc:
            # A shared default pool shut down by someone else: a fresh one serves.
            if self._default and is_broken(executor):
                return None
            if is_shut_down(executor) or "shutdown" in str(exc):
                raise self._refuse(shut_down_message(executor), exc) from exc
            raise
        except OSError as exc:
            # Starting a worker failed (no file descriptor or process left).
            # The pool may have queued the call before it tried: claim it so
            # that no worker ever runs it.
            if sub.marker is not None:
                claim(sub.marker)
            raise self._refuse(
                spawn_failed_message(executor, exc, default=self._default), exc, sticky=False
            ) from exc
        sub.future = fut
        fut.add_done_callback(sub.settled)  # the verdict, then the loop: see Submission
        return sub

    async def _submit_off_loop(self, sub: Submission, payload: bytes) -> Submission | None:
        """``_submit`` in a thread: a cold pool starts its workers inside ``submit``.

        Spawning costs ~20 ms a worker (0.37 s for 16), which on the loop's
        thread would stall every io call of the run. Scenario: the run is
        cancelled while the thread submits. The submission is then waited
        for and taken back, so no call is left running unsupervised.
        """
        fut = asyncio.ensure_future(asyncio.to_thread(self._submit, sub, payload))
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

    # -- faults ----------------------------------------------------------------

    def _lost(self, what: str, exc: BaseException, sub: Submission) -> WorkerDied:
        verdict = sub.verdict
        pid = verdict.pid if verdict else None
        code = verdict.exitcode if verdict else None
        if code is None:
            code = exitcode_from_message(str(exc))
        where = f" (pid {pid})" if pid else ""
        over = sub.watch.exceeded if sub.watch is not None else None
        if over is not None:
            limit = sub.watch.limit if sub.watch is not None else 0
            return WorkerDied(
                f"the worker process running it (pid {over[0]}) used {mb(over[1])} with what "
                f"it started, more than memory_per_worker={mb(limit)}, and was killed; "
                "raise memory_per_worker, or make the node use less memory per call",
                pid=over[0],
                exitcode=code,
            )
        return WorkerDied(
            f"the worker process running it{where} died: {describe_exit(code)}",
            pid=pid,
            exitcode=code,
        )

    def _refuse(
        self, message: str, cause: BaseException | None = None, *, sticky: bool = True
    ) -> ExecutorUnusable:
        """``ExecutorUnusable(message)``; ``sticky``: every later call of the lane fails with it.

        Not sticky: a worker that could not start for want of file
        descriptors or processes may start once some are freed.
        """
        error = ExecutorUnusable(message)
        error.__cause__ = cause
        if sticky:
            self._unusable = error
        return error

    async def _check_initializer(self, executor: Executor, what: str) -> None:
        """After a break nobody caused: raise ``ExecutorUnusable`` if the pool's initializer raises.

        Such a pool breaks each time it starts a worker, with no call to
        blame, so without this the calls would be re-sent until the safety
        valve gave up with nothing said about why. Its initializer is run
        once in a fresh worker made the same way (off the loop; one per
        broken pool, whichever calls ask).
        """
        if self._default or initializer_of(executor) is None:
            return
        async with self._replacing:
            if executor not in self._probed:
                self._probed[executor] = await asyncio.to_thread(probe_initializer, executor)
        if self._unusable is not None:
            raise self._unusable
        failed = self._probed[executor]
        if failed is not None:
            init = initializer_of(executor)
            name = getattr(init[0], "__qualname__", repr(init[0])) if init else "?"
            last = failed.strip().splitlines()[-1] if failed.strip() else "an error"
            raise self._refuse(
                f"the process pool's initializer {name} raised {last} in a fresh worker, so "
                "the pool breaks each time it starts a worker and no call can run on it; fix "
                "the initializer (or pass a pool without it). Its traceback, from the worker:\n"
                + failed
            )

    def _take_back(self, sub: Submission) -> None:
        """Make sure an abandoned call stops using a worker; never blocks for long.

        A call still in the executor's queue is cancelled, or claimed through
        its marker so the worker skips it; a running one has its worker
        killed (the pool breaks; the other calls in it are innocents).
        """
        self._live.discard(sub)
        WATCH.unwatch(sub.watch)
        fut = sub.future
        if fut is not None:
            if fut.done() and not fut.cancelled() and not fut.exception():
                discard(fut.result())  # a result spilled to a file nobody will read
            if fut.cancel():
                return  # still in the executor's own queue: no worker will ever take it
        if sub.marker is None:
            return  # not a local pool: cancelling the future is all there is
        pid = claim(sub.marker)
        # The marker (our claim, or the worker's pid: the evidence a break's
        # verdict reads first) goes once the call is over for the pool.
        if fut is not None:
            fut.add_done_callback(functools.partial(_forget, sub.marker))
        else:
            unlink(sub.marker)
        if pid is None:
            return
        # Only ever a worker of this pool: never the driver or a stranger.
        procs = sub.procs or {}
        if pid in procs and pid != os.getpid():
            BREAKS.killed(pid)  # before the kill: the break it causes has a culprit
            kill_tree(pid)  # the worker and all it started (a Popen, a nested pool)
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
        # A queued call that a surviving worker of a broken pool took just before
        # the pool killed it leaves a marker nobody removes. Not at the break:
        # other calls' verdicts on it may still be reading their markers then.
        forget(self._buried)
        owned, self._owned = self._owned, []
        for pool in owned:
            await asyncio.to_thread(pool.shutdown, wait=True)


def _forget(marker: str, _fut: Future[bytes]) -> None:
    unlink(marker)


__all__ = [
    "MAX_DISRUPTIONS",
    "ExecutorUnusable",
    "ProcessLane",
    "WorkerDied",
    "describe_exit",
    "is_worker_crash",
    "marker_base",
    "pid_alive",
]

"""Running node calls: where each one runs, per lane and mode, and measuring it there.

==========  ============  =====================  ============================
lane        sequential    concurrent             parallel
==========  ============  =====================  ============================
io          awaited       task on the loop       task on the loop
thread      called        thread pool            thread pool
cpu         called        thread pool (GIL)      process pool (``CpuLane``)
inline      on the loop   on the loop            on the loop
==========  ============  =====================  ============================

``placement.place`` is the one answer to "where does this call run". The
dispatcher (``engine.dispatch``) asks it once per node and run, then hands
each call to its lane: ``loop`` (a coroutine on the loop, a plain call on
the loop's thread, a call on the loop's thread pool) or ``cpu`` (the
process pool, through ``process.ProcessLane``, which bounds, times out,
kills and re-dispatches calls when workers die). Every lane returns an
``Outcome`` (``calls``): the call's trace record and its value or its
typed failure.

Timeouts: an io call is cancelled; a cpu call in ``parallel`` mode has its
worker process killed; a thread (or ``concurrent``-mode cpu) call cannot be
stopped, so it runs on in the background and its result is discarded. Sync
calls made on the loop thread (inline, and sync nodes in ``sequential``) are
not timed out.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import MutableMapping
from concurrent.futures import Executor
from typing import Literal

from .calls import (
    Call,
    Cancelled,
    Failure,
    NodeRaised,
    Outcome,
    Refused,
    TimedOut,
    WorkerLost,
)
from .cpu import CpuLane, Guard
from .failures import (
    CallRefused,
    ExecutorUnusable,
    PayloadError,
    WorkerDied,
    describe_exit,
    is_worker_crash,
)
from .measure import Resources
from .placement import Placement, place
from .pool import default_workers, executor_workers
from .process import ProcessLane
from .threads import POOLS, LoopThreads

Mode = Literal["sequential", "concurrent", "parallel"]
MODES: tuple[Mode, ...] = ("sequential", "concurrent", "parallel")


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class Lanes:
    """The lanes of one run: the loop's thread pool and the cpu lane, each made on first use.

    Invariant: the cpu lane exists only while OPEN and is closed by
    ``aclose``; its executor is borrowed (the default pool or the user's)
    and never shut down here (only replacements the process lane made for
    a broken user pool are). The thread pool is the event loop's, shared
    with the other runs on it (``threads``): held from the first thread
    call until ``aclose`` gives it back.
    """

    def __init__(
        self,
        mode: Mode,
        executor: Executor | None = None,
        *,
        fn_cache: MutableMapping[str, bytes] | None = None,
        resources: Resources | None = None,
        pool_size: int | None = None,
        memory_limit: int | None = None,
        guard: Guard | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        self.mode: Mode = mode
        self._user_executor = executor
        self._cpu: CpuLane | None = None
        # The loop whose shared thread pool this run holds, and the pool.
        self._threads: tuple[asyncio.AbstractEventLoop, LoopThreads] | None = None
        self._fns: MutableMapping[str, bytes] = fn_cache if fn_cache is not None else {}
        #: worker_init resources of calls made in this process (kept per app, across runs).
        self.resources = resources if resources is not None else Resources()
        # A cap on the default pool's size (memory_per_worker); None: sized to the machine.
        self._pool_size = pool_size
        # The run's memory_per_worker (bytes): the least any cpu call may use.
        self._memory_limit = memory_limit
        self._guard = guard
        self._cpu_workers: int | None = None
        self._state = _State.OPEN

    def __repr__(self) -> str:
        return f"<Lanes mode={self.mode} state={self._state.value}>"

    @property
    def cpu(self) -> CpuLane:
        """The cpu lane in ``parallel`` mode (its pool front is created on first use)."""
        if self._state is _State.CLOSED:
            raise RuntimeError(f"{self!r} is closed; start a new run")
        if self._cpu is None:
            process = ProcessLane(
                self._user_executor,
                workers=self.cpu_workers,
                pool_size=self._pool_size if self._user_executor is None else None,
            )
            self._cpu = CpuLane(
                process, self._fns, memory_limit=self._memory_limit, guard=self._guard
            )
        return self._cpu

    @property
    def used_pool(self) -> bool:
        """True once a cpu call went to the process pool in this run."""
        return self._cpu is not None

    @property
    def process_executor(self) -> Executor:
        """The executor of the cpu lane in ``parallel`` mode (created on first use)."""
        return self.cpu.process.executor

    @property
    def cpu_workers(self) -> int:
        """Workers the parallel cpu lane can use: the bound the metrics divide by.

        Asked without creating the default pool, so sequential runs start no
        process; counted once per run (a plain attribute: ``cached_property``
        takes a lock on every first read, and every run reads it).
        """
        n = self._cpu_workers
        if n is None:
            if self._user_executor is not None:
                n = executor_workers(self._user_executor)
            else:
                n = default_workers()
            # A memory cap binds a user's pool too: fewer calls in flight than workers.
            n = self._cpu_workers = min(n, self._pool_size) if self._pool_size else n
        return n

    def threads(self) -> LoopThreads:
        """The running loop's shared thread pool, held by this run until ``aclose``."""
        if self._state is _State.CLOSED:
            raise RuntimeError(f"{self!r} is closed; start a new run")
        if self._threads is None:
            loop = asyncio.get_running_loop()
            self._threads = (loop, POOLS.acquire(loop))
        return self._threads[1]

    async def aclose(self) -> None:
        """Close the cpu lane and give the loop's thread pool back; idempotent."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        if self._cpu is not None:
            await self._cpu.aclose()
        if self._threads is not None:
            (loop, pool), self._threads = self._threads, None
            # The loop's last run shuts the pool down, off the loop.
            await POOLS.release(loop, pool)


__all__ = [
    "MODES",
    "Call",
    "CallRefused",
    "Cancelled",
    "CpuLane",
    "ExecutorUnusable",
    "Failure",
    "Guard",
    "Lanes",
    "Mode",
    "NodeRaised",
    "Outcome",
    "PayloadError",
    "Placement",
    "ProcessLane",
    "Refused",
    "Resources",
    "TimedOut",
    "WorkerDied",
    "WorkerLost",
    "describe_exit",
    "is_worker_crash",
    "place",
]

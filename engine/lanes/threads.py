"""The thread lane's pool: one per event loop, shared by every run on it.

Hundreds of concurrent runs on one loop each starting a pool of their own
would start hundreds of threads; they share one ``LoopThreads`` instead,
reached through the ``PerLoop`` registry ``POOLS`` (process-wide state,
documented in ``engine.perloop``: lazily created per loop, lock-guarded,
closed by the last run that releases it).

A thread cannot be stopped: a call that runs past its timeout (or whose run
was cancelled) keeps its thread until it returns by itself. Shared by many
runs, a pool could fill up with such abandoned calls and starve every other
run on the loop; so once half its threads are held by abandoned calls the
pool is retired (it takes no new calls, and its threads end as their calls
do) and a fresh one takes the next calls.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..perloop import PerLoop

#: Threads of the pool one event loop's runs share (io-bound calls: more than the cores).
THREADS_PER_LOOP = 32


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class LoopThreads:
    """The thread-lane pool of one event loop.

    Invariant: ``_pool`` is the pool new calls go to; ``_abandoned`` counts
    the calls of ``_pool`` that their caller gave up on and that still hold
    a thread; it never reaches ``max_workers // 2`` (at that count the pool
    is retired and replaced). ``_lock`` guards both: the count drops in a
    done callback, on the pool's own thread.
    """

    def __init__(self, max_workers: int = THREADS_PER_LOOP) -> None:
        if max_workers < 2:
            raise ValueError(f"max_workers must be >= 2, got {max_workers}")
        self.max_workers = max_workers
        self._lock = threading.Lock()
        self._pool = self._new_pool()
        self._abandoned = 0
        self.retired = 0  # pools given up for abandoned calls (for tests and diagnostics)
        self._state = _State.OPEN

    def __repr__(self) -> str:
        return (
            f"<LoopThreads {self._state.value} max_workers={self.max_workers} "
            f"abandoned={self._abandoned} retired={self.retired}>"
        )

    def _new_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="engine-thread")

    async def run(self, call: Callable[[], Any], timeout: float | None = None) -> Any:
        """``call()`` on a thread; past ``timeout`` (or cancelled) it is abandoned, not stopped."""
        if self._state is _State.CLOSED:
            raise RuntimeError(f"{self!r} is closed; start a new run")
        with self._lock:
            pool = self._pool
        cf = pool.submit(call)
        fut = asyncio.wrap_future(cf)
        try:
            if timeout is None:
                return await fut
            return await asyncio.wait_for(fut, timeout)
        except (TimeoutError, asyncio.CancelledError):
            # A call still queued was cancelled with the future; one already
            # running keeps its thread, which the pool must not count on.
            self._abandon(pool, cf)
            raise

    def _abandon(self, pool: ThreadPoolExecutor, cf: Future[Any]) -> None:
        with self._lock:
            if cf.done() or self._pool is not pool:
                return
            self._abandoned += 1
            retire = self._abandoned >= self.max_workers // 2
            if retire:
                self._pool, self._abandoned = self._new_pool(), 0
                self.retired += 1
        if retire:
            # Queued calls of other runs still run on its free threads; its
            # stuck threads exit when their calls return.
            pool.shutdown(wait=False)
        else:
            cf.add_done_callback(functools.partial(self._released, pool))

    def _released(self, pool: ThreadPoolExecutor, _cf: Future[Any]) -> None:
        """An abandoned call of ``pool`` returned: its thread counts as free again."""
        with self._lock:
            if self._pool is pool and self._abandoned > 0:
                self._abandoned -= 1

    async def aclose(self) -> None:
        """Shut the pool down (the last run on the loop calls it); idempotent.

        Waits, off the loop, for its idle threads to exit, unless an
        abandoned call still holds one: that one cannot be waited for.
        """
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        with self._lock:
            pool, stuck = self._pool, self._abandoned > 0
        await asyncio.to_thread(pool.shutdown, wait=not stuck, cancel_futures=True)


#: The loops' shared pools: ``POOLS.acquire(loop)``, ``await POOLS.release(loop,
#: pool)`` (the last run shuts it down), ``POOLS.peek(loop)`` (see the module
#: docstring and engine.perloop).
POOLS: PerLoop[LoopThreads] = PerLoop(lambda loop: LoopThreads())


__all__ = ["POOLS", "THREADS_PER_LOOP", "LoopThreads"]

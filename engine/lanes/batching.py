"""Batching a ``Send`` fan-out of many small cpu calls into chunks per worker.

::

    scheduler, at the start of a step with n Sends of cpu node X (parallel mode):
      plan_chunks(n, workers, measured dispatch, measured call) -> sizes
      runner.open_batch(X, fn, plan, {(X, i): arg})   every arg pickled on its own
        -> Batch: one ProcessLane.run(run_chunk, ...) per chunk, sent at once
    each call of the step (its own task, events and record, as ever):
      runner.call(..., batched=True) -> Batch.result((X, i))
        <- its own run_call-format bytes, one per call, in the chunk's result

One submission per chunk instead of per call: the dispatch cost is paid once
per chunk, while every call keeps its own result, error, timing, bytes and
trace record, and its own NodeStarted/NodeFinished events (the scheduler
still runs each call as its own task). A chunk holds one slot of the process
lane, so the crash, timeout and cancellation machinery treats it as one call:

- its worker died: nobody knows which call killed it, so its calls run again
  one by one, not charged; only the call that kills its worker again is
  charged (``WorkerCrashedError``), as without batching. Calls of that chunk
  that had finished before the crash ran twice: batching is for pure cpu work.
- every waiter of a chunk was cancelled (the step was), or the step ended
  first: the chunk is taken back like any cpu call (its worker killed if it
  started).
- an argument that cannot be pickled fails its own call, before anything is
  sent; a retry of a batched call goes to the pool on its own.
- nodes with a ``timeout`` are not batched: a timeout kills the worker, which
  would take the chunk's innocent calls with it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass

from ..logs import get_logger
from .process import WorkerLost

log = get_logger("engine")

# A chunk should cost at most this fraction of its work in dispatch.
DEFAULT_MAX_OVERHEAD = 0.05
# At least this many chunks per worker, so a slow chunk does not idle the rest.
DEFAULT_CHUNKS_PER_WORKER = 4


@dataclass(frozen=True)
class ChunkPlan:
    """How ``n`` calls are cut into chunks, and why."""

    sizes: tuple[int, ...]
    reason: str

    @property
    def n(self) -> int:
        return sum(self.sizes)

    def slices(self) -> list[slice]:
        out, i = [], 0
        for size in self.sizes:
            out.append(slice(i, i + size))
            i += size
        return out


def should_batch(
    n: int,
    *,
    workers: int,
    dispatch_s: float | None,
    call_s: float | None,
    factor: float = 10.0,
) -> bool:
    """True when ``n`` calls of ``call_s`` each are worth batching.

    Worth it when there are more calls than workers and a call is shorter
    than ``factor`` dispatches (so per-call dispatch would be >= 10% of the
    work). Without measurements, a fan-out of many calls is batched anyway:
    chunking costs little when calls are long, and saves a lot when short.
    """
    if n <= max(1, workers):
        return False
    if dispatch_s is None or call_s is None:
        return n >= 8 * max(1, workers)
    return call_s < factor * dispatch_s


def plan_chunks(
    n: int,
    *,
    workers: int,
    dispatch_s: float | None,
    call_s: float | None,
    max_overhead: float = DEFAULT_MAX_OVERHEAD,
    chunks_per_worker: int = DEFAULT_CHUNKS_PER_WORKER,
) -> ChunkPlan:
    """Chunk sizes for ``n`` calls over ``workers`` from the measured dispatch cost.

    Every worker gets ``chunks_per_worker`` chunks to balance uneven calls,
    unless that makes a chunk so short that its dispatch would cost more
    than ``max_overhead`` of its work: then chunks grow to
    ``dispatch_s / (max_overhead * call_s)`` calls (fewer chunks; a fan-out
    too small to be worth spreading becomes one chunk). Sizes differ by at
    most one, in order.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not 0 < max_overhead < 1:
        raise ValueError(f"max_overhead must be in (0, 1), got {max_overhead}")
    if n == 0:
        return ChunkPlan((), "no calls")
    balance_size = max(1, math.ceil(n / (workers * max(1, chunks_per_worker))))
    if dispatch_s is not None and call_s is not None and call_s > 0:
        overhead_size = max(1, math.ceil(dispatch_s / (max_overhead * call_s)))
        size = min(n, max(overhead_size, balance_size))
        why = (
            f"{n} calls of {call_s * 1e3:.2f} ms, dispatch {dispatch_s * 1e3:.2f} ms: "
            f"{overhead_size} per chunk keeps dispatch <= {max_overhead:.0%}, "
            f"{balance_size} gives {workers} worker(s) {chunks_per_worker} chunks each"
        )
    else:
        size = balance_size
        why = f"{n} calls, not measured yet: {chunks_per_worker} chunks per worker"
    count = math.ceil(n / size)
    base, extra = divmod(n, count)
    sizes = tuple(base + 1 if i < extra else base for i in range(count))
    return ChunkPlan(sizes, f"{why} -> {count} chunk(s) of ~{size}")


def replan(plan: ChunkPlan, n: int) -> ChunkPlan:
    """``plan`` for ``n`` calls instead (some were refused): as many chunks, evenly cut."""
    if n == plan.n:
        return plan
    if n <= 0:
        return ChunkPlan((), "no calls")
    count = min(n, max(1, len(plan.sizes)))
    base, extra = divmod(n, count)
    sizes = tuple(base + 1 if i < extra else base for i in range(count))
    return ChunkPlan(sizes, f"{plan.reason}; {plan.n - n} refused -> {count} chunk(s)")


# -- the driver's side --------------------------------------------------------------

#: Calls of a finished chunk woken per turn of the event loop.
WAKE_SLICE = 64

SubmitChunk = Callable[[list[bytes]], Awaitable[list[bytes]]]
SubmitOne = Callable[[bytes], Awaitable[bytes]]


class _Chunk:
    """Calls sent in one submission. Invariant: ``live`` counts the calls whose
    waiter has not left; the chunk is taken back when it drops to zero."""

    __slots__ = ("blobs", "futures", "live", "task")

    def __init__(self, blobs: list[bytes], futures: list[asyncio.Future[bytes]]) -> None:
        self.blobs = blobs
        self.futures = futures
        self.live = len(blobs)
        self.task: asyncio.Task[None] | None = None


class Batch:
    """The calls of one node in one step, sent to the pool in planned chunks.

    Every argument is pickled and every chunk is on its way when the batch is
    opened, before the step's calls start: the workers start computing while
    the driver is still creating the step's tasks. Each call then waits for
    its own result (``result``).

    Invariant: ``_where`` maps a call's key to its chunk and future; a key
    that failed to pickle is in ``_refused`` instead; chunks are in
    ``_chunks`` until ``aclose``.
    """

    def __init__(
        self,
        node: str,
        plan: ChunkPlan,
        blobs: Mapping[Hashable, bytes],
        *,
        submit_chunk: SubmitChunk,
        submit_one: SubmitOne,
    ) -> None:
        if plan.n != len(blobs):
            raise ValueError(f"plan covers {plan.n} calls but {len(blobs)} were given")
        self.node = node
        self.plan = plan
        self._submit_chunk = submit_chunk
        self._submit_one = submit_one
        self._where: dict[Hashable, tuple[_Chunk, asyncio.Future[bytes]]] = {}
        self._chunks: list[_Chunk] = []
        loop = asyncio.get_running_loop()
        keys = list(blobs)
        for part in plan.slices():
            mine = keys[part]
            futures = [loop.create_future() for _ in mine]
            chunk = _Chunk([blobs[k] for k in mine], futures)
            for k, fut in zip(mine, futures, strict=True):
                self._where[k] = (chunk, fut)
            chunk.task = loop.create_task(self._run(chunk))
            self._chunks.append(chunk)
        #: Chunks whose worker died, whose calls ran again one by one.
        self.chunks_rerun = 0

    def __repr__(self) -> str:
        running = sum(1 for c in self._chunks if c.task is not None and not c.task.done())
        return f"<Batch {self.node!r} chunks={len(self._chunks)} running={running}>"

    def __contains__(self, key: object) -> bool:
        return key in self._where

    async def result(self, key: Hashable) -> bytes:
        """The result bytes (``run_call`` format) of the call ``key``, once its chunk ran."""
        chunk, fut = self._where.pop(key)  # one waiter per call: a retry goes alone
        try:
            return await fut
        except asyncio.CancelledError:
            chunk.live -= 1
            if chunk.live == 0 and chunk.task is not None and not chunk.task.done():
                chunk.task.cancel()  # nobody waits for it: take it back from the pool
            raise

    async def aclose(self) -> None:
        """Stop chunks still running (the step is over) and wait for them. Idempotent."""
        tasks = [c.task for c in self._chunks if c.task is not None and not c.task.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for _, fut in self._where.values():
            fut.cancel()  # calls that never came for their result (the step failed early)
        self._where.clear()

    async def _run(self, chunk: _Chunk) -> None:
        try:
            results = await self._submit_chunk(chunk.blobs)
        except asyncio.CancelledError:
            for fut in chunk.futures:
                fut.cancel()
            raise
        except WorkerLost as exc:
            # One of these calls killed its worker, or none did (it was killed
            # from outside): run each alone, so only a culprit is ever charged.
            self.chunks_rerun += 1
            log.warning(
                "cpu_chunk_lost_rerun_singly",
                node=self.node,
                calls=len(chunk.blobs),
                error=str(exc),
            )
            await asyncio.gather(
                *(self._one(b, f) for b, f in zip(chunk.blobs, chunk.futures, strict=True))
            )
            return
        except BaseException as exc:
            for fut in chunk.futures:
                if not fut.done():
                    fut.set_exception(exc)
            return
        if len(results) != len(chunk.futures):
            error = RuntimeError(
                f"a chunk of {len(chunk.futures)} calls of {self.node!r} came back with "
                f"{len(results)} results"
            )
            for fut in chunk.futures:
                if not fut.done():
                    fut.set_exception(error)
            return
        for i, (fut, data) in enumerate(zip(chunk.futures, results, strict=True)):
            if not fut.done():
                fut.set_result(data)
            if (i + 1) % WAKE_SLICE == 0:
                # Each result wakes its call, which decodes, checks and records
                # it: hundreds at once would block the loop for a step's worth.
                await asyncio.sleep(0)

    async def _one(self, blob: bytes, fut: asyncio.Future[bytes]) -> None:
        if fut.done():  # its waiter left
            return
        try:
            data = await self._submit_one(blob)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc)
            return
        if not fut.done():
            fut.set_result(data)


__all__ = ["Batch", "ChunkPlan", "plan_chunks", "replan", "should_batch"]

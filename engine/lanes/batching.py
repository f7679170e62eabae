"""How a ``Send`` fan-out of many small cpu calls is cut into chunks per worker.

::

    dispatcher, at the start of a step with n Sends of cpu node X (parallel mode):
      chunk_plan(n, workers, measured dispatch, measured call) -> sizes, or None
      one CpuLane.run_chunk per chunk, one started per turn of the loop, each prepared
        once the lane has room for it (plain payloads in one pickle per chunk; others
        each on its own: a bad one fails its own call, before anything is sent): each
        comes back as one Outcome per call, settled as they arrive (no task per call)

One submission per chunk instead of per call: the dispatch cost is paid once
per chunk, while every call keeps its own result, error, timing, bytes and
trace record, and its own NodeStarted/NodeFinished events. A chunk is one
submission to the process lane, so the crash and cancellation machinery
treats it as one call:

- its worker died: nobody knows which call killed it, so its calls run again
  one by one, not charged; only the call that kills its worker again is
  charged (``WorkerCrashedError``), as without batching. Calls of that chunk
  that had finished before the crash ran twice: batching is for pure cpu work.
- the step is cancelled, or ends first (an engine error): the chunk is taken
  back like any cpu call (its worker killed if it started).
- a retry of a batched call goes to the pool on its own.
- nodes with a ``timeout`` are not batched: a timeout kills the worker, which
  would take the chunk's innocent calls with it; nor are calls under a
  budget (it lets them through a few at a time, which chunks would only delay).

This module only plans; ``engine.dispatch`` sends the chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# A chunk should cost at most this fraction of its work in dispatch.
DEFAULT_MAX_OVERHEAD = 0.05
# At least this many chunks per worker, so a slow chunk does not idle the rest.
DEFAULT_CHUNKS_PER_WORKER = 8


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


def chunk_plan(
    n: int, *, workers: int, dispatch_s: float | None, call_s: float | None
) -> ChunkPlan | None:
    """How to cut ``n`` calls of one node into chunks, or None when they should go alone."""
    if not should_batch(n, workers=workers, dispatch_s=dispatch_s, call_s=call_s):
        return None
    return plan_chunks(n, workers=workers, dispatch_s=dispatch_s, call_s=call_s)


__all__ = [
    "DEFAULT_CHUNKS_PER_WORKER",
    "ChunkPlan",
    "chunk_plan",
    "plan_chunks",
    "replan",
    "should_batch",
]

"""Batching many small cpu calls (a ``Send`` fan-out) into chunks per worker.

::

    driver                                            worker (any Executor)
    ------                                            ------
    plan_chunks(n, workers, dispatch, call_s)
    pack_chunk(fn_bytes, args[i:j])  --bytes-->       run_chunk(payload)
      (each arg pickled on its own: exact bytes_in)     fn = loads(fn_bytes) once
                                                        for each arg: timed_call(fn, arg)
                                                        each outcome pickled on its own
    unpack_chunk(data) -> [CallOutcome, ...]  <--bytes--  (a bad result fails one call)

One submission per chunk instead of per call: the dispatch cost is paid
``len(chunks)`` times, not ``n`` times, while every call keeps its own
result, error, timing and byte counts, so the trace and the barrier see the
same records as unbatched calls. A worker that dies fails its whole chunk
(each of its calls gets the exception; a broken pool fails the chunks still
in flight too, exactly as it fails unbatched calls).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Any

import cloudpickle

from .lanes.worker import CallOutcome, dump_outcome, failed_outcome, timed_call

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


# -- the process boundary ---------------------------------------------------------


def pack_chunk(fn_bytes: bytes, arg_blobs: Sequence[bytes]) -> bytes:
    """One chunk's payload from arguments pickled one by one (exact bytes per call)."""
    return cloudpickle.dumps((fn_bytes, list(arg_blobs)))


def run_chunk(payload: bytes) -> bytes:
    """Worker entry point: run every call of a chunk, keeping each outcome apart."""
    start = time.time()
    try:
        fn_bytes, arg_blobs = cloudpickle.loads(payload)
        fn = cloudpickle.loads(fn_bytes)
    except BaseException as exc:
        failed = failed_outcome(
            exc, start, f"could not unpickle the chunk's function or inputs: {exc}"
        )
        return cloudpickle.dumps((dump_outcome(failed), []))
    blobs: list[bytes] = []
    for blob in arg_blobs:
        t = time.time()
        try:
            arg = cloudpickle.loads(blob)
        except BaseException as exc:
            outcome = failed_outcome(exc, t, f"could not unpickle this call's input: {exc}")
        else:
            outcome = timed_call(fn, arg)
        blobs.append(dump_outcome(replace(outcome, bytes_in=len(blob))))
    return cloudpickle.dumps((None, blobs))


def unpack_chunk(data: bytes, expected: int) -> list[CallOutcome]:
    """The per-call outcomes of one chunk, each with its own ``bytes_out``."""
    chunk_failure, blobs = cloudpickle.loads(data)
    if chunk_failure is not None:
        # The chunk itself could not be unpickled: every call failed the same way.
        only: CallOutcome = cloudpickle.loads(chunk_failure)
        return [only] * expected
    if len(blobs) != expected:
        raise RuntimeError(f"a chunk of {expected} calls came back with {len(blobs)} results")
    return [replace(cloudpickle.loads(b), bytes_out=len(b)) for b in blobs]


async def run_batched(
    executor: Executor,
    fn: Callable[..., Any] | bytes,
    args: Sequence[Any],
    plan: ChunkPlan,
) -> list[CallOutcome | BaseException]:
    """Run ``fn(arg)`` for every arg in chunks on ``executor``, results in arg order.

    An argument that cannot be pickled fails only its own call (a
    ``PicklingError``-like exception in its place), checked before anything
    is submitted. A chunk-level failure (its worker died) stands in for each
    call of that chunk. Cancellation propagates.
    """
    if plan.n != len(args):
        raise ValueError(f"plan covers {plan.n} calls but {len(args)} args were given")
    fn_bytes = fn if isinstance(fn, bytes) else cloudpickle.dumps(fn)
    loop = asyncio.get_running_loop()
    results: list[CallOutcome | BaseException | None] = [None] * len(args)
    blobs: list[bytes | None] = []
    for i, arg in enumerate(args):
        try:
            blobs.append(cloudpickle.dumps(arg))
        except Exception as exc:  # check the process boundary before submitting
            results[i] = exc
            blobs.append(None)

    async def one(part: slice) -> None:
        idx = [i for i in range(len(args))[part] if blobs[i] is not None]
        if not idx:
            return
        payload = pack_chunk(fn_bytes, [b for i in idx if (b := blobs[i]) is not None])
        try:
            data = await loop.run_in_executor(executor, run_chunk, payload)
            outcomes: list[CallOutcome | BaseException] = list(unpack_chunk(data, len(idx)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outcomes = [exc] * len(idx)
        for i, outcome in zip(idx, outcomes, strict=True):
            results[i] = outcome

    await asyncio.gather(*(one(s) for s in plan.slices()))
    return [r if r is not None else RuntimeError("call was not run") for r in results]


__all__ = [
    "ChunkPlan",
    "pack_chunk",
    "plan_chunks",
    "run_batched",
    "run_chunk",
    "should_batch",
    "unpack_chunk",
]

"""Batching a fan-out of many small cpu calls into chunks, keeping every call's record."""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from concurrent.futures import Executor, Future
from typing import Any

import cloudpickle
import loky
import pytest

from engine.batching import ChunkPlan, plan_chunks, run_batched, run_chunk, should_batch
from engine.lanes.pool import default_executor, executor_workers
from engine.lanes.worker import CallOutcome
from tests.support import burn

# Worker processes cannot import the tests package: node functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def square_or_fail(x: int) -> int:
    if x % 7 == 3:
        raise ValueError(f"bad input {x}")
    return x * x


def lock_for_five(x: int) -> Any:
    return threading.Lock() if x == 5 else x


def exit_on_two(x: int) -> int:
    if x == 2:
        sys.exit(3)
    return x


def die_on_zero(x: int) -> int:
    if x == 0:
        os._exit(1)
    time.sleep(0.05)
    return x


def busy(seconds: float) -> int:
    return burn(seconds)


class TestPlan:
    def test_many_millisecond_calls_get_a_few_chunks_per_worker(self) -> None:
        """5000 calls of 1 ms, dispatch 0.5 ms, 2 workers: 8 chunks of 625."""
        plan = plan_chunks(5000, workers=2, dispatch_s=0.0005, call_s=0.001)
        assert plan.sizes == (625,) * 8
        assert "5000 calls of 1.00 ms" in plan.reason and "8 chunk(s)" in plan.reason

    def test_tiny_calls_are_not_spread_thinner_than_a_dispatch(self) -> None:
        """20 calls of 0.1 ms with a 0.5 ms dispatch: one chunk (spreading costs more)."""
        plan = plan_chunks(20, workers=2, dispatch_s=0.0005, call_s=0.0001)
        assert plan.sizes == (20,)

    def test_chunk_grows_to_keep_dispatch_under_five_percent(self) -> None:
        """400 calls of 0.1 ms, dispatch 0.5 ms: chunks of >= 100 calls (dispatch <= 5%)."""
        plan = plan_chunks(400, workers=4, dispatch_s=0.0005, call_s=0.0001)
        assert plan.sizes == (100,) * 4

    @pytest.mark.parametrize("n", [1, 7, 100, 1001])
    def test_unmeasured_sizes_cover_every_call_evenly(self, n: int) -> None:
        """Without measurements: every call in exactly one chunk, sizes differ by <= 1."""
        plan = plan_chunks(n, workers=3, dispatch_s=None, call_s=None)
        assert plan.n == n and max(plan.sizes) - min(plan.sizes) <= 1
        covered = [i for s in plan.slices() for i in range(n)[s]]
        assert covered == list(range(n))

    def test_bad_arguments(self) -> None:
        """Impossible plans are refused with the bound in the message."""
        with pytest.raises(ValueError, match="workers"):
            plan_chunks(10, workers=0, dispatch_s=None, call_s=None)
        with pytest.raises(ValueError, match="max_overhead"):
            plan_chunks(10, workers=1, dispatch_s=0.1, call_s=0.1, max_overhead=1.5)
        assert plan_chunks(0, workers=2, dispatch_s=None, call_s=None) == ChunkPlan((), "no calls")

    @pytest.mark.parametrize(
        ("n", "dispatch", "call", "expected"),
        [
            (5000, 0.0005, 0.001, True),  # short calls: batch
            (5000, 0.0005, 0.5, False),  # long calls: dispatch is noise
            (2, 0.0005, 0.001, False),  # no more calls than workers
            (100, None, None, True),  # unmeasured, many calls
            (6, None, None, False),  # unmeasured, few calls
        ],
    )
    def test_should_batch(
        self, n: int, dispatch: float | None, call: float | None, expected: bool
    ) -> None:
        """Batch many calls shorter than ten dispatches; leave few or long calls alone."""
        assert should_batch(n, workers=2, dispatch_s=dispatch, call_s=call) is expected


def plan_for(n: int, chunks: int) -> ChunkPlan:
    base, extra = divmod(n, chunks)
    return ChunkPlan(tuple(base + (i < extra) for i in range(chunks)), "test")


class TestRun:
    async def test_per_call_results_errors_and_timings(self) -> None:
        """Each call keeps its own value or error, timing, worker and bytes, in arg order."""
        args = list(range(40))
        out = await run_batched(default_executor(), square_or_fail, args, plan_for(40, 4))
        assert len(out) == 40 and all(isinstance(o, CallOutcome) for o in out)
        outcomes: list[CallOutcome] = out  # type: ignore[assignment]
        for x, o in zip(args, outcomes, strict=True):
            if x % 7 == 3:
                assert not o.ok and o.error_type == "ValueError"
                assert o.error_message == f"bad input {x}" and "square_or_fail" in o.traceback_text
            else:
                assert o.ok and o.value == x * x
            assert o.pid != os.getpid() and o.end >= o.start
            assert o.bytes_in > 0 and o.bytes_out > 0
        for chunk in plan_for(40, 4).slices():
            part = outcomes[chunk]
            assert len({o.pid for o in part}) == 1  # a chunk runs in one worker
            assert all(a.end <= b.start + 1e-6 for a, b in itertools.pairwise(part))

    async def test_unpicklable_result_fails_only_its_call(self) -> None:
        """A result that cannot travel back fails that call; its chunk-mates succeed."""
        out = await run_batched(default_executor(), lock_for_five, list(range(8)), plan_for(8, 1))
        bad = out[5]
        assert isinstance(bad, CallOutcome) and not bad.ok
        assert "cannot be pickled" in bad.error_message
        assert [o.value for i, o in enumerate(out) if i != 5] == [0, 1, 2, 3, 4, 6, 7]  # type: ignore[union-attr]

    async def test_unpicklable_input_fails_only_its_call_before_submitting(self) -> None:
        """An argument that cannot be pickled is an error in its place; the others run."""
        args: list[Any] = [1, 2, threading.Lock(), 4]
        out = await run_batched(default_executor(), lambda x: x + 1, args, plan_for(4, 2))
        assert isinstance(out[2], TypeError)
        assert [o.value for o in out if isinstance(o, CallOutcome)] == [2, 3, 5]

    async def test_sys_exit_in_a_call_is_that_call_failing(self) -> None:
        """sys.exit inside one call fails that call; the worker and the chunk go on."""
        out = await run_batched(default_executor(), exit_on_two, [1, 2, 3], plan_for(3, 1))
        assert [o.ok for o in out] == [True, False, True]  # type: ignore[union-attr]
        assert out[1].error_type == "SystemExit"  # type: ignore[union-attr]

    async def test_worker_death_fails_its_calls_without_hanging(self) -> None:
        """A worker that dies turns its chunk's calls into exceptions; the run returns."""
        pool = loky.ProcessPoolExecutor(max_workers=2)
        try:
            out = await run_batched(pool, die_on_zero, [0, 1, 2, 3], plan_for(4, 2))
        finally:
            pool.shutdown(wait=True, kill_workers=True)
        assert isinstance(out[0], BaseException) and isinstance(out[1], BaseException)
        assert "terminated" in str(out[0]).lower() or "abruptly" in str(out[0]).lower()

    def test_chunk_runs_in_process_too(self) -> None:
        """run_chunk is plain bytes in, bytes out: it runs the same in this process."""
        fn = cloudpickle.dumps(square_or_fail)
        payload = cloudpickle.dumps((fn, [cloudpickle.dumps(2), cloudpickle.dumps(3)]))
        failure, blobs = cloudpickle.loads(run_chunk(payload))
        assert failure is None
        assert [cloudpickle.loads(b).ok for b in blobs] == [True, False]

    def test_plan_must_match_args(self) -> None:
        """A plan for a different number of calls is refused."""
        import asyncio

        with pytest.raises(ValueError, match="plan covers 3 calls but 2"):
            asyncio.run(run_batched(default_executor(), abs, [1, 2], plan_for(3, 1)))


class CountingExecutor(Executor):
    """Delegates to a real pool, counting submissions (one per dispatch)."""

    def __init__(self, inner: Executor) -> None:
        self.inner = inner
        self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return self.inner.submit(fn, *args, **kwargs)


async def test_a_fan_out_is_one_dispatch_per_chunk() -> None:
    """1,000 calls cost 8 dispatches (one per chunk), and every call keeps its record."""
    pool = CountingExecutor(default_executor())
    plan = plan_chunks(1000, workers=2, dispatch_s=0.0005, call_s=0.001)
    out = await run_batched(pool, square_or_fail, list(range(1000)), plan)
    assert pool.submitted == len(plan.sizes) == 8
    assert len(out) == 1000 and all(isinstance(o, CallOutcome) for o in out)
    assert sum(not o.ok for o in out) == len(range(3, 1000, 7))  # type: ignore[union-attr]


async def test_many_small_calls_keep_every_worker_busy() -> None:
    """1,000 cpu calls of ~1 ms, batched: the workers are busy >= 80% of the wall, together."""
    # The proof is the engine's own: the calls' worker-side intervals (busy
    # seconds over wall seconds). A noisy neighbour on a shared machine
    # stretches those evenly, so this holds where a wall-clock comparison
    # with a sequential run would not; the benchmark harness reports the
    # speedup against 0.8 x cores on a quiet machine.
    pool = default_executor()
    workers = executor_workers(pool)
    cores = min(workers, len(os.sched_getaffinity(0)))
    if cores < 2:
        pytest.skip("needs at least two cores to show parallel speedup")
    n, call_s = 1000, 0.001
    await run_batched(pool, busy, [0.0] * (2 * workers), plan_for(2 * workers, 2 * workers))
    plan = plan_chunks(n, workers=workers, dispatch_s=0.0005, call_s=call_s)
    t0 = time.perf_counter()
    out = await run_batched(pool, busy, [call_s] * n, plan)
    parallel = time.perf_counter() - t0
    outcomes = [o for o in out if isinstance(o, CallOutcome) and o.ok]
    assert len(outcomes) == n and len({o.pid for o in outcomes}) == workers
    busy_s = sum(o.end - o.start for o in outcomes)
    assert busy_s / parallel >= 0.8 * cores, (busy_s, parallel, plan.reason)

"""Batching a fan-out of many small cpu calls into chunks, keeping every call's record.

The plan is checked on its own; the rest runs through ``arun`` on the real
default pool, and proves from the trace and from submission counts that a
fan-out went out in chunks while every call kept its own result, error,
timing, bytes and events.
"""

from __future__ import annotations

import asyncio
import operator
import os
import sys
import threading
import time
from concurrent.futures import Executor, Future
from typing import Annotated, Any

import cloudpickle
import pytest
from pydantic import BaseModel
from structlog.testing import capture_logs

import engine
from engine import END, START, Graph, NodeError, RetryPolicy, Send, WorkerCrashedError
from engine.errors import node_error_of
from engine.lanes.batching import (
    DEFAULT_CHUNKS_PER_WORKER,
    ChunkPlan,
    plan_chunks,
    replan,
    should_batch,
)
from engine.lanes.pool import default_executor, executor_workers, is_broken, warm
from engine.lanes.process import pid_alive
from engine.lanes.worker import run_marked
from tests.support import burn

# Worker processes cannot import the tests package: node functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Fan(BaseModel):
    n: int = 0
    bad: int = -1  # the index whose call misbehaves (see ``kind``)
    kind: str = ""
    spin_s: float = 0.0
    out: Annotated[list[int], operator.add] = []
    pids: Annotated[list[int], operator.add] = []


def work(p: dict[str, Any]) -> dict[str, Any]:
    """A Send target: real CPU work, then one misbehaviour at index ``bad``."""
    if p["spin_s"]:
        burn(p["spin_s"])
    if p["i"] == p["bad"]:
        kind = p["kind"]
        if kind == "raise":
            raise ValueError(f"bad input {p['i']}")
        if kind == "exit":
            sys.exit(3)
        if kind == "die":
            os._exit(1)
        if kind == "lock":
            return {"out": [threading.Lock()]}  # type: ignore[list-item]
    return {"out": [p["i"] * p["i"]], "pids": [os.getpid()]}


def flaky(p: dict[str, Any]) -> dict[str, Any]:
    """A Send target whose every tenth call fails its first attempt (a file per index,
    in ``p["dir"]``, says it already failed: attempts run in different processes)."""
    burn(0.0002)
    if p["i"] % 10 == 0:
        try:
            with open(os.path.join(p["dir"], str(p["i"])), "x"):
                pass
        except FileExistsError:
            pass
        else:
            raise ValueError(f"first attempt of {p['i']}")
    return {"out": [p["i"]]}


def fan_out(state: Fan) -> list[Send]:
    payload = {"bad": state.bad, "kind": state.kind, "spin_s": state.spin_s}
    sends = [Send("work", {"i": i, **payload}) for i in range(state.n)]
    if state.kind == "unpicklable-input":
        sends[state.bad] = Send("work", {"i": state.bad, **payload, "lock": threading.Lock()})
    return sends


def fan_graph(**node: Any) -> engine.CompiledGraph:
    g = Graph(Fan)
    g.add_node("start", lambda s: None, lane="inline")
    g.add_node("work", work, lane="cpu", **node)
    g.add_edge(START, "start")
    g.add_conditional_edges("start", fan_out)
    g.add_edge("work", END)
    return g.compile()


class CountingExecutor(Executor):
    """Delegates to the default pool, counting the cpu lane's submissions (one per
    dispatch; the dispatch-cost probe the app runs after a first run is not counted)."""

    def __init__(self, inner: Executor) -> None:
        self.inner = inner
        self.submitted = 0
        self._max_workers = executor_workers(inner)

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        if fn is run_marked:
            self.submitted += 1
        return self.inner.submit(fn, *args, **kwargs)


class TestPlan:
    def test_many_millisecond_calls_get_a_few_chunks_per_worker(self) -> None:
        """5000 calls of 1 ms, dispatch 0.5 ms, 2 workers: 16 chunks of 312-313."""
        plan = plan_chunks(5000, workers=2, dispatch_s=0.0005, call_s=0.001)
        assert plan.sizes == (313,) * 8 + (312,) * 8
        assert "5000 calls of 1.00 ms" in plan.reason and "16 chunk(s)" in plan.reason

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


class TestReplan:
    def test_refused_calls_shrink_the_plan_evenly(self) -> None:
        """A plan for 10 calls with 2 refused covers 8, in as many chunks, evenly."""
        plan = replan(plan_for(10, 3), 8)
        assert plan.n == 8 and len(plan.sizes) == 3 and max(plan.sizes) - min(plan.sizes) <= 1
        assert replan(plan_for(10, 3), 0).sizes == ()


class TestFanOut:
    """A Send fan-out of a cpu node in parallel mode, through ``arun``."""

    async def test_many_calls_go_out_in_chunks_each_with_its_own_record(self) -> None:
        """400 short calls: a handful of submissions, yet 400 records, events and results."""
        pool = CountingExecutor(default_executor())
        warm(pool.inner)
        events: list[Any] = []
        r = await fan_graph().arun(
            {"n": 400}, mode="parallel", executor=pool, on_event=events.append
        )
        workers = executor_workers(pool.inner)
        # unmeasured plan: DEFAULT_CHUNKS_PER_WORKER chunks per worker
        assert 1 <= pool.submitted <= DEFAULT_CHUNKS_PER_WORKER * workers
        calls = [c for c in r.trace.calls if c.node == "work"]
        assert len(calls) == 400 and all(c.ok for c in calls)
        assert sorted(c.index for c in calls) == list(range(400))
        assert all(c.pid != os.getpid() and c.bytes_in > 0 and c.bytes_out > 0 for c in calls)
        assert sum(isinstance(e, engine.NodeFinished) and e.node == "work" for e in events) == 400
        assert sum(isinstance(e, engine.NodeStarted) and e.node == "work" for e in events) == 400
        # The reducer saw every call's write in Send order, as unbatched.
        assert r.state.out == [i * i for i in range(400)]

    async def test_a_chunk_is_prepared_only_once_the_lane_has_room_for_it(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The chunks beyond the lane's window are not pickled up front (the loop's thread
        would hold the GIL while the first chunks wait to reach their workers): at any time
        at most ``window`` chunks are prepared and not yet back."""
        import engine.dispatch as dispatch_module

        prepared, back, most = 0, 0, 0
        windows: list[int] = []
        real_pickle = dispatch_module.pickled_together
        real_run_chunk = engine.lanes.cpu.CpuLane.run_chunk

        def counting_pickle(args: list[Any]) -> bytes | None:
            nonlocal prepared, most
            prepared += 1
            most = max(most, prepared - back)
            return real_pickle(args)

        async def counting_run_chunk(lane: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal back
            windows.append(lane.process.window)
            try:
                return await real_run_chunk(lane, *args, **kwargs)
            finally:
                back += 1

        monkeypatch.setattr(dispatch_module, "pickled_together", counting_pickle)
        monkeypatch.setattr(engine.lanes.cpu.CpuLane, "run_chunk", counting_run_chunk)
        warm(default_executor())
        r = await fan_graph().arun({"n": 400, "spin_s": 0.0005}, mode="parallel")
        assert r.state.out == [i * i for i in range(400)]
        window = windows[0]
        assert len(windows) > window  # more chunks than the lane keeps submitted
        assert prepared == len(windows) and 1 <= most <= window

    async def test_a_chunk_waiting_to_retry_a_call_holds_back_no_other_chunk(
        self, tmp_path: Any
    ) -> None:
        """Every chunk has a call that fails its first attempt and retries after 0.5 s:
        every chunk is sent (and its other calls run) before the first retry, instead of
        the first chunks keeping the lane's places through their back-off."""
        g = Graph(Fan)
        g.add_node("start", lambda s: None, lane="inline")
        retry = RetryPolicy(
            max_attempts=2, initial_interval=0.5, jitter=False, retry_on=(ValueError,)
        )
        g.add_node("work", flaky, lane="cpu", retry=retry)
        g.add_edge(START, "start")
        g.add_conditional_edges(
            "start", lambda s: [Send("work", {"i": i, "dir": str(tmp_path)}) for i in range(400)]
        )
        g.add_edge("work", END)
        warm(default_executor())
        r = await g.compile().arun({}, mode="parallel")
        assert sorted(r.state.out) == list(range(400))
        calls = r.trace.for_node("work")
        first = [c for c in calls if c.attempt == 1]
        again = [c for c in calls if c.attempt == 2]
        assert len(first) == 400 and len(again) == 40
        assert max(c.start for c in first) < min(c.start for c in again)

    async def test_same_final_state_as_sequential(self) -> None:
        """Batched parallel calls merge to exactly the sequential run's state."""
        app = fan_graph()
        seq = await app.arun({"n": 300}, mode="sequential")
        par = await app.arun({"n": 300}, mode="parallel")
        assert par.state.out == seq.state.out
        # The calls' own reports of where they ran agree with the trace: workers only.
        traced = {c.pid for c in par.trace.calls if c.node == "work"}
        assert set(par.state.pids) == traced and os.getpid() not in traced

    async def test_batch_false_sends_every_call_alone(self) -> None:
        """``add_node(batch=False)``: one submission per call."""
        pool = CountingExecutor(default_executor())
        await fan_graph(batch=False).arun({"n": 60}, mode="parallel", executor=pool)
        assert pool.submitted == 60

    async def test_a_node_with_a_timeout_is_not_batched(self) -> None:
        """A timeout kills a worker, which would take a chunk's innocents along: no chunks."""
        pool = CountingExecutor(default_executor())
        await fan_graph(timeout=30.0).arun({"n": 60}, mode="parallel", executor=pool)
        assert pool.submitted == 60

    async def test_few_calls_are_not_batched(self) -> None:
        """No more calls than workers: each goes alone (chunks would only serialise them)."""
        pool = CountingExecutor(default_executor())
        n = executor_workers(pool.inner)
        await fan_graph().arun({"n": n}, mode="parallel", executor=pool)
        assert pool.submitted == n


class OnlyInTheDriver:
    """A node function that cannot be rebuilt in a worker (say, its module is the
    driver's alone): unpickling it anywhere but in the process that made it fails."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __call__(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"out": [p["i"]]}

    def __reduce__(self) -> Any:
        return (_rebuild_in, (self.pid,))


def _rebuild_in(pid: int) -> OnlyInTheDriver:
    if os.getpid() != pid:
        raise ModuleNotFoundError("No module named 'only_in_the_driver'")
    return OnlyInTheDriver(pid)


class TestFaultsInAChunk:
    """One call misbehaves inside a chunk: only that call fails."""

    @pytest.mark.parametrize("batch", [True, False], ids=["batched", "one-by-one"])
    async def test_a_function_the_worker_cannot_load_is_a_node_error(self, batch: bool) -> None:
        """Batched or not, a node function that cannot be unpickled in the worker fails
        as the node's NodeError (node, step, lane), not as a raw exception."""
        g = Graph(Fan)
        g.add_node("start", lambda s: None, lane="inline")
        g.add_node("work", OnlyInTheDriver(os.getpid()), lane="cpu", batch=batch)
        g.add_edge(START, "start")
        g.add_conditional_edges("start", fan_out)
        with pytest.raises(NodeError, match=r"could not unpickle the node's function") as info:
            await g.compile().arun({"n": 40}, mode="parallel")
        assert (info.value.node, info.value.step, info.value.lane) == ("work", 1, "cpu")
        assert "only_in_the_driver" in str(info.value)

    @pytest.mark.parametrize(
        ("kind", "pattern"),
        [
            ("raise", r"bad input 7"),
            ("exit", r"raised SystemExit"),
            ("lock", r"cannot be pickled to return from the worker"),
            ("unpicklable-input", r"cannot be pickled for a worker process"),
        ],
    )
    async def test_only_the_bad_call_fails(self, kind: str, pattern: str) -> None:
        """The step fails with that call's error (the node's own ValueError, a NodeError for
        what is the engine's); the other 99 calls ran and succeeded."""
        with pytest.raises((NodeError, ValueError), match=pattern) as info:
            await fan_graph().arun({"n": 100, "bad": 7, "kind": kind}, mode="parallel")
        err = node_error_of(info.value)
        assert err is not None and err.node == "work"
        assert not isinstance(info.value, WorkerCrashedError)
        assert isinstance(info.value, ValueError) == (kind == "raise")
        # Nothing else failed: the NodeError names no other failure in the step.
        assert not any("also failed" in note for note in getattr(info.value, "__notes__", []))

    async def test_a_call_that_kills_its_worker_is_the_only_one_charged(self) -> None:
        """os._exit in one call: its chunk re-runs one by one; only that call crashes."""
        app = fan_graph(retry=RetryPolicy(max_attempts=1))
        with capture_logs() as logs, pytest.raises(WorkerCrashedError) as info:
            await app.arun({"n": 100, "bad": 7, "kind": "die"}, mode="parallel")
        assert "exited with code 1" in str(info.value)
        assert not any("also failed" in note for note in getattr(info.value, "__notes__", []))
        assert any(e["event"] == "cpu_chunk_lost_rerun_singly" for e in logs)
        # The pool recovered: the same fan-out now succeeds in chunks.
        r = await app.arun({"n": 100}, mode="parallel")
        assert r.state.out == [i * i for i in range(100)]

    async def test_cancelling_the_run_takes_the_chunks_back(self) -> None:
        """Cancel mid-chunk: arun stops at once and the busy workers are killed."""
        app = fan_graph()
        warm(default_executor())
        task = asyncio.ensure_future(
            app.arun({"n": 40, "spin_s": 0.25}, mode="parallel")  # 10 s of work
        )
        await asyncio.sleep(1.0)
        pids = [pid for pid in default_executor()._processes]  # type: ignore[attr-defined]
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - t0 < 3.0
        deadline = time.monotonic() + 5.0
        while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not any(pid_alive(p) for p in pids), "a worker ran on after the cancel"
        # The pool notices its killed workers; the next run gets a fresh one.
        pool = default_executor()
        while not is_broken(pool) and time.monotonic() < deadline + 5.0:
            await asyncio.sleep(0.05)
        r = await app.arun({"n": 20}, mode="parallel")
        assert r.state.out == [i * i for i in range(20)]


class TestParallelism:
    async def test_chunks_run_on_every_worker_at_once(self) -> None:
        """400 calls of ~2 ms: every worker ran calls, and workers' intervals overlap."""
        pool = default_executor()
        workers = executor_workers(pool)
        if workers < 2:
            pytest.skip("needs a pool of at least two workers")
        warm(pool)
        r = await fan_graph().arun({"n": 400, "spin_s": 0.002}, mode="parallel")
        calls = [c for c in r.trace.calls if c.node == "work"]
        by_pid: dict[int, list[Any]] = {}
        for c in calls:
            by_pid.setdefault(c.pid, []).append(c)
        assert len(by_pid) == workers
        spans = sorted((min(c.start for c in cs), max(c.end for c in cs)) for cs in by_pid.values())
        # Every worker was busy while every other was: their spans share time.
        assert max(s for s, _ in spans) < min(e for _, e in spans)

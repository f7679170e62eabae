"""Where calls run, proven from two independent sources: the engine's trace, and what
the nodes themselves report (os.getpid(), threads, time.time()) in the state."""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from engine import START, Graph, NodeCall
from tests.nodes import burn_and_mark
from tests.support import State, cpu_probe, io_probe, thread_probe


def two_cpu_nodes(seconds: float) -> Graph:
    g = Graph(State)
    for name in ("c1", "c2"):
        g.add_node(name, functools.partial(cpu_probe, name, seconds), lane="cpu")
        g.add_edge(START, name)
    return g


def overlap(a: Any, b: Any) -> float:
    """Seconds two [start, end] intervals share (negative: a gap between them)."""
    if isinstance(a, NodeCall):
        return min(a.end, b.end) - max(a.start, b.start)
    return min(a["end"], b["end"]) - max(a["start"], b["start"])


def one_after_another(intervals: list[Any]) -> bool:
    """True when no two of the intervals overlap."""
    key = (lambda c: c.start) if isinstance(intervals[0], NodeCall) else (lambda p: p["start"])
    ordered = sorted(intervals, key=key)
    return all(overlap(x, y) <= 0 for x, y in itertools.pairwise(ordered))


@pytest.mark.usefixtures("warm_pool")
class TestCpuLane:
    async def test_parallel_runs_in_two_worker_processes_at_once(self) -> None:
        """In parallel mode two cpu nodes of a step ran in two non-driver processes, overlapping."""
        r = await two_cpu_nodes(0.3).compile().arun({}, mode="parallel")
        p1, p2 = r.state.probes["c1"], r.state.probes["c2"]
        # The nodes' own words ...
        assert p1["pid"] != p2["pid"]
        assert os.getpid() not in (p1["pid"], p2["pid"])
        assert overlap(p1, p2) > 0
        # ... agree with the engine's trace.
        c1, c2 = r.trace.for_node("c1")[0], r.trace.for_node("c2")[0]
        assert (c1.pid, c2.pid) == (p1["pid"], p2["pid"])
        assert r.trace.driver_pid == os.getpid() not in r.trace.pids("cpu")
        assert overlap(c1, c2) > 0
        assert c1.start <= p1["start"] <= p1["end"] <= c1.end

    async def test_concurrent_runs_in_driver_threads(self) -> None:
        """In concurrent mode cpu nodes run on threads of the driver process (GIL-bound)."""
        loop_thread = threading.get_native_id()
        r = await two_cpu_nodes(0.05).compile().arun({}, mode="concurrent")
        for name in ("c1", "c2"):
            assert r.state.probes[name]["pid"] == os.getpid()
            assert not r.state.probes[name]["main_thread"]
        assert r.trace.pids("cpu") == {os.getpid()}
        assert loop_thread not in {c.thread for c in r.trace.calls}
        assert {(c.bytes_in, c.bytes_out) for c in r.trace.calls} == {(0, 0)}  # nothing pickled

    async def test_sequential_never_overlaps(self) -> None:
        """In sequential mode no two calls of a step overlap, whatever their lanes."""
        g = two_cpu_nodes(0.05)
        g.add_node("io", functools.partial(io_probe, "io", 0.05))
        g.add_node("th", functools.partial(thread_probe, "th"), lane="thread")
        g.add_node("in", functools.partial(thread_probe, "in"), lane="inline")
        for name in ("io", "th", "in"):
            g.add_edge(START, name)
        r = await g.compile().arun({}, mode="sequential")
        assert len(r.trace.calls) == 5 and {c.step for c in r.trace.calls} == {0}
        assert one_after_another(list(r.trace.calls))
        assert one_after_another(list(r.state.probes.values()))
        assert r.trace.pids() == {os.getpid()}

    async def test_user_executor_is_used(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """executor= sends cpu calls to that pool; the default pool is never touched."""

        def no_default(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("the default pool was used")

        monkeypatch.setattr("engine.lanes.process.default_executor", no_default)
        with ProcessPoolExecutor(2) as pool:
            r = await two_cpu_nodes(0.05).compile().arun({}, mode="parallel", executor=pool)
            pool_pids = set(pool._processes)  # type: ignore[attr-defined]
        reported = {p["pid"] for p in r.state.probes.values()}
        assert r.trace.pids("cpu") == reported and reported <= pool_pids
        assert os.getpid() not in reported
        assert r.metrics.cpu_workers == 2

    async def test_loop_not_starved(self, tmp_path: Path) -> None:
        """A heartbeat on the loop ticks without a gap > 100 ms while two cpu nodes burn."""
        ticks: list[float] = []
        names = ("c1", "c2")

        async def heartbeat(state: State) -> None:
            # Tick until both cpu nodes say they are done (or a cap far past them).
            cap = time.time() + 30
            while not all((tmp_path / n).exists() for n in names) and time.time() < cap:
                ticks.append(time.time())
                await asyncio.sleep(0.01)
            ticks.append(time.time())

        g = Graph(State)
        for name in names:
            g.add_node(name, functools.partial(burn_and_mark, name, 0.5, str(tmp_path)), lane="cpu")
            g.add_edge(START, name)
        g.add_node("beat", heartbeat)
        g.add_edge(START, "beat")
        r = await g.compile().arun({}, mode="parallel")
        # The heartbeat watched the whole burn ...
        for name in names:
            probe = r.state.probes[name]
            assert ticks[0] <= probe["start"] and probe["end"] <= ticks[-1]
            assert probe["pid"] != os.getpid()
            assert r.trace.for_node(name)[0].cpu_s >= 0.45
        # ... and the loop never stalled meanwhile.
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        # (a 0.5 s burn on the loop would leave a 0.5 s gap; a busy host may delay a tick)
        assert len(ticks) > 20 and max(gaps) < 0.25

    async def test_async_node_on_cpu_lane_runs_in_worker(self) -> None:
        """lane='cpu' on an async def runs it on a loop inside a worker process."""
        g = Graph(State)
        g.add_node("aio", functools.partial(io_probe, "aio", 0.01), lane="cpu")
        g.add_edge(START, "aio")
        r = await g.compile().arun({}, mode="parallel")
        assert r.state.probes["aio"]["pid"] != os.getpid()
        assert r.trace.for_node("aio")[0].pid == r.state.probes["aio"]["pid"]


def _runqueue_wait_s() -> float:
    """Seconds this thread has waited on a CPU's run queue so far (Linux), else 0."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


class TestColdPool:
    async def test_first_step_on_a_cold_pool_does_not_stall_the_loop(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A cold 16-worker pool starts its workers off the loop's thread: no heartbeat gap
        > 100 ms, and a sampler never finds the loop's thread spawning a worker."""
        from engine.lanes.pool import default_executor, worker_processes

        monkeypatch.setenv("ENGINE_CPU_WORKERS", "16")
        default_executor().shutdown(wait=True)  # whatever ran before: start cold
        loop_thread = threading.get_ident()
        beats: list[tuple[float, float]] = []
        stop = asyncio.Event()
        sampling = threading.Event()
        spawning_on_loop: list[str] = []

        def sampler() -> None:
            # The proof that does not depend on the machine's load: where the
            # loop's thread is, sampled every millisecond or so.
            while not sampling.is_set():
                frame = sys._current_frames().get(loop_thread)
                while frame is not None:
                    if frame.f_code.co_name in ("_adjust_process_count", "_spawn_process"):
                        spawning_on_loop.append(frame.f_code.co_filename)
                        break
                    frame = frame.f_back
                time.sleep(0.001)

        async def heartbeat() -> None:
            while not stop.is_set():
                beats.append((time.perf_counter(), _runqueue_wait_s()))
                await asyncio.sleep(0.005)
            beats.append((time.perf_counter(), _runqueue_wait_s()))

        watcher = threading.Thread(target=sampler, daemon=True)
        watcher.start()
        beating = asyncio.create_task(heartbeat())
        await asyncio.sleep(0.02)
        try:
            r = await two_cpu_nodes(0.05).compile().arun({}, mode="parallel")
        finally:
            stop.set()
            await beating
            sampling.set()
            watcher.join()
        pool = default_executor()
        try:
            procs = worker_processes(pool)
            assert procs is not None and len(procs) == 16  # the run really started them
            assert r.trace.pids("cpu") <= set(procs)
            assert spawning_on_loop == []
            # A gap counts the time the loop's thread ran or was blocked, not the time
            # it waited for a CPU that another process held (a busy machine).
            stalls = [(t1 - t0) - (q1 - q0) for (t0, q0), (t1, q1) in itertools.pairwise(beats)]
            assert len(beats) > 3 and max(stalls) < 0.1, f"loop stalled {max(stalls):.3f} s"
        finally:
            pool.shutdown(wait=True)


class _Recording(Executor):
    """Delegates to a pool, keeping every payload sent and every result received."""

    def __init__(self, inner: Executor) -> None:
        self.inner = inner
        self._max_workers = 2
        self.sent: list[bytes] = []
        self.received: list[bytes] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.sent.append(args[1])  # run_marked(entry, payload, marker)
        fut = self.inner.submit(fn, *args, **kwargs)
        fut.add_done_callback(lambda f: self.received.append(f.result()))
        return fut


class TestCpuLanePayloads:
    async def test_byte_counts_are_the_sizes_that_crossed(self) -> None:
        """bytes_in and bytes_out are exactly the lengths of the payload sent and the result."""
        from engine.lanes.pool import default_executor

        pool = _Recording(default_executor())
        r = await two_cpu_nodes(0.0).compile().arun({}, mode="parallel", executor=pool)
        calls = sorted(r.trace.calls, key=lambda c: c.bytes_in)
        assert sorted(len(p) for p in pool.sent) == [c.bytes_in for c in calls]
        assert sorted(len(b) for b in pool.received) == sorted(c.bytes_out for c in calls)
        assert all(c.bytes_in > 0 and c.bytes_out > 0 for c in calls)

    def test_arguments_use_cloudpickle_only_for_what_a_worker_cannot_import(self) -> None:
        """Importable classes go by the stdlib pickler; by-value modules and lambdas by
        cloudpickle (keeping the file names of code sent by value: ``dumps_by_value``)."""
        import pickle

        from engine.checkpoint import TaskRef
        from engine.lanes.frames import dumps_by_value, dumps_for_worker

        plain = TaskRef(node="x", payload={"k": [1, 2]})
        assert dumps_for_worker(plain) == pickle.dumps(plain, protocol=pickle.HIGHEST_PROTOCOL)
        by_value = State(topic="t")  # tests.support is registered by value (conftest.py)
        assert dumps_for_worker(by_value) == dumps_by_value(by_value)
        assert pickle.loads(dumps_for_worker(by_value)) == by_value
        fn = lambda x: x  # noqa: E731 (a lambda is the point)
        assert dumps_for_worker(fn) == dumps_by_value(fn)
        assert pickle.loads(dumps_for_worker(fn))(3) == 3
        assert pickle.loads(dumps_for_worker(plain)) == plain

    def test_fast_record_is_an_ordinary_node_call(self) -> None:
        """The lanes' quick NodeCall constructor builds the same frozen record."""
        import dataclasses

        from engine.trace import call_record

        quick = call_record(
            "n", 3, "cpu", 2, 5, 7, 8, "h", 1.0, 2.0, 0.5, 10, 20, False, "RuntimeError", 0.1, 0.2
        )
        slow = NodeCall(
            node="n", step=3, lane="cpu", attempt=2, index=5, pid=7, thread=8, host="h",
            start=1.0, end=2.0, cpu_s=0.5, bytes_in=10, bytes_out=20, ok=False,
            error="RuntimeError", queued_s=0.1, load_s=0.2,
        )  # fmt: skip
        assert quick == slow and repr(quick) == repr(slow) and hash(quick) == hash(slow)
        with pytest.raises(dataclasses.FrozenInstanceError):
            quick.ok = True  # type: ignore[misc]


class TestIoLane:
    async def test_runs_on_the_driver_loop(self, mode: str) -> None:
        """io nodes run as coroutines on the driver's own event loop."""
        seen: dict[str, Any] = {}

        async def where(state: State) -> None:
            seen["loop"] = asyncio.get_running_loop()
            seen["thread"] = threading.get_ident()

        g = Graph(State)
        g.add_node("io", where)
        g.add_edge(START, "io")
        r = await g.compile().arun({}, mode=mode)
        assert seen["loop"] is asyncio.get_running_loop()
        assert seen["thread"] == threading.get_ident()
        assert r.trace.for_node("io")[0].lane == "io"

    @pytest.mark.parametrize("mode", ["concurrent", "parallel"])
    async def test_io_calls_overlap(self, mode: str) -> None:
        """Outside sequential mode two io calls of one step wait at the same time."""
        g = Graph(State)
        for name in ("i1", "i2"):
            g.add_node(name, functools.partial(io_probe, name, 0.2))
            g.add_edge(START, name)
        r = await g.compile().arun({}, mode=mode)
        assert overlap(r.state.probes["i1"], r.state.probes["i2"]) > 0
        assert overlap(r.trace.for_node("i1")[0], r.trace.for_node("i2")[0]) > 0


class TestThreadLane:
    @pytest.mark.parametrize("mode", ["concurrent", "parallel"])
    async def test_uses_a_pool_thread(self, mode: str) -> None:
        """thread nodes run in a non-main thread of the driver process."""
        g = Graph(State)
        g.add_node("t", functools.partial(thread_probe, "t"), lane="thread")
        g.add_edge(START, "t")
        r = await g.compile().arun({}, mode=mode)
        probe = r.state.probes["t"]
        assert probe["pid"] == os.getpid() and not probe["main_thread"]
        assert r.trace.for_node("t")[0].thread != threading.get_native_id()


class TestInlineLane:
    async def test_runs_on_the_loop_thread(self, mode: str) -> None:
        """inline nodes are called on the loop thread in every mode."""
        g = Graph(State)
        g.add_node("i", functools.partial(thread_probe, "i"), lane="inline")
        g.add_edge(START, "i")
        r = await g.compile().arun({}, mode=mode)
        assert r.state.probes["i"]["thread"] == threading.get_ident()
        assert r.trace.for_node("i")[0].thread == threading.get_native_id()


def test_invoke_uses_uvloop() -> None:
    """The sync entry point runs on uvloop when it is installed."""
    g = Graph(State)
    g.add_node("io", functools.partial(io_probe, "io", 0.0))
    g.add_edge(START, "io")
    out = g.compile().invoke({})
    assert "uvloop" in out.probes["io"]["loop"]


SCRIPT = """
import operator, os, time
from typing import Annotated
from pydantic import BaseModel
import engine
from engine import Graph, START

def union(a: list, b: list) -> list:
    return sorted(set(a) | set(b))

class Mine(BaseModel):
    pids: Annotated[list[int], union] = []
    spans: Annotated[list[tuple[float, float]], operator.add] = []

@engine.cpu
def work(state: Mine) -> dict:
    start = time.time()
    end = start + 0.3
    while time.time() < end:
        sum(range(1000))
    return {"pids": [os.getpid()], "spans": [(start, time.time())]}

if __name__ == "__main__":
    g = Graph(Mine)
    g.add_node("w1", work)
    g.add_node("w2", work)
    g.add_edge(START, "w1")
    g.add_edge(START, "w2")
    app = g.compile()
    app.run({}, mode="parallel")  # starts the pool's workers
    r = app.run({}, mode="parallel")
    (a0, a1), (b0, b1) = r.state.spans
    print("LANES", *(row.lane for row in app.explain()))
    print("DRIVER", os.getpid(), "WORKERS", *r.state.pids)
    print("OVERLAP", min(a1, b1) - max(a0, b0) > 0)
"""


def test_main_module_code_reaches_workers(tmp_path: Path) -> None:
    """State classes, reducers and nodes defined in a user's __main__ script run in
    two worker processes at once."""
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=90, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    lines = {x.split()[0]: x.split()[1:] for x in proc.stdout.splitlines() if x.strip()}
    assert lines["LANES"] == ["cpu", "cpu"]
    driver, workers = int(lines["DRIVER"][0]), [int(w) for w in lines["DRIVER"][2:]]
    assert len(workers) == 2 and driver not in workers
    assert lines["OVERLAP"] == ["True"]


class TestSubmissionHandOver:
    """A submission's one done-callback: the verdict first, then the loop's future."""

    async def test_the_loop_hears_the_pools_result_error_or_cancellation(self) -> None:
        from engine.lanes.breaks import Submission

        loop = asyncio.get_running_loop()
        outcomes: list[Any] = []
        for how in ("result", "error", "cancel"):
            fut: Future[bytes] = Future()
            sub = Submission(ProcessPoolExecutor(1), None, None, loop.create_future())
            fut.add_done_callback(sub.settled)
            if how == "result":
                threading.Thread(target=fut.set_result, args=(b"frame",)).start()
            elif how == "error":
                threading.Thread(target=fut.set_exception, args=(ValueError("bad"),)).start()
            else:
                fut.cancel()
            assert sub.waiting is not None
            try:
                outcomes.append(await asyncio.wait_for(sub.waiting, 5))
            except BaseException as exc:  # CancelledError included
                outcomes.append(type(exc).__name__)
        assert outcomes == [b"frame", "ValueError", "CancelledError"]

    def test_a_result_for_a_closed_loop_is_dropped_quietly(self) -> None:
        from engine.lanes.breaks import Submission

        loop = asyncio.new_event_loop()
        waiting = loop.create_future()
        loop.close()
        fut: Future[bytes] = Future()
        sub = Submission(ProcessPoolExecutor(1), None, None, waiting)
        fut.add_done_callback(sub.settled)
        fut.set_result(b"late")  # nobody left to tell: no error in the pool's thread
        assert not waiting.done()

"""Warm workers: per-worker resources built once, and the pool capped by memory.

Through ``arun``: each worker builds a node's ``worker_init`` resource once
and every call there reuses it; the build is timed apart from the call and
drawn as its own slice; in-driver lanes build once per compiled graph.
"""

from __future__ import annotations

import json
import operator
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import cloudpickle
import pytest
from pydantic import BaseModel

import engine
from engine import END, START, Graph, GraphError, Send
from engine.lanes.pool import default_executor, warm
from engine.warm import WorkerInit, available_memory, parse_size, workers_for_memory

# Worker processes cannot import the tests package: node functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

LOAD_S = 0.2


class Docs(BaseModel):
    n: int = 0
    seen: Annotated[list[dict[str, Any]], operator.add] = []


def vocab_loader(tag: str, fail_flag: str = "") -> Callable[[], dict[str, Any]]:
    """A heavy per-worker resource: slow to build, cheap to use.

    ``tag`` makes each test's loader its own (identical loaders share one
    build per process, and pool workers outlive a test). While the file
    ``fail_flag`` exists, the build fails.
    """

    def load_vocab() -> dict[str, Any]:
        if fail_flag and Path(fail_flag).exists():
            raise OSError("model file missing")
        time.sleep(LOAD_S)
        return {"tag": tag, "built_by": os.getpid(), "built_at": time.time(), "ids": {"a": 1}}

    return load_vocab


def tokenize(arg: Any, vocab: dict[str, Any]) -> dict[str, Any]:
    return {"seen": [{"pid": os.getpid(), "built_by": vocab["built_by"], "at": vocab["built_at"]}]}


async def atokenize(arg: Any, vocab: dict[str, Any]) -> dict[str, Any]:
    return tokenize(arg, vocab)


def fan(state: Docs) -> list[Send]:
    return [Send("tok", {"i": i}) for i in range(state.n)]


def warm_graph(init: Callable[[], Any], *, fn: Any = tokenize, **node: Any) -> Any:
    g = Graph(Docs)
    g.add_node("start", lambda s: None, lane="inline")
    g.add_node("tok", fn, worker_init=init, **node)
    g.add_edge(START, "start")
    g.add_conditional_edges("start", fan)
    g.add_edge("tok", END)
    return g.compile()


class TestWorkerInit:
    @pytest.mark.parametrize("batch", [True, False], ids=["batched", "one-by-one"])
    async def test_each_worker_builds_once_and_load_is_timed_apart(self, batch: bool) -> None:
        """24 calls on the pool: one build per worker, reused by every later call there;
        the build is a separate slice, not part of any call's wall time."""
        warm(default_executor())
        app = warm_graph(vocab_loader(uuid.uuid4().hex), lane="cpu", batch=batch)
        r = await app.arun({"n": 24}, mode="parallel")
        seen = r.state.seen
        assert len(seen) == 24 and all(s["pid"] == s["built_by"] for s in seen)
        workers = {s["pid"] for s in seen}
        assert os.getpid() not in workers
        # One build per worker: every call in a worker saw the same resource.
        assert all(len({s["at"] for s in seen if s["pid"] == w}) == 1 for w in workers)
        loads = [m for m in r.trace.marks if m.cat == "worker_init"]
        assert sorted(m.pid for m in loads) == sorted(workers)
        assert all(m.duration_s >= LOAD_S * 0.9 and m.name.startswith("load ") for m in loads)
        calls = [c for c in r.trace.calls if c.node == "tok"]
        assert sum(c.load_s > 0 for c in calls) == len(workers)
        assert all(c.wall_s < LOAD_S * 0.5 for c in calls)  # the load is not in the call
        # Each build is also a WorkerLoaded event, after the call that waited for it.
        events: list[Any] = []
        fresh = warm_graph(vocab_loader(uuid.uuid4().hex), lane="cpu", batch=batch)
        r2 = await fresh.arun({"n": 6}, mode="parallel", on_event=events.append)
        loaded = [e for e in events if isinstance(e, engine.WorkerLoaded)]
        built = {s["pid"] for s in r2.state.seen}
        assert sorted(e.pid for e in loaded) == sorted(built)
        assert all(e.node == "tok" and e.load_s >= LOAD_S * 0.9 for e in loaded)
        assert all("load_vocab" in e.resource for e in loaded)
        # A second run reuses the workers' resources: nothing is built again.
        again = await app.arun({"n": 8}, mode="parallel")
        assert not [m for m in again.trace.marks if m.cat == "worker_init"]
        assert {s["at"] for s in again.state.seen} <= {s["at"] for s in seen}

    @pytest.mark.parametrize(
        ("lane", "mode"),
        [("thread", "parallel"), ("inline", "parallel"), ("cpu", "sequential"),
         ("cpu", "concurrent"), ("io", "parallel")],
    )  # fmt: skip
    async def test_in_driver_lanes_build_once_per_compiled_graph(
        self, lane: str, mode: str
    ) -> None:
        """On lanes in the driver the resource is built once, in the driver, across runs."""
        fn = atokenize if lane == "io" else tokenize
        app = warm_graph(vocab_loader(uuid.uuid4().hex), fn=fn, lane=lane)
        first = await app.arun({"n": 5}, mode=mode)
        second = await app.arun({"n": 5}, mode=mode)
        seen = first.state.seen + second.state.seen
        assert {s["built_by"] for s in seen} == {os.getpid()}
        assert len({s["at"] for s in seen}) == 1
        assert len([m for m in first.trace.marks if m.cat == "worker_init"]) == 1
        assert not [m for m in second.trace.marks if m.cat == "worker_init"]

    @pytest.mark.parametrize("mode", ["sequential", "parallel"])
    async def test_a_failing_build_fails_the_call_and_is_tried_again(
        self, mode: str, tmp_path: Path
    ) -> None:
        """A build that raises fails the node with its message; the next run builds again."""
        flag = tmp_path / "broken"
        flag.touch()
        app = warm_graph(vocab_loader(uuid.uuid4().hex, str(flag)), lane="cpu")
        with pytest.raises(OSError, match=r"worker_init .*load_vocab failed: model file missing"):
            await app.arun({"n": 3}, mode=mode)
        flag.unlink()
        r = await app.arun({"n": 3}, mode=mode)
        assert len(r.state.seen) == 3

    def test_an_unpicklable_init_is_refused_at_add_node(self) -> None:
        """worker_init must reach the workers: refused when added, naming the node."""
        import threading

        lock = threading.Lock()
        g = Graph(Docs)
        with pytest.raises(GraphError, match=r"node 'tok': worker_init .* cannot be pickled"):
            g.add_node("tok", tokenize, worker_init=lambda: lock)
        with pytest.raises(GraphError, match="not callable"):
            g.add_node("tok", tokenize, worker_init=42)  # type: ignore[arg-type]

    async def test_the_load_is_a_slice_in_the_chrome_trace(self, tmp_path: Path) -> None:
        """The Chrome trace draws each build as its own 'load' slice on the worker's row."""
        app = warm_graph(vocab_loader(uuid.uuid4().hex), lane="cpu")
        r = await app.arun({"n": 4}, mode="parallel")
        path = tmp_path / "trace.json"
        r.trace.to_chrome(path)
        events = json.loads(path.read_text())["traceEvents"]
        loads = [e for e in events if e.get("cat") == "worker_init"]
        assert loads and all(e["ph"] == "X" and e["name"].startswith("load ") for e in loads)
        assert all(e["dur"] >= LOAD_S * 0.9e6 for e in loads)


class TestMemoryCap:
    async def test_the_pool_never_outgrows_the_memory(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """1.5 GB available, 1 GB per worker: the run uses one worker, however many cores."""
        monkeypatch.setattr(engine.warm, "available_memory", lambda: 1_500_000_000)
        app = warm_graph(vocab_loader(uuid.uuid4().hex), lane="cpu", memory_per_worker="1GB")
        r = await app.arun({"n": 6}, mode="parallel")
        assert len({s["pid"] for s in r.state.seen}) == 1 and r.metrics.cpu_workers == 1
        # A run-level hint (arun(memory_per_worker=...)) caps the pool the same way.
        r = await warm_graph(vocab_loader(uuid.uuid4().hex), lane="cpu").arun(
            {"n": 6}, mode="parallel", memory_per_worker=2_000_000_000
        )
        assert len({s["pid"] for s in r.state.seen}) == 1 and r.metrics.cpu_workers == 1

    async def test_a_capped_app_keeps_its_warm_workers(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The cap is decided once per app, and a capped pool is not the uncapped one:
        runs of an uncapped app in between, or less memory free later (the capped
        workers' own resources hold it), never cost the capped app its warm worker."""
        free = [1_500_000_000]
        monkeypatch.setattr(engine.warm, "available_memory", lambda: free[0])
        capped = warm_graph(vocab_loader(uuid.uuid4().hex), lane="cpu", memory_per_worker="1GB")
        uncapped = warm_graph(vocab_loader(uuid.uuid4().hex), lane="cpu")
        first = await capped.arun({"n": 6}, mode="parallel")
        free[0] = 500_000_000  # its worker's model now takes memory: not a reason to shrink
        other = await uncapped.arun({"n": 6}, mode="parallel")
        again = await capped.arun({"n": 6}, mode="parallel")
        (worker,) = {s["pid"] for s in first.state.seen}
        assert {s["pid"] for s in again.state.seen} == {worker}
        assert not [m for m in again.trace.marks if m.cat == "worker_init"]  # not rebuilt
        assert worker not in {s["pid"] for s in other.state.seen}  # pools kept apart

    def test_a_worker_keeps_only_its_most_recent_resources(self) -> None:
        """A long-lived worker serving app after app keeps ``keep`` resources, the least
        recently used dropped first (and built again if it is needed again)."""
        from engine.lanes.measure import Resources

        res = Resources(keep=2)
        a, b, c = (WorkerInit.of(vocab_loader(t), node=t) for t in ("a", "b", "c"))
        for init in (a, b, a, c):  # c evicts b, the least recently used
            res.get(init)
        assert len(res) == 2
        assert res.get(a)[1] is None and res.get(c)[1] is None  # kept: no build
        assert res.get(b)[1] is not None  # dropped: built again

    def test_a_bad_hint_is_refused_at_add_node(self) -> None:
        """memory_per_worker is checked when the node is added, naming it."""
        with pytest.raises(GraphError, match=r"node 'tok': memory_per_worker"):
            Graph(Docs).add_node("tok", tokenize, memory_per_worker="lots")


class TestMemory:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (1500, 1500),
            ("512MB", 512 * 1000**2),
            ("2GiB", 2 * 1024**3),
            ("1.5G", 1_500_000_000),
            ("64 kib", 64 * 1024),
            ("10b", 10),
        ],
    )
    def test_parse_size(self, value: Any, expected: int) -> None:
        """Sizes in bytes, decimal or binary units."""
        assert parse_size(value) == expected

    @pytest.mark.parametrize("value", ["two gigs", "-1GB", "5XB", 0, True, 1.5])
    def test_bad_sizes(self, value: Any) -> None:
        """Anything else is a GraphError naming the option."""
        with pytest.raises(GraphError, match="memory_per_worker"):
            parse_size(value)

    def test_cap_by_available_memory(self) -> None:
        """10 GiB available, 10% kept back, 3 GiB per worker: 3 workers of 16."""
        cap = workers_for_memory("3GiB", max_workers=16, available=10 * 1024**3)
        assert cap.workers == 3 and "3 worker(s) (of 16)" in cap.reason

    def test_never_more_than_asked(self) -> None:
        """Plenty of memory leaves max_workers."""
        assert workers_for_memory("1MB", max_workers=4, available=64 * 1024**3).workers == 4

    def test_at_least_one_worker_with_a_warning(self) -> None:
        """If not even one worker fits, one runs and the reason warns of memory pressure."""
        cap = workers_for_memory("8GiB", max_workers=4, available=1024**3)
        assert cap.workers == 1 and "memory pressure" in cap.reason

    def test_this_machine_reports_memory(self) -> None:
        """available_memory() finds a positive number on Linux."""
        found = available_memory()
        assert found is not None and found > 0

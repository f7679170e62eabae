"""A graph's first runs: starting the pool's workers (``app.warm``), and what
``explain()`` says changed since the last run."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import loky

from engine import START, Graph, NodeCall
from engine.lanes.pool import worker_processes
from tests.support import State, cpu_probe, stagger_start


def two_cpu_nodes(seconds: float = 0.2) -> Graph:
    g = Graph(State)
    for name in ("a", "b"):
        g.add_node(name, functools.partial(cpu_probe, name, seconds), lane="cpu")
        g.add_edge(START, name)
    return g


class TestWarm:
    async def test_warm_starts_every_worker_before_the_first_run(self) -> None:
        """A fresh pool has no process until warm(); after it, every worker is up, and the
        first run's two cpu calls run at once in two of them."""
        pool = loky.ProcessPoolExecutor(max_workers=2)
        try:
            app = two_cpu_nodes().compile()
            assert not worker_processes(pool)
            assert await asyncio.to_thread(app.warm, pool) == 2
            procs = worker_processes(pool) or {}
            assert len(procs) == 2 and all(p.is_alive() for p in procs.values())
            r = await app.arun({}, mode="parallel", executor=pool)
            a, b = (r.trace.for_node(n)[0] for n in ("a", "b"))
            assert a.pid != b.pid and set(procs) >= {a.pid, b.pid}
            assert max(a.start, b.start) < min(a.end, b.end)  # they overlapped
        finally:
            pool.shutdown(wait=True)

    async def test_warm_waits_for_a_worker_that_starts_late(self, tmp_path: Path) -> None:
        """A worker ready 1.5 s after its sibling: warm() waits for it, so the first run's
        two calls still go to two workers (on a cold pool the first worker takes both)."""
        pool = loky.ProcessPoolExecutor(
            max_workers=2, initializer=stagger_start, initargs=(str(tmp_path),)
        )
        try:
            app = two_cpu_nodes(0.2).compile()
            assert await asyncio.to_thread(app.warm, pool) == 2
            r = await app.arun({}, mode="parallel", executor=pool)
            a, b = (r.trace.for_node(n)[0] for n in ("a", "b"))
            assert a.pid != b.pid
        finally:
            pool.shutdown(wait=True)

    def test_a_thread_pool_has_nothing_to_start(self) -> None:
        """warm() on a thread pool returns its size at once."""
        with ThreadPoolExecutor(3) as pool:
            assert two_cpu_nodes().compile().warm(pool) == 3


def _tiny(state: State) -> dict[str, object]:
    return {}


def _record(node: str, wall: float, cpu: float, lane: str = "cpu") -> NodeCall:
    return NodeCall(node, 0, lane, 1, 99, 1, "h", 10.0, 10.0 + wall, cpu)


class TestExplainChanges:
    def test_an_unchanged_node_is_not_listed_as_changed(self) -> None:
        """A run that measured the same numbers again changes nothing in explain(); a
        node whose time moved by more than 10% (and 1 ms) is listed, with the numbers."""
        g = Graph(State)
        g.add_node("crunch", functools.partial(cpu_probe, "crunch", 0.05))
        g.add_node("tidy", _tiny)
        g.add_edge(START, "crunch")
        g.add_edge(START, "tidy")
        app = g.compile()
        runs = [_record("crunch", 0.050, 0.050), _record("tidy", 0.00002, 0.00002)]
        app.profile.observe_run(runs, driver_pid=1)
        app.profile.observe_run(runs, driver_pid=1)
        assert "changed since the last run" not in str(app.explain())
        assert app.profile.diff() == ()
        jitter = [_record("crunch", 0.0503, 0.0503), _record("tidy", 0.00003, 0.00003)]
        app.profile.observe_run(jitter, driver_pid=1)
        assert app.profile.diff() == ()  # 0.3 ms, 0.01 ms: noise, not news
        app.profile.observe_run([_record("crunch", 0.200, 0.200)], driver_pid=1)
        (delta,) = app.profile.diff()
        assert delta.node == "crunch"
        assert "crunch: +1 calls, wall" in str(app.explain())

    def test_a_lane_change_is_listed(self) -> None:
        """The first run moves a tiny undeclared node off the cpu lane: explain() says so.

        Where it goes depends on what was measured (inline on a quiet machine; a
        thread when a busy host preempted it mid-call, so it looked like waiting):
        the change listed must be the one the explanation shows.
        """
        g = Graph(State)
        g.add_node("tidy", _tiny)
        g.add_edge(START, "tidy")
        app = g.compile()
        app.run({})
        explained = app.explain()
        lane = explained.lane_of("tidy")
        assert lane in ("inline", "thread")
        assert f"tidy: cpu -> {lane}" in str(explained)

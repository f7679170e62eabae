"""Predicting a recorded run on other worker counts (``engine.predict``)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from engine import START, Graph, NodeCall, Trace
from engine.marks import Mark
from engine.predict import scaling, table
from tests.support import State, cpu_probe

DRIVER = 1
HANDOFF = 0.001


def cpu(node: str, step: int, start: float, secs: float, pid: int, **kw: Any) -> NodeCall:
    return NodeCall(node, step, "cpu", 1, pid, 1, "h", start, start + secs, secs, **kw)


def io(node: str, step: int, start: float, secs: float, **kw: Any) -> NodeCall:
    return NodeCall(node, step, "io", 1, DRIVER, 1, "h", start, start + secs, 0.0, **kw)


def cpu_fanout_on_two() -> Trace:
    """4 x 0.5 s of CPU on 2 workers (two after the first two, 1 ms hand-off), then 0.2 s."""
    calls = (
        cpu("a", 0, 0.000, 0.5, 101),
        cpu("b", 0, 0.000, 0.5, 102),
        cpu("c", 0, 0.501, 0.5, 101),
        cpu("d", 0, 0.501, 0.5, 102),
        cpu("z", 1, 1.011, 0.2, 101),
    )
    return Trace(calls=calls, driver_pid=DRIVER, cpu_workers=2)


class TestReplay:
    def test_worker_counts_move_only_the_cpu_lane(self) -> None:
        """1 worker queues the four calls, 4 run them at once; the replay of the recorded
        worker count gives back the recorded wall."""
        t = cpu_fanout_on_two()
        one, two, four, eight = scaling(t, [1, 2, 4, 8])
        gap = 0.01  # the driver's time between the steps, as recorded
        assert two.replayed_s == pytest.approx(t.span_s(), abs=1e-6)
        assert one.wall_s == pytest.approx(4 * 0.5 + 3 * HANDOFF + gap + 0.2, abs=1e-6)
        assert two.wall_s == pytest.approx(1.0 + HANDOFF + gap + 0.2, abs=1e-6)
        assert four.wall_s == pytest.approx(0.5 + gap + 0.2, abs=1e-6)
        assert eight.wall_s == four.wall_s == four.bound_s
        assert four.speedup == pytest.approx(one.wall_s / four.wall_s)
        assert eight.efficiency == pytest.approx(eight.speedup / 8)

    def test_io_calls_never_wait_for_workers(self) -> None:
        """An io call longer than the cpu work bounds its step whatever the workers."""
        calls = (
            io("fetch", 0, 0.0, 2.0),
            cpu("a", 0, 0.0, 0.5, 101),
            cpu("b", 0, 0.0, 0.5, 102),
        )
        t = Trace(calls=calls, driver_pid=DRIVER, cpu_workers=2)
        one, sixteen = scaling(t, [1, 16])
        assert one.wall_s == pytest.approx(2.0) == sixteen.wall_s
        assert one.bound_sentence().startswith("beyond 1 worker this graph is bound by node fetch")

    def test_preempted_time_is_left_out(self) -> None:
        """A call that waited for a core (queued_s) is predicted at the speed it ran, and
        the replay as recorded keeps the wait."""
        calls = (cpu("a", 0, 0.0, 0.8, 101, queued_s=0.3), cpu("b", 0, 0.0, 0.5, 102))
        p = Trace(calls=calls, driver_pid=DRIVER, cpu_workers=2).predict(workers=2)
        assert p.wall_s == pytest.approx(0.5)
        assert p.replayed_s == pytest.approx(0.8) and p.queued_s == pytest.approx(0.3)

    def test_run_facts_add_the_driver_time_around_the_steps(self) -> None:
        """With the run's start and wall recorded, what the caller waited besides the
        steps (set-up before, closing after) is part of every prediction."""
        t = cpu_fanout_on_two()
        timed = Trace(
            calls=t.calls,
            driver_pid=DRIVER,
            cpu_workers=2,
            started=-0.05,
            wall_s=1.211 + 0.05 + 0.02,
        )
        assert timed.predict(workers=4).wall_s == pytest.approx(t.predict(workers=4).wall_s + 0.07)


class TestBudgets:
    def test_a_cpu_cap_is_a_smaller_pool(self) -> None:
        """max_concurrency={'cpu': 1} on 8 workers predicts what 1 worker does."""
        t = cpu_fanout_on_two()
        capped = t.predict(workers=8, max_concurrency={"cpu": 1})
        assert capped.wall_s == pytest.approx(t.predict(workers=1).wall_s)

    def test_a_resource_limit_holds_io_calls(self) -> None:
        """4 io calls of 1 s using 'api' with limits={'api': 2}: two rounds, 2 s; the waits
        the recording shows are taken out before the limit is applied again."""
        calls = tuple(io(f"ask[{i}]", 0, 0.0, 1.0) for i in range(4))
        t = Trace(calls=calls, driver_pid=DRIVER)
        uses = {f"ask[{i}]": {"api": 1} for i in range(4)}
        assert t.predict(workers=1).wall_s == pytest.approx(1.0)
        assert t.predict(workers=1, limits={"api": 2}, resources=uses).wall_s == pytest.approx(2.0)
        waited = Trace(
            calls=(io("ask", 0, 0.0, 1.0, index=0), io("ask", 0, 1.0, 1.0, index=1)),
            driver_pid=DRIVER,
            marks=(
                Mark(
                    "span",
                    "wait api",
                    0.0,
                    DRIVER,
                    "h",
                    end=1.0,
                    cat="budget",
                    args={"node": "ask[1]"},
                ),
            ),
        )
        assert waited.predict(workers=1).wall_s == pytest.approx(1.0)  # no limit: no wait
        limited = waited.predict(workers=1, limits={"api": 1}, resources={"ask": {"api": 1}})
        assert limited.wall_s == pytest.approx(2.0)


class TestCriticalPath:
    def test_names_the_node_that_bounds_the_run(self) -> None:
        """Past the saturation point, the longest leg of the critical path is named."""
        calls = (
            cpu("small", 0, 0.0, 0.1, 101),
            cpu("big", 0, 0.0, 0.9, 102),
            cpu("other", 0, 0.1, 0.1, 101),
            cpu("join", 1, 0.91, 0.1, 101),
        )
        p = Trace(calls=calls, driver_pid=DRIVER, cpu_workers=2).predict(workers=4)
        assert [leg.node for leg in p.critical_path] == ["big", "join"]
        assert p.saturation == 2
        assert "beyond 2 workers this graph is bound by node big (cpu, step 0" in str(p)

    def test_a_trace_without_workers_says_so(self) -> None:
        """cpu calls that ran in the driver (sequential mode, threads): nothing to scale."""
        calls = (cpu("a", 0, 0.0, 0.5, DRIVER), cpu("b", 0, 0.5, 0.5, DRIVER))
        p = Trace(calls=calls, driver_pid=DRIVER).predict(workers=4)
        assert p.wall_s == pytest.approx(1.0)
        assert "ran in the driver" in " ".join(p.notes)

    def test_the_table_has_a_row_per_worker_count(self) -> None:
        text = table(scaling(cpu_fanout_on_two(), [1, 2, 4]))
        rows = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit()]
        assert [r[0] for r in rows] == ["1", "2", "4"]
        assert "the model replays it in 1.211 s (+0.0%)" in text


async def test_a_real_run_replays_to_its_own_wall(tmp_path: Path) -> None:
    """A parallel run's trace, saved and loaded, replays on its own worker count to within
    a few percent of its span: the model's dispatch order, hand-offs and steps are the
    engine's."""
    g = Graph(State)
    for name in ("a", "b", "c", "d"):
        g.add_node(name, functools.partial(cpu_probe, name, 0.1), lane="cpu")
        g.add_edge(START, name)
        g.add_edge(name, "z")
    g.add_node("z", functools.partial(cpu_probe, "z", 0.05), lane="cpu")
    app = g.compile()
    await app.arun({}, mode="parallel")  # warm
    r = await app.arun({}, mode="parallel")
    trace = Trace.load(r.trace.save(tmp_path / "t.json"))
    p = trace.predict(workers=r.metrics.cpu_workers)
    assert p.replayed_s == pytest.approx(trace.span_s(), rel=0.05, abs=0.005)
    json.dumps([leg.node for leg in p.critical_path])

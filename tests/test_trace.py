"""Trace records, metrics derived from them, and Chrome trace export."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from engine import START, Graph, NodeCall
from engine.trace import compute_metrics
from tests.support import State, cpu_probe, io_probe


def call(node: str, step: int, lane: str, start: float, end: float, cpu: float) -> NodeCall:
    return NodeCall(node, step, lane, 1, 1, 1, "h", start, end, cpu)


class TestMetrics:
    def test_lower_bound_per_step(self) -> None:
        """The bound sums per step max(longest effort, cpu seconds / workers)."""
        calls = [
            call("io", 0, "io", 0.0, 1.0, 0.0),
            call("a", 0, "cpu", 0.0, 0.5, 0.5),
            call("b", 1, "cpu", 1.0, 2.0, 0.9),
            call("c", 1, "cpu", 1.0, 2.0, 0.9),
            call("d", 1, "cpu", 1.0, 2.0, 0.9),
        ]
        m = compute_metrics(calls, wall_s=3.0, steps=2, cpu_workers=2)
        assert abs(m.lower_bound_s - (1.0 + 1.35)) < 1e-9
        assert abs(m.efficiency - 2.35 / 3.0) < 1e-9
        assert abs(m.busy_s - 4.5) < 1e-9 and abs(m.parallelism - 1.5) < 1e-9
        assert m.by_lane == {"cpu": 3.5, "io": 1.0}

    def test_cpu_call_effort_is_cpu_time(self) -> None:
        """A cpu call stretched by contention counts its CPU seconds, not its wall."""
        m = compute_metrics([call("a", 0, "cpu", 0, 2.0, 0.5)], 2.0, 1, 4)
        assert m.lower_bound_s == 0.5


async def test_run_metrics_are_consistent() -> None:
    """Metrics of a real run agree with its trace."""
    g = Graph(State)
    g.add_node("c", functools.partial(cpu_probe, "c", 0.05), lane="cpu")
    g.add_node("i", functools.partial(io_probe, "i", 0.05))
    g.add_edge(START, "c")
    g.add_edge(START, "i")
    r = await g.compile().arun({}, mode="parallel")
    m = r.metrics
    assert abs(m.busy_s - sum(c.wall_s for c in r.trace.calls)) < 1e-9
    assert m.lower_bound_s <= m.wall_s * 1.05
    assert abs(m.efficiency - min(m.lower_bound_s / m.wall_s, 1.0)) < 1e-9
    assert set(m.by_lane) == {"cpu", "io"} and m.steps == 1 and m.calls == 2


async def test_chrome_trace(tmp_path: Path) -> None:
    """to_chrome writes trace-event JSON with one named row per process."""
    g = Graph(State)
    for n in ("a", "b"):
        g.add_node(n, functools.partial(cpu_probe, n, 0.05), lane="cpu")
        g.add_edge(START, n)
    r = await g.compile().arun({}, mode="parallel")
    doc = json.loads(r.trace.to_chrome(tmp_path / "t.json").read_text())
    spans = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert {e["name"] for e in spans} == {"a", "b"}
    for e in spans:
        assert {"ts", "dur", "pid", "tid", "name", "args"} <= set(e)
    procs = [e for e in doc["traceEvents"] if e["name"] == "process_name"]
    assert len(procs) == len({e["pid"] for e in spans}) == 2

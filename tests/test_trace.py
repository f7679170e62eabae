"""Trace records, the metrics derived from them, and the Chrome trace export."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import socket
import threading
from pathlib import Path

import pytest

from engine import START, Graph, Metrics, NodeCall, Send, Trace
from engine.trace import call_record, chunk_records, compute_metrics
from tests.nodes import sync_send_worker
from tests.support import State, cpu_probe, io_probe


def call(
    node: str, step: int, lane: str, start: float, end: float, cpu: float, pid: int = 1
) -> NodeCall:
    return NodeCall(node, step, lane, 1, pid, 1, "h", start, end, cpu)


class TestNodeCall:
    def test_frozen(self) -> None:
        """A trace record cannot be changed."""
        c = call("a", 0, "cpu", 0.0, 1.0, 0.5)
        with pytest.raises(dataclasses.FrozenInstanceError):
            c.end = 2.0  # type: ignore[misc]

    def test_wall_and_effort(self) -> None:
        """wall_s is end - start; a cpu call's effort is its CPU time, others' their wall."""
        assert call("a", 0, "cpu", 1.0, 3.0, 0.5).wall_s == 2.0
        assert call("a", 0, "cpu", 1.0, 3.0, 0.5).effort_s == 0.5
        assert call("a", 0, "cpu", 1.0, 3.0, 0.0).effort_s == 2.0  # CPU time unknown
        assert call("a", 0, "io", 1.0, 3.0, 0.5).effort_s == 2.0

    @pytest.mark.usefixtures("warm_pool")
    async def test_fields_of_real_calls(self) -> None:
        """Each call is recorded where it ran: process, thread, host, clock, CPU, bytes."""
        g = Graph(State)
        g.add_node("c", functools.partial(cpu_probe, "c", 0.05), lane="cpu")
        g.add_node("i", functools.partial(io_probe, "i", 0.05))
        g.add_edge(START, "c")
        g.add_edge(START, "i")
        r = await g.compile().arun({}, mode="parallel")
        c, i = r.trace.for_node("c")[0], r.trace.for_node("i")[0]
        assert (c.node, c.step, c.lane, c.attempt, c.index, c.ok, c.error) == (
            "c",
            0,
            "cpu",
            1,
            -1,
            True,
            None,
        )
        assert c.pid == r.state.probes["c"]["pid"] != os.getpid()
        assert c.host == i.host == socket.gethostname()
        assert c.start <= r.state.probes["c"]["start"] < r.state.probes["c"]["end"] <= c.end
        assert c.cpu_s >= 0.05 and c.bytes_in > 0 and c.bytes_out > 0
        assert (i.lane, i.pid, i.thread) == ("io", os.getpid(), threading.get_native_id())
        assert i.start <= r.state.probes["i"]["start"] and (i.bytes_in, i.bytes_out) == (0, 0)
        assert r.trace.pids() == {c.pid, os.getpid()} and r.trace.pids("io") == {os.getpid()}

    def test_a_chunks_records_are_each_calls_own(self) -> None:
        """``chunk_records`` (a chunk's records from its columns) makes what ``call_record``
        makes for each call: equal records, field by field, none shared."""
        where = (11, 12, "h")
        cols = {
            "attempts": [1, 2, 1], "indexes": [4, 5, 6], "starts": [1.0, 2.0, 3.0],
            "ends": [1.5, 2.5, 3.5], "cpus": [0.4, 0.3, 0.2], "sizes": [10, 20, 30],
            "waits": [0.01, 0.0, 0.02],
        }  # fmt: skip
        got = chunk_records("w", 3, "cpu", where, 99, *cols.values())
        want = [
            call_record("w", 3, "cpu", a, i, 11, 12, "h", s, e, c, n, 99, True, None, q, 0.0)
            for a, i, s, e, c, n, q in zip(*cols.values(), strict=True)
        ]
        assert got == want and [vars(g) for g in got] == [vars(w) for w in want]
        assert len({id(vars(g)) for g in got}) == 3
        with pytest.raises(dataclasses.FrozenInstanceError):
            got[0].end = 2.0  # type: ignore[misc]

    async def test_send_calls_carry_their_index(self) -> None:
        """A Send's call records its index; others record -1."""
        g = Graph(State)
        g.add_node("plan", lambda s: None, lane="inline")
        g.add_node("w", sync_send_worker, lane="thread")
        g.add_edge(START, "plan")
        g.add_conditional_edges("plan", lambda s: [Send("w", {"doc": d}) for d in "xy"])
        r = await g.compile().arun({})
        assert [c.index for c in r.trace.for_node("plan")] == [-1]
        assert sorted(c.index for c in r.trace.for_node("w")) == [0, 1]


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
        assert m.lower_bound_s == pytest.approx(1.0 + 1.35)
        assert m.efficiency == pytest.approx(2.35 / 3.0)
        assert m.busy_s == pytest.approx(4.5) and m.parallelism == pytest.approx(1.5)
        assert m.cpu_s == pytest.approx(3.2)
        assert m.by_lane == pytest.approx({"cpu": 3.5, "io": 1.0})
        assert (m.steps, m.calls, m.cpu_workers) == (2, 5, 2)

    def test_cpu_call_effort_is_cpu_time(self) -> None:
        """A cpu call stretched by contention counts its CPU seconds, not its wall."""
        m = compute_metrics([call("a", 0, "cpu", 0, 2.0, 0.5)], 2.0, 1, 4)
        assert m.lower_bound_s == 0.5

    def test_efficiency_is_capped(self) -> None:
        """Efficiency never exceeds 1, even when the clocks disagree a little."""
        m = compute_metrics([call("a", 0, "io", 0.0, 1.0, 0.0)], 0.9, 1, 1)
        assert m.efficiency == 1.0

    def test_no_calls(self) -> None:
        """A run without calls has no busy time and a trivial efficiency."""
        m = compute_metrics([], 0.01, 0, 2)
        assert (m.busy_s, m.lower_bound_s, m.efficiency, m.by_lane) == (0.0, 0.0, 1.0, {})

    def test_frozen_and_as_dict(self) -> None:
        """Metrics are frozen and convert to a plain dict."""
        m = compute_metrics([call("a", 0, "io", 0.0, 1.0, 0.0)], 1.0, 1, 1)
        with pytest.raises(dataclasses.FrozenInstanceError):
            m.wall_s = 0.0  # type: ignore[misc]
        assert m.as_dict()["by_lane"] == {"io": 1.0} and isinstance(m, Metrics)

    def test_prints_as_one_readable_line(self) -> None:
        """str(metrics) names every number with its unit, lanes in order."""
        m = compute_metrics(
            [call("a", 0, "cpu", 0, 2, 2.0), call("b", 0, "io", 0, 1, 0)], 2.0, 1, 2
        )
        assert str(m) == (
            "wall 2.000 s, busy 3.000 s (parallelism 1.50), CPU time 2.000 s, lower bound "
            "2.000 s (efficiency 1.00); 1 step(s), 2 call(s), 2 cpu worker(s); busy (call wall "
            "time) by lane: cpu lane 2.000 s, io lane 1.000 s"
        )

    async def test_run_metrics_agree_with_trace(self) -> None:
        """Metrics of a real run are derived from its trace."""
        g = Graph(State)
        g.add_node("c", functools.partial(cpu_probe, "c", 0.05), lane="cpu")
        g.add_node("i", functools.partial(io_probe, "i", 0.05))
        g.add_node("t", functools.partial(cpu_probe, "t", 0.01), lane="thread")
        g.add_edge(START, "c")
        g.add_edge(START, "i")
        g.add_edge("c", "t")
        r = await g.compile().arun({}, mode="parallel")
        m = r.metrics
        assert m.busy_s == pytest.approx(sum(c.wall_s for c in r.trace.calls))
        assert m.cpu_s == pytest.approx(sum(c.cpu_s for c in r.trace.calls))
        assert m.parallelism == pytest.approx(m.busy_s / m.wall_s)
        assert m.lower_bound_s <= m.wall_s * 1.05
        assert m.efficiency == pytest.approx(min(m.lower_bound_s / m.wall_s, 1.0))
        assert set(m.by_lane) == {"cpu", "io", "thread"}
        assert sum(m.by_lane.values()) == pytest.approx(m.busy_s)
        assert (m.steps, m.calls) == (2, 3)

    @pytest.mark.usefixtures("warm_pool")
    async def test_parallel_step_shows_parallelism(self) -> None:
        """Two cpu nodes of one step in parallel mode: busy time well over the wall time."""
        g = Graph(State)
        for name in ("c1", "c2"):
            g.add_node(name, functools.partial(cpu_probe, name, 0.4), lane="cpu")
            g.add_edge(START, name)
        r = await g.compile().arun({}, mode="parallel")
        assert len(r.trace.pids("cpu")) == 2
        assert r.metrics.parallelism > 1.3


class TestChrome:
    async def test_chrome_trace(self, tmp_path: Path) -> None:
        """to_chrome writes trace-event JSON: a span per call, a named row per process."""
        g = Graph(State)
        for n in ("a", "b"):
            g.add_node(n, functools.partial(cpu_probe, n, 0.05), lane="cpu")
            g.add_edge(START, n)
        g.add_node("i", functools.partial(io_probe, "i", 0.01))
        g.add_edge(START, "i")
        r = await g.compile().arun({}, mode="parallel")
        path = r.trace.to_chrome(tmp_path / "t.json")
        doc = json.loads(path.read_text())
        events = doc["traceEvents"]
        spans = [e for e in events if e["ph"] == "X"]
        assert sorted(e["name"] for e in spans) == ["a", "b", "i"]
        for e in spans:
            assert {"ph", "ts", "dur", "pid", "tid", "name", "args"} <= set(e)
            assert e["ts"] >= 0 and e["dur"] >= 0
        # The clock's origin is the first record: a call, or a mark (the loop-lag
        # counter can start before the first call).
        assert min(e["ts"] for e in events if "ts" in e) == 0
        by_name = {e["name"]: e for e in spans}
        wall = r.trace.for_node("a")[0].wall_s
        assert by_name["a"]["dur"] == pytest.approx(wall * 1e6)
        assert by_name["a"]["args"]["lane"] == "cpu" and by_name["a"]["args"]["step"] == 0
        procs = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
        assert set(procs) == {e["pid"] for e in spans}
        assert len(procs) == len(r.trace.pids())
        assert sum(name.startswith("driver") for name in procs.values()) == 1
        assert procs[by_name["i"]["pid"]].startswith("driver")
        threads = {(e["pid"], e["tid"]) for e in events if e["name"] == "thread_name"}
        assert threads == {(e["pid"], e["tid"]) for e in spans}

    def test_send_spans_are_indexed(self) -> None:
        """A Send's span is named node[index]."""
        t = Trace(calls=(NodeCall("w", 0, "io", 1, 1, 1, "h", 0.0, 1.0, 0.0, index=2),))
        assert [e["name"] for e in t.to_chrome_events() if e["ph"] == "X"] == ["w[2]"]

    def test_empty_trace(self, tmp_path: Path) -> None:
        """A trace without calls writes an empty, valid document."""
        doc = json.loads(Trace(calls=()).to_chrome(tmp_path / "e.json").read_text())
        assert doc["traceEvents"] == []

    def test_same_pid_on_two_hosts_are_two_rows(self) -> None:
        """Records from two machines never share a row, even with equal pids."""
        calls = (
            NodeCall("a", 0, "cpu", 1, 7, 1, "h1", 0.0, 1.0, 0.0),
            NodeCall("b", 0, "cpu", 1, 7, 1, "h2", 0.0, 1.0, 0.0),
        )
        spans = [e for e in Trace(calls=calls).to_chrome_events() if e["ph"] == "X"]
        assert len({e["pid"] for e in spans}) == 2

    async def test_overlapping_loop_calls_never_share_a_row(self) -> None:
        """io calls interleave on the loop's thread: each gets a row where slices nest."""
        g = Graph(State)
        for i, seconds in enumerate((0.10, 0.15, 0.05)):
            name = f"a{i}"
            g.add_node(name, functools.partial(io_probe, name, seconds))
            g.add_edge(START, name)
            g.add_node(f"b{i}", functools.partial(io_probe, f"b{i}", 0.02))
            g.add_edge(name, f"b{i}")
        r = await g.compile().arun({}, mode="parallel")
        assert len({c.thread for c in r.trace.calls}) == 1  # all on the loop's thread
        events = r.trace.to_chrome_events()
        spans = [e for e in events if e["ph"] == "X"]
        by_row: dict[tuple[int, int], list[tuple[float, float]]] = {}
        for e in spans:
            by_row.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
        for intervals in by_row.values():
            intervals.sort()
            for (_, end), (start, _) in itertools.pairwise(intervals):
                assert start >= end  # no partial overlap on one row
        assert len(by_row) == 3  # three calls at once in step 0: three rows
        names = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
        assert sorted(names.values())[1:] == [
            f"thread {spans[0]['args']['thread']}, task {k}" for k in (2, 3)
        ]

    def test_calls_one_after_another_keep_the_thread_row(self) -> None:
        """Calls that do not overlap stay on their thread's own row, named after it."""
        calls = (
            NodeCall("a", 0, "io", 1, 7, 42, "h", 0.0, 1.0, 0.0),
            NodeCall("b", 1, "io", 1, 7, 42, "h", 1.0, 2.0, 0.0),
        )
        events = Trace(calls=calls, driver_pid=7).to_chrome_events()
        assert {e["tid"] for e in events if e["ph"] == "X"} == {42}
        assert [e["args"]["name"] for e in events if e["name"] == "thread_name"] == ["thread 42"]

    def test_a_call_lost_with_its_worker_still_gets_a_named_row(self) -> None:
        """A call whose record never came back (thread -1) has its own named row."""
        calls = (NodeCall("a", 0, "cpu", 1, -1, -1, "h", 0.0, 1.0, 0.0, ok=False),)
        events = Trace(calls=calls, driver_pid=7).to_chrome_events()
        (span,) = [e for e in events if e["ph"] == "X"]
        rows = {(e["pid"], e["tid"]) for e in events if e["name"] == "thread_name"}
        assert (span["pid"], span["tid"]) in rows


class TestBarriersAndFile:
    async def test_the_library_trace_marks_each_step_barrier(self, tmp_path: Path) -> None:
        """result.trace.to_chrome() has an 'end of step N' instant per step, at the step's
        last call when the barrier time was not recorded (the CLI's trace records it)."""
        g = Graph(State)
        g.add_node("a", functools.partial(io_probe, "a", 0.02))
        g.add_node("b", functools.partial(io_probe, "b", 0.01))
        g.add_edge(START, "a")
        g.add_edge("a", "b")
        r = await g.compile().arun({})
        events = json.loads(r.trace.to_chrome(tmp_path / "t.json").read_text())["traceEvents"]
        steps = [e for e in events if e["ph"] == "i" and e.get("cat") == "step"]
        assert [e["name"] for e in steps] == ["end of step 0", "end of step 1"]
        (a,) = [e for e in events if e.get("name") == "a" and e["ph"] == "X"]
        assert steps[0]["ts"] == pytest.approx(a["ts"] + a["dur"], abs=1)
        assert all(e["s"] == "g" for e in steps)
        recorded = dataclasses.replace(r.trace, steps=((0, 5.0), (1, 6.0)))
        assert recorded.barriers() == [(0, 5.0), (1, 6.0)]

    def test_save_load_round_trip(self, tmp_path: Path) -> None:
        """save() then load() gives the same trace, marks and run facts included; a Chrome
        trace written by to_chrome() loads too."""
        from engine.marks import Mark

        t = Trace(
            calls=(call("a", 0, "cpu", 1.0, 2.0, 0.9, pid=7), call("b", 1, "io", 2.0, 2.5, 0.0)),
            run_id="r1",
            driver_pid=1,
            marks=(
                Mark("span", "wait api", 1.5, 1, "h", end=1.6, cat="budget", args={"node": "b"}),
            ),
            steps=((0, 2.001), (1, 2.502)),
            started=0.99,
            wall_s=1.6,
            cpu_workers=2,
        )
        back = Trace.load(t.save(tmp_path / "t.json"))
        assert back == t
        assert Trace.load(t.to_chrome(tmp_path / "c.json")) == t

    def test_load_refuses_what_is_not_a_trace(self, tmp_path: Path) -> None:
        """A file that is not an engine trace is a ValueError saying what to pass."""
        path = tmp_path / "x.json"
        path.write_text('{"traceEvents": []}')
        with pytest.raises(ValueError, match=r"not an engine trace .* trace.save\(path\)"):
            Trace.load(path)
        path.write_text('{"format": "engine.trace", "version": 99}')
        with pytest.raises(ValueError, match="version 99"):
            Trace.load(path)


class TestMetricsWords:
    def test_the_two_cpu_figures_are_labelled(self) -> None:
        """CPU seconds and the cpu lane's busy wall time read as different things."""
        m = compute_metrics([call("a", 0, "cpu", 0.0, 0.3, 0.16)], 0.3, 1, 2)
        text = str(m)
        assert "CPU time 0.160 s" in text
        assert "busy (call wall time) by lane: cpu lane 0.300 s" in text
        assert " cpu 0.160" not in text

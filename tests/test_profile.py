"""Measured profiles and the lane policy that decides from them."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from structlog.testing import capture_logs

import engine
from engine import START, Graph, NodeCall
from engine.classify import classify
from engine.lanes.pool import default_executor, measure_dispatch
from engine.plan import build_plan
from engine.profile import (
    Blame,
    DispatchCost,
    LaneChange,
    MeasuredPolicy,
    NodeProfile,
    Profile,
    ProfileError,
    Thresholds,
    redecide,
)
from tests.support import State, burn

# Worker processes cannot import the tests package: node functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

DRIVER = 100
WORKER = 200
DISPATCH = DispatchCost(fixed_s=0.0005, per_byte_s=1e-9, samples=10, workers=2, measured_at=0.0)


def rec(
    node: str,
    wall: float,
    cpu: float,
    *,
    lane: str = "cpu",
    pid: int = WORKER,
    start: float = 0.0,
    bytes_in: int = 0,
    bytes_out: int = 0,
    ok: bool = True,
) -> NodeCall:
    """A synthetic call record, as the scheduler would leave it."""
    return NodeCall(
        node=node, step=0, lane=lane, attempt=1, pid=pid, thread=1, host="h",
        start=start, end=start + wall, cpu_s=cpu, bytes_in=bytes_in, bytes_out=bytes_out, ok=ok,
    )  # fmt: skip


def sync_node(state: Any) -> None:
    return None


async def async_node(state: Any) -> None:
    return None


def profiled(*calls: NodeCall, blamed: dict[str, Blame] | None = None) -> Profile:
    p = Profile()
    p.observe_run(calls, blamed=blamed, driver_pid=DRIVER)
    p.observe_dispatch(DISPATCH)
    return p


class TestObserve:
    def test_ewma_of_wall_and_cpu_ratio(self) -> None:
        """Wall time and CPU/wall are smoothed with the newest call weighted alpha."""
        p = Profile(alpha=0.3)
        p.observe_run([rec("a", 0.1, 0.1), rec("a", 0.2, 0.1)], driver_pid=DRIVER)
        a = p.get("a")
        assert a is not None and a.calls == 2 and a.runs == 1
        assert a.wall_s == pytest.approx(0.3 * 0.2 + 0.7 * 0.1)
        assert a.cpu_ratio == pytest.approx(0.3 * 0.5 + 0.7 * 1.0)

    def test_preemption_is_not_waiting(self) -> None:
        """Time a call sat preempted on a run queue (queued_s) counts as neither work nor wait."""

        @dataclasses.dataclass(frozen=True)
        class QueuedCall(NodeCall):
            queued_s: float = 0.0

        busy = QueuedCall("a", 0, "cpu", 1, WORKER, 1, "h", 0.0, 1.0, 0.45, queued_s=0.5)
        p = Profile()
        p.observe_run([busy], driver_pid=DRIVER)
        a = p.get("a")
        assert a is not None
        assert a.wall_s == pytest.approx(0.5) and a.cpu_ratio == pytest.approx(0.9)

    def test_coroutine_on_loop_has_no_ratio(self) -> None:
        """An io-lane call's CPU is not attributable: wall is kept, the ratio stays unknown."""
        p = Profile()
        p.observe_run([rec("io", 0.2, 0.0, lane="io", pid=DRIVER)], driver_pid=DRIVER)
        io = p.get("io")
        assert io is not None and io.wall_s == pytest.approx(0.2) and io.cpu_ratio is None

    def test_bytes_only_from_calls_that_crossed_a_process(self) -> None:
        """Payload sizes come from cpu-lane calls; in-process calls (0 bytes) keep them."""
        p = Profile()
        p.observe_run([rec("a", 0.1, 0.1, lane="thread", pid=DRIVER)], driver_pid=DRIVER)
        assert p.get("a").bytes_in is None  # type: ignore[union-attr]
        p.observe_run([rec("a", 0.1, 0.1, bytes_in=5000, bytes_out=100)], driver_pid=DRIVER)
        p.observe_run([rec("a", 0.1, 0.1, lane="thread", pid=DRIVER)], driver_pid=DRIVER)
        a = p.get("a")
        assert a is not None and a.bytes_in == 5000 and a.bytes_out == 100

    def test_failed_calls_count_but_move_no_numbers(self) -> None:
        """A failed call is counted as a failure; its timing is not evidence."""
        p = Profile()
        p.observe_run([rec("a", 0.1, 0.1), rec("a", 9.0, 0.0, ok=False)], driver_pid=DRIVER)
        a = p.get("a")
        assert a is not None and a.calls == 2 and a.failures == 1
        assert a.wall_s == pytest.approx(0.1)

    def test_low_ratio_while_sharing_the_gil_is_not_evidence(self) -> None:
        """Two overlapping in-process calls that look idle may be waiting for the GIL."""
        p = Profile()
        calls = [
            rec("a", 1.0, 0.3, lane="thread", pid=DRIVER, start=0.0),
            rec("b", 1.0, 0.9, lane="thread", pid=DRIVER, start=0.5),
        ]
        p.observe_run(calls, driver_pid=DRIVER)
        a, b = p.get("a"), p.get("b")
        assert a is not None and a.calls == 1 and a.cpu_ratio is None and a.wall_s is None
        assert b is not None and b.cpu_ratio == pytest.approx(0.9)  # high ratio is unambiguous

    def test_preempted_loop_time_is_not_counted_against_cpu_share(self) -> None:
        """A hog that got a third of a core: its CPU share is taken over the time it ran."""
        p = profiled(
            rec("h", 0.9, 0.0, lane="io", pid=DRIVER),
            blamed={"h": Blame(blocked_s=0.9, cpu_s=0.29, reports=1, queued_s=0.6)},
        )
        h = p.get("h")
        assert h is not None and h.blocked_cpu == pytest.approx(0.29 / 0.3)
        assert classify("h", async_node, None, p.policy()).lane == "cpu"

    def test_blame_becomes_blocked_evidence(self) -> None:
        """Watchdog blame is folded in per call, with its CPU share."""
        p = profiled(
            rec("h", 0.3, 0.0, lane="io", pid=DRIVER),
            blamed={"h": Blame(blocked_s=0.28, cpu_s=0.27, reports=1)},
        )
        h = p.get("h")
        assert h is not None and h.blocks == 1
        assert h.blocked_s == pytest.approx(0.28) and h.blocked_cpu == pytest.approx(0.27 / 0.28)


class TestBigRuns:
    def test_a_fan_out_of_thousands_folds_as_if_every_call_counted(self) -> None:
        """3,000 calls of one node (a few failed): counts are exact and the averages
        match folding every call one by one, to 1e-9 (only the newest calls are folded)."""
        calls = [
            rec("w", 0.001 * (1 + i % 7), 0.0009 * (1 + i % 7), bytes_in=10 + i, ok=i % 97 != 0)
            for i in range(3000)
        ]
        p = profiled(*calls)
        got = p.get("w")
        assert got is not None
        alpha, wall, ratio, b_in = p.alpha, None, None, None
        for c in calls:
            if not c.ok:
                continue
            wall = c.wall_s if wall is None else alpha * c.wall_s + (1 - alpha) * wall
            r = c.cpu_s / c.wall_s
            ratio = r if ratio is None else alpha * r + (1 - alpha) * ratio
            b_in = c.bytes_in if b_in is None else alpha * c.bytes_in + (1 - alpha) * b_in
        assert got.calls == 3000 and got.failures == sum(1 for c in calls if not c.ok)
        assert got.wall_s == pytest.approx(wall, rel=1e-9)
        assert got.cpu_ratio == pytest.approx(ratio, rel=1e-9)
        assert got.bytes_in == pytest.approx(b_in, rel=1e-9)


class TestPolicy:
    def test_cpu_bound_and_long_goes_to_cpu_with_numbers(self) -> None:
        """CPU/wall >= 0.5 and many dispatches long: the process pool, and the reason says so."""
        p = profiled(rec("a", 0.12, 0.118, bytes_in=12_000, bytes_out=500))
        d = classify("a", sync_node, None, p.policy())
        assert (d.lane, d.source) == ("cpu", "profile")
        assert "cpu/wall 0.98" in d.reason and "120 ms" in d.reason
        assert "x the measured dispatch cost" in d.reason and "payload" in d.reason

    def test_mostly_waiting_goes_to_thread(self) -> None:
        """A sync node that mostly waits runs on a thread."""
        p = profiled(rec("w", 0.25, 0.005))
        d = classify("w", sync_node, None, p.policy())
        assert d.lane == "thread" and "mostly waiting" in d.reason and "0.02" in d.reason

    def test_cheaper_than_a_dispatch_goes_inline(self) -> None:
        """A call shorter than one measured dispatch runs inline on the loop."""
        p = profiled(rec("t", 0.00005, 0.00005))
        d = classify("t", sync_node, None, p.policy())
        assert d.lane == "inline" and "under one dispatch" in d.reason

    def test_cpu_bound_but_short_goes_to_thread(self) -> None:
        """CPU-bound yet under 3 dispatches long: a worker costs more than it saves."""
        p = profiled(rec("s", 0.001, 0.001))
        d = classify("s", sync_node, None, p.policy())
        assert d.lane == "thread" and "costs more than it saves" in d.reason

    def test_inline_never_takes_long_calls_even_with_a_huge_dispatch(self) -> None:
        """A slow pool does not push a 10 ms call onto the loop."""
        p = profiled(rec("x", 0.010, 0.010))
        p.observe_dispatch(DispatchCost(0.5, 0.0, 3, 1, 0.0))
        assert classify("x", sync_node, None, p.policy()).lane == "thread"

    def test_without_evidence_the_policy_abstains(self) -> None:
        """An unmeasured node falls through to the default."""
        d = classify("new", sync_node, None, Profile().policy())
        assert (d.lane, d.source) == ("cpu", "default")

    def test_declared_lane_is_never_overridden(self) -> None:
        """lane= and decorators win over any measurement."""
        policy = profiled(rec("w", 0.25, 0.005)).policy()
        assert classify("w", sync_node, "cpu", policy).source == "declared"

        def marked(state: Any) -> None:
            return None

        assert classify("w", engine.cpu(marked), None, policy).lane == "cpu"

    def test_hysteresis_keeps_a_cpu_node_near_the_bar(self) -> None:
        """A node on cpu leaves it only below cpu_ratio - hysteresis."""
        p = profiled(rec("a", 0.2, 0.09))  # ratio 0.45
        assert classify("a", sync_node, None, p.policy()).lane == "thread"
        p.apply_decisions({"a": engine.LaneDecision("cpu", "before", "profile")})
        assert classify("a", sync_node, None, p.policy()).lane == "cpu"

    def test_async_def_caught_burning_cpu_moves_to_a_worker(self) -> None:
        """An async def the watchdog blamed for CPU work runs whole in a worker."""
        p = profiled(
            rec("h", 0.31, 0.0, lane="io", pid=DRIVER),
            blamed={"h": Blame(blocked_s=0.3, cpu_s=0.29, reports=1)},
        )
        d = classify("h", async_node, None, p.policy())
        assert (d.lane, d.source) == ("cpu", "profile")
        assert "blocked the event loop 300 ms" in d.reason and "worker" in d.reason

    def test_async_def_blocking_on_sleep_stays_on_the_loop(self) -> None:
        """Blocking without CPU (time.sleep in an async def) is not fixed by a worker."""
        p = profiled(
            rec("h", 0.31, 0.0, lane="io", pid=DRIVER),
            blamed={"h": Blame(blocked_s=0.3, cpu_s=0.001, reports=1)},
        )
        assert classify("h", async_node, None, p.policy()).lane == "io"

    def test_unpicklable_async_def_stays_on_the_loop(self) -> None:
        """An async def that cannot reach a worker stays io whatever the evidence."""
        lock = threading.Lock()

        async def holds_lock(state: Any) -> None:
            with lock:
                return None

        p = profiled(
            rec("h", 0.31, 0.0, lane="io", pid=DRIVER),
            blamed={"h": Blame(blocked_s=0.3, cpu_s=0.3, reports=1)},
        )
        assert classify("h", holds_lock, None, p.policy()).lane == "io"

    def test_policy_is_a_frozen_snapshot(self) -> None:
        """What the profile learns after policy() cannot change that policy's decisions."""
        p = profiled(rec("a", 0.2, 0.2))
        policy = p.policy()
        p.observe_run([rec("a", 0.2, 0.0)] * 20, driver_pid=DRIVER)
        assert classify("a", sync_node, None, policy).lane == "cpu"
        assert classify("a", sync_node, None, p.policy()).lane == "thread"

    def test_thresholds_are_validated(self) -> None:
        """Nonsense thresholds fail at construction with the bound in the message."""
        with pytest.raises(ValueError, match="cpu_ratio"):
            Thresholds(cpu_ratio=0)
        with pytest.raises(ValueError, match="hysteresis"):
            Thresholds(hysteresis=0.6)


class TestChanges:
    def test_lane_change_is_logged_and_returned(self) -> None:
        """apply_decisions reports lanes that moved, each as a structlog event."""
        p = Profile()
        first = {"a": engine.LaneDecision("cpu", "default", "default")}
        with capture_logs() as logs:
            assert p.apply_decisions(first) == ()
            changes = p.apply_decisions({"a": engine.LaneDecision("thread", "waits", "profile")})
        assert changes == (LaneChange("a", "cpu", "thread", "waits"),)
        events = [e for e in logs if e["event"] == "lane_changed"]
        assert len(events) == 1
        assert events[0]["node"] == "a" and events[0]["before"] == "cpu"
        assert events[0]["after"] == "thread" and events[0]["log_level"] == "info"

    def test_diff_shows_what_moved_in_the_last_run(self) -> None:
        """diff() describes each node's numbers before and after the latest run."""
        p = Profile(alpha=0.5)
        p.observe_run([rec("a", 0.1, 0.1)], driver_pid=DRIVER)
        (first,) = p.diff()
        assert "first measured" in first.describe()
        p.observe_run([rec("a", 0.3, 0.3)], driver_pid=DRIVER)
        (delta,) = p.diff()
        assert delta.describe() == "a: +1 calls, wall 100 ms -> 200 ms"

    def test_diff_shows_only_the_nodes_the_last_run_changed(self) -> None:
        """A run of one node of a bigger graph moves that node only; a profile loaded from
        its dict, before any run, shows every node as first measured."""
        p = Profile(alpha=0.5)
        p.observe_run([rec("a", 0.1, 0.1), rec("b", 0.1, 0.1)], driver_pid=DRIVER)
        assert [d.node for d in p.diff()] == ["a", "b"]
        p.observe_run([rec("b", 0.3, 0.3)], driver_pid=DRIVER)
        assert [d.node for d in p.diff()] == ["b"]
        loaded = Profile.from_dict(p.to_dict())
        assert [(d.node, d.before) for d in loaded.diff()] == [("a", None), ("b", None)]

    def test_redecide_asks_only_undeclared_nodes(self) -> None:
        """Between runs, only auto nodes are decided again; declared ones keep their lane."""
        g = Graph(State)
        g.add_node("auto", sync_node)
        g.add_node("pinned", sync_node, lane="cpu")
        g.add_node("coro", async_node)
        g.add_edge(START, "auto")
        g.add_edge(START, "pinned")
        g.add_edge(START, "coro")
        plan = build_plan(g.freeze())
        p = profiled(rec("auto", 0.2, 0.001), rec("pinned", 0.2, 0.001))
        decisions = redecide(plan.nodes, p.policy())
        assert set(decisions) == {"auto", "coro"}
        assert decisions["auto"].lane == "thread" and decisions["coro"].lane == "io"
        assert plan.with_decisions(decisions).nodes["pinned"].lane == "cpu"


class TestPersistence:
    def test_round_trip_keeps_numbers_dispatch_and_decisions(self, tmp_path: Path) -> None:
        """save then load gives the same profile, so "since last run" spans processes."""
        p = profiled(rec("a", 0.1, 0.1, bytes_in=10, bytes_out=20))
        p.apply_decisions({"a": engine.LaneDecision("cpu", "why", "profile")})
        path = p.save(tmp_path / "sub" / "profile.json")
        q = Profile.load(path)
        assert q.to_dict() == p.to_dict()
        assert q.get("a") == p.get("a") and q.dispatch == DISPATCH
        assert q.decisions["a"].lane == "cpu"

    @pytest.mark.parametrize(
        ("text", "pattern"),
        [
            ("{not json", "not valid JSON"),
            ('{"nodes": {}}', "not an engine profile"),
            ('{"format": "engine.profile", "version": 99}', "format version 99"),
            (
                '{"format": "engine.profile", "version": 1, "nodes": {"a": {"node": "b"}}}',
                "damaged",
            ),
            (
                '{"format": "engine.profile", "version": 1, "decisions": '
                '{"a": {"lane": "gpu", "reason": "", "source": "profile"}}}',
                "unknown lane 'gpu'",
            ),
        ],
    )
    def test_bad_files_raise_profile_error(self, tmp_path: Path, text: str, pattern: str) -> None:
        """A file that is not a readable profile fails clearly, naming the problem."""
        path = tmp_path / "p.json"
        path.write_text(text)
        with pytest.raises(ProfileError, match=pattern):
            Profile.load(path)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is an error unless missing_ok, which gives an empty profile."""
        with pytest.raises(FileNotFoundError):
            Profile.load(tmp_path / "none.json")
        assert len(Profile.load(tmp_path / "none.json", missing_ok=True)) == 0

    def test_saved_file_is_plain_json(self, tmp_path: Path) -> None:
        """The file is readable JSON with the format marker and the node's numbers."""
        path = profiled(rec("a", 0.1, 0.1)).save(tmp_path / "p.json")
        data = json.loads(path.read_text())
        assert data["format"] == "engine.profile" and data["nodes"]["a"]["calls"] == 1


async def test_measure_dispatch_on_a_real_pool() -> None:
    """The dispatch cost is measured on the running pool: a small positive round trip."""
    cost = await measure_dispatch(default_executor(), samples=6, probe_bytes=4 << 20)
    assert 0 < cost.fixed_s < 0.1
    assert cost.per_byte_s > 0 and cost.cost(4 << 20) > cost.fixed_s
    assert cost.workers >= 1 and cost.samples >= 8


async def test_second_run_decides_from_the_first() -> None:
    """An undeclared graph runs on defaults, then on measured lanes from its second run."""

    g = Graph(State)
    g.add_node("crunch", functools.partial(_crunch, 0.15))
    g.add_node("wait", functools.partial(_wait, 0.15))
    g.add_node("tiny", _tiny)
    for name in ("crunch", "wait", "tiny"):
        g.add_edge(START, name)
    app = g.compile()
    assert {n.lane for n in app.plan.nodes.values()} == {"cpu"}  # first run: the default
    r = await app.arun({})
    profile = Profile()
    profile.observe_run(r.trace.calls, driver_pid=r.trace.driver_pid)
    profile.observe_dispatch(await measure_dispatch(default_executor(), samples=6))
    decisions = redecide(app.plan.nodes, profile.policy())
    lanes = {n: d.lane for n, d in decisions.items()}
    assert (lanes["crunch"], lanes["wait"]) == ("cpu", "thread")
    # One call of a few microseconds: on a shared machine a page fault or a
    # stall can stretch its wall time past a dispatch without using CPU, and
    # the policy then reads it as waiting. Either way it leaves the pool; the
    # inline rule itself is test_cheaper_than_a_dispatch_goes_inline.
    tiny = next(c for c in r.trace.calls if c.node == "tiny")
    dispatch = profile.dispatch
    assert dispatch is not None
    measured = profile.get("tiny")
    assert measured is not None
    bar = min(dispatch.cost(measured.payload_bytes or 0.0), 0.002)
    expected = "inline" if max(tiny.wall_s - tiny.queued_s, tiny.cpu_s) <= bar else "thread"
    assert lanes["tiny"] == expected, (tiny, dispatch)
    assert all(d.source == "profile" for d in decisions.values())
    second = app.plan.with_decisions(decisions)
    assert second.nodes["wait"].lane == "thread"


def _crunch(seconds: float, state: Any) -> None:
    burn(seconds)


def _wait(seconds: float, state: Any) -> None:
    time.sleep(seconds)


def _tiny(state: Any) -> None:
    return None


def test_node_profile_describe_lists_the_numbers() -> None:
    """describe() is the one-line summary explain() shows."""
    prof = NodeProfile(
        node="a", calls=3, wall_s=0.0123, cpu_ratio=0.97, bytes_in=2048.0, bytes_out=10.0
    )
    assert prof.describe() == "3 calls, 12.3 ms per call, cpu/wall 0.97, in 2.0 KB out 10 B"
    assert NodeProfile("b").describe() == "not measured yet"


def test_measured_policy_without_profile_entry_abstains() -> None:
    """A policy built by hand abstains for nodes it has no numbers for."""
    assert MeasuredPolicy(nodes={}, dispatch=None).decide("x", sync_node) is None

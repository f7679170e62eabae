"""The event-loop guard: lag measured during a run, and the blocking node named."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import cloudpickle
import pytest
from structlog.testing import capture_logs

from engine import END, START, Graph, LoopBlocked, NodeStarted, RunFinished
from engine.classify import classify
from engine.lanes.placement import place
from engine.lanes.threads import THREADS_PER_LOOP
from engine.loopguard import LoopGuard
from engine.marks import chrome_events, simple_pid_of
from engine.profile import Profile
from engine.resources import FakeClock
from engine.watchdog import LoopWatchdog
from tests.support import State, burn, thread_probe

# Worker processes cannot import the tests package: node functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


async def hog(seconds: float, state: Any) -> dict[str, Any]:
    """A naive async node: CPU work inline, never awaiting."""
    burn(seconds)
    return {}


async def sleepy_hog(seconds: float, state: Any) -> dict[str, Any]:
    """A naive async node that blocks the loop with a synchronous sleep."""
    time.sleep(seconds)
    return {}


def unregistered_sleep(seconds: float) -> None:
    """Blocking code on the loop that is no node (the driver's own work)."""
    time.sleep(seconds)


async def polite(seconds: float, state: Any) -> dict[str, Any]:
    await asyncio.sleep(seconds)
    return {}


async def node_fn(state: Any) -> None:
    return None


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def guard(clock: FakeClock) -> AsyncIterator[LoopGuard]:
    """A guard of the test's loop on the fake clock, with no sampler thread."""
    guard = LoopGuard(asyncio.get_running_loop(), clock=clock)
    yield guard
    await guard.aclose()


def hold_loop(guard: LoopGuard, clock: FakeClock, seconds: float) -> None:
    """Stand for code holding the loop ``seconds``: its clock moves on meanwhile."""
    clock.advance(seconds)
    guard.sample()


async def monitor_woke(guard: LoopGuard) -> None:
    """Let the loop turn until the guard's monitor has taken its next beat."""
    beat = guard._beat
    for _ in range(1000):
        await asyncio.sleep(0)
        if guard._beat is not beat:
            return
    raise AssertionError("the monitor never woke")


async def call_as_scheduler(wd: LoopWatchdog, node: str, fn: Any) -> Any:
    """What the scheduler does for a call on the loop: register it, then await it."""
    with wd.running(node, fn=fn):
        return await fn(None)


async def watch(*calls: tuple[str, Any], sampler: bool = True) -> tuple[LoopWatchdog, list[Any]]:
    events: list[Any] = []
    async with LoopWatchdog(emit=events.append, run_id="r1", sampler=sampler) as wd:
        await asyncio.sleep(0.03)  # let the monitor and the sampler settle
        await asyncio.gather(*(call_as_scheduler(wd, n, fn) for n, fn in calls))
        await asyncio.sleep(0.03)
    return wd, events


class TestDetection:
    async def test_cpu_burning_async_def_is_named(self) -> None:
        """An async def burning CPU for 300 ms is named in a LoopBlocked event and a warning."""
        with capture_logs() as logs:
            wd, events = await watch(
                ("hog", functools.partial(hog, 0.3)), ("polite", functools.partial(polite, 0.4))
            )
        blocked = [e for e in events if isinstance(e, LoopBlocked)]
        assert len(blocked) == 1
        assert blocked[0].nodes == ["hog"] and blocked[0].lag_s >= 0.25
        assert blocked[0].run_id == "r1"
        (report,) = wd.reports
        assert report.culprit == "task" and report.cpu_s >= 0.2
        assert "burn" in report.where or "hog" in report.where
        warnings = [e for e in logs if e["event"] == "loop_blocked"]
        assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
        assert warnings[0]["nodes"] == ["hog"] and "'hog'" in warnings[0]["hint"]
        assert "CPU work" in warnings[0]["hint"]

    async def test_culprit_named_even_after_it_returned(self) -> None:
        """The hog has left the registry when the loop wakes; the sampler saw it anyway."""
        wd, _ = await watch(("hog", functools.partial(hog, 0.2)))
        assert wd.on_loop() == []
        assert [r.nodes for r in wd.reports] == [("hog",)]

    async def test_without_the_sampler_only_the_window_is_known(self) -> None:
        """Loop-side measurement alone can only list every node on the loop in the window."""
        wd, _ = await watch(
            ("hog", functools.partial(hog, 0.3)),
            ("polite", functools.partial(polite, 0.4)),
            sampler=False,
        )
        (report,) = wd.reports
        assert report.culprit == "on_loop" and report.nodes == ("hog", "polite")
        assert wd.blamed() == {}  # imprecise reports are not evidence against anyone

    async def test_blocking_sleep_is_reported_as_a_wait(self) -> None:
        """A synchronous sleep blocks the loop with almost no CPU, and the report says so."""
        wd, _ = await watch(("sleeper", functools.partial(sleepy_hog, 0.2)))
        (report,) = wd.reports
        assert report.nodes == ("sleeper",) and report.cpu_s < 0.25 * report.lag_s
        assert "a blocking wait" in report.message()

    async def test_short_blocks_are_not_reported(self, clock: FakeClock, guard: LoopGuard) -> None:
        """Blocks under the threshold (20 ms each, threshold 50 ms) leave no report, no mark,
        though the monitor measured each (on the guard's clock: no real time needed)."""
        events: list[Any] = []
        async with LoopWatchdog(emit=events.append, sampler=False, guard=guard) as wd:
            for i in range(3):
                with wd.running(f"n{i}", fn=node_fn):
                    hold_loop(guard, clock, 0.02)
                await monitor_woke(guard)
            wd.flush()
        assert wd.reports == [] and events == [] and wd.marks() == []

    async def test_short_blocks_in_one_loop_iteration_add_up(self) -> None:
        """Three 20 ms hogs started together run back to back: one 60 ms block."""
        wd, _ = await watch(*((f"n{i}", functools.partial(hog, 0.02)) for i in range(3)))
        (report,) = wd.reports
        assert report.lag_s >= 0.05 and 1 <= len(report.nodes) <= 3
        assert set(report.nodes) <= {"n0", "n1", "n2"}

    async def test_one_block_is_split_between_its_parts(self) -> None:
        """A node burning 200 ms, then other code sleeping 200 ms: one block, two shares."""
        async with LoopWatchdog() as wd:
            await asyncio.sleep(0.03)
            # burn() counts CPU time: on a busy host its wall time is longer, so
            # each share is compared with the wall time its part really took.
            t0 = time.perf_counter()
            with wd.running("hog", fn=burn):
                burn(0.2)
            t1 = time.perf_counter()
            unregistered_sleep(0.2)  # e.g. a process pool starting workers on the loop
            t2 = time.perf_counter()
            await asyncio.sleep(0.03)
        (report,) = wd.reports
        by = {sh.node: sh for sh in report.shares}
        assert set(by) == {"hog", None} and report.nodes == ("hog",)
        assert by["hog"].blocked_s == pytest.approx(t1 - t0, abs=0.07)
        assert by[None].blocked_s == pytest.approx(t2 - t1, abs=0.07)
        if by["hog"].cpu_s is not None:  # the loop thread's CPU clock is readable (Linux)
            assert by["hog"].cpu_s >= 0.1 and by[None].cpu_s is not None
            # a sleep uses little CPU; the sampler's edges may lend it a little of the hog's
            assert by[None].cpu_s < 0.25 * by[None].blocked_s
            assert "'hog' " in report.message() and "CPU work" in report.message()
            assert "a blocking wait, at unregistered_sleep" in report.message()
        blame = wd.blamed()
        assert set(blame) == {"hog"} and blame["hog"].blocked_s == pytest.approx(t1 - t0, abs=0.07)

    async def test_threshold_is_configurable(self, clock: FakeClock, guard: LoopGuard) -> None:
        """A lower threshold catches shorter blocks: 40 ms held, a 10 ms threshold reports it."""
        events: list[Any] = []
        wd = LoopWatchdog(
            threshold_s=0.01, interval_s=0.005, emit=events.append, sampler=False, guard=guard
        )
        async with wd:
            with wd.running("n", fn=node_fn):
                hold_loop(guard, clock, 0.04)
            await monitor_woke(guard)
        assert [e.nodes for e in events] == [["n"]]
        assert events[0].time == pytest.approx(clock.time())  # the guard's clock, not the wall


class TestEvidence:
    async def test_chrome_counter_track(self) -> None:
        """The lag becomes a counter track: a plateau at the lag, back to zero after."""
        wd, _ = await watch(("hog", functools.partial(hog, 0.2)))
        (report,) = wd.reports
        marks = wd.marks()
        assert all(m.pid == os.getpid() for m in marks)  # the driver's track
        events = chrome_events(marks, t0=report.start - 1.0, pid_of=simple_pid_of())
        counters = [e for e in events if e["ph"] == "C"]
        values = [e["args"]["lag_ms"] for e in counters]
        assert values[0] == 0.0 and values[-1] == 0.0 and max(values) >= 150
        assert all(e["name"] == "loop lag (ms)" for e in counters)
        assert counters == sorted(counters, key=lambda e: e["ts"])
        instants = [e for e in events if e["ph"] == "i"]
        assert instants[0]["args"]["nodes"] == ["hog"]
        json.dumps(events)  # serializable as Chrome trace JSON

    async def test_blame_moves_an_auto_async_node_to_a_worker(self) -> None:
        """Next run, the auto async def caught burning CPU is decided cpu, with the numbers."""
        wd, _ = await watch(("hog", functools.partial(hog, 0.3)))
        blame = wd.blamed()
        assert set(blame) == {"hog"} and blame["hog"].cpu_s >= 0.2
        from engine import NodeCall

        now = time.time()
        call = NodeCall("hog", 0, "io", 1, os.getpid(), 1, "h", now - 0.31, now, 0.0)
        profile = Profile()
        profile.observe_run([call], blamed=blame)
        decision = classify("hog", functools.partial(hog, 0.3), None, profile.policy())
        assert decision.lane == "cpu" and "blocked the event loop" in decision.reason


class TestLifecycle:
    async def test_start_twice_is_a_clear_error(self) -> None:
        """A watchdog watches one run; reusing it says so, showing its state."""
        wd = LoopWatchdog()
        async with wd:
            with pytest.raises(RuntimeError, match="already started"):
                wd.start()
        with pytest.raises(RuntimeError, match="closed"):
            wd.start()
        await wd.aclose()  # idempotent
        assert "closed" in repr(wd)

    async def test_registry_tracks_calls_on_the_loop(self) -> None:
        """running() registers a call for exactly its duration, even when it raises."""
        async with LoopWatchdog() as wd:
            with wd.running("a"), wd.running("b"):
                assert wd.on_loop() == ["a", "b"]
            with pytest.raises(ValueError), wd.running("c"):
                raise ValueError("boom")
            assert wd.on_loop() == []

    async def test_unhashable_callable_node_is_still_recognised(self) -> None:
        """A node that is a callable object without __hash__ is registered and named."""

        class Scorer:
            __hash__ = None  # type: ignore[assignment]  # e.g. a dataclass with eq=True

            def __call__(self, seconds: float) -> int:
                return burn(seconds)

        scorer = Scorer()
        async with LoopWatchdog() as wd:
            await asyncio.sleep(0.03)
            with wd.running("scorer", fn=scorer):
                scorer(0.2)
            await asyncio.sleep(0.03)
        (report,) = wd.reports
        assert report.nodes == ("scorer",) and set(wd.blamed()) == {"scorer"}

    async def test_outer_cancellation_propagates_through_aclose(self) -> None:
        """Cancelling the task that closes the watchdog is not swallowed."""
        started = asyncio.Event()

        async def body() -> None:
            async with LoopWatchdog():
                started.set()
                await asyncio.sleep(10)

        task = asyncio.create_task(body())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    def test_interval_must_sample_twice_per_threshold(self) -> None:
        """A sampling interval too coarse for the threshold is refused with the fix."""
        with pytest.raises(ValueError, match="at least twice"):
            LoopWatchdog(threshold_s=0.05, interval_s=0.04)


class TestLastStep:
    @pytest.mark.parametrize("first", [False, True], ids=["only node", "after another step"])
    async def test_block_in_the_last_step_is_reported_then_moved(self, first: bool) -> None:
        """An auto async def burning 300 ms as the run's last node: LoopBlocked before
        RunFinished, a warning, a trace mark; the next run sends it to a worker's loop."""
        g = Graph(State)
        g.add_node("hog", functools.partial(hog, 0.3))
        if first:
            g.add_node("first", functools.partial(polite, 0.01))
            g.add_edge(START, "first")
            g.add_edge("first", "hog")
        else:
            g.add_edge(START, "hog")
        g.add_edge("hog", END)
        app = g.compile()
        events: list[Any] = []
        with capture_logs() as logs:
            r = await app.arun({}, on_event=events.append)
        kinds = [type(e) for e in events]
        blocked = [i for i, e in enumerate(events) if isinstance(e, LoopBlocked)]
        assert [events[i].nodes for i in blocked] == [["hog"]]
        assert blocked[0] < kinds.index(RunFinished) and events[blocked[0]].lag_s >= 0.25
        warnings = [e for e in logs if e["event"] == "loop_blocked"]
        assert [(w["log_level"], w["nodes"]) for w in warnings] == [("warning", ["hog"])]
        (instant,) = [m for m in r.trace.marks if m.name == "loop blocked"]
        assert instant.args["nodes"] == ["hog"] and instant.args["culprit"] == "task"
        # The profile learned from it: the next run runs it whole on a worker's loop.
        events.clear()
        await app.arun({}, on_event=events.append)
        lanes = {e.node: e.lane for e in events if isinstance(e, NodeStarted)}
        assert lanes["hog"] == "cpu"
        assert not [e for e in events if isinstance(e, LoopBlocked)]
        assert "blocked the event loop" in {row.node: row for row in app.explain()}["hog"].reason


class Knob(State):
    burn_s: float = 0.0


async def maybe_hog(state: Knob) -> dict[str, Any]:
    """Awaits, then burns what the run's input says: the same node blocks in one run only."""
    await asyncio.sleep(0.02)
    burn(state.burn_s)
    return {}


def io_chain(*, thread_node: bool) -> Graph:
    g = Graph(Knob)
    g.add_node("a", functools.partial(polite, 0.01), lane="io")
    g.add_node("b", maybe_hog, lane="io")
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    if thread_node:
        g.add_node("c", functools.partial(thread_probe, "c"), lane="thread")
        g.add_edge("b", "c")
    return g


class TestConcurrentRuns:
    async def test_200_concurrent_runs_start_a_few_threads(self) -> None:
        """200 concurrent runs on one loop share one sampler and one thread pool: the
        driver's thread count grows by at most the pool's size and a few, not by hundreds."""
        app = io_chain(thread_node=True).compile()
        baseline = threading.active_count()
        peak = baseline
        done = asyncio.Event()

        async def count_threads() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, threading.active_count())
                await asyncio.sleep(0.002)

        counting = asyncio.create_task(count_threads())
        try:
            results = await asyncio.gather(*(app.arun({}) for _ in range(200)))
        finally:
            done.set()
            await counting
        assert all("c" in r.state.probes for r in results)
        # the pool, one sampler, and the loop's default executor closing the pool
        assert peak - baseline <= THREADS_PER_LOOP + 8, peak - baseline

    async def test_a_block_is_reported_to_the_run_that_caused_it(self) -> None:
        """Two concurrent runs of one app: node 'b' burns 300 ms in one of them only; that
        run's LoopBlocked names 'b', the other run hears nothing of 'b'."""
        app = io_chain(thread_node=False).compile()
        hot: list[Any] = []
        cold: list[Any] = []
        await asyncio.gather(
            app.arun({"burn_s": 0.3}, on_event=hot.append),
            app.arun({"burn_s": 0.0}, on_event=cold.append),
        )
        assert ["b"] in [e.nodes for e in hot if isinstance(e, LoopBlocked)]
        assert all("b" not in e.nodes for e in cold if isinstance(e, LoopBlocked)), cold


@pytest.mark.parametrize(
    ("lane", "mode", "coro", "expected"),
    [
        ("io", "parallel", True, True),
        ("inline", "parallel", False, True),
        ("cpu", "parallel", False, False),
        ("cpu", "parallel", True, False),
        ("thread", "concurrent", False, False),
        ("cpu", "concurrent", False, False),
        ("cpu", "sequential", False, True),
        ("thread", "sequential", False, True),
        ("cpu", "sequential", True, False),
    ],
)
def test_runs_on_loop(lane: str, mode: str, coro: bool, expected: bool) -> None:
    """Which calls execute on the loop's thread (and so can block it), per lane and mode."""
    assert place(lane, mode, is_coroutine=coro).on_loop is expected


async def test_async_def_on_the_cpu_lane_runs_on_a_worker_loop() -> None:
    """lane='cpu' on an async def runs it whole on an event loop inside a worker, in parallel."""
    g = Graph(State)
    for name in ("h1", "h2"):
        g.add_node(name, functools.partial(_hog_probe, name, 0.3), lane="cpu")
        g.add_edge(START, name)
    r = await g.compile().arun({}, mode="parallel")
    p1, p2 = r.state.probes["h1"], r.state.probes["h2"]
    assert os.getpid() not in (p1["pid"], p2["pid"]) and p1["pid"] != p2["pid"]
    assert p1["loop"] and p2["loop"]  # a running loop in the worker
    assert min(p1["end"], p2["end"]) > max(p1["start"], p2["start"])  # they overlapped
    assert {c.lane for c in r.trace.calls} == {"cpu"}


async def _hog_probe(name: str, seconds: float, state: Any) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    start = time.time()
    await asyncio.sleep(0)
    burn(seconds)
    return {
        "probes": {
            name: {"pid": os.getpid(), "loop": type(loop).__name__, "start": start,
                   "end": time.time()}
        }
    }  # fmt: skip


def test_culprit_named_on_uvloop() -> None:
    """The sampler names the culprit on uvloop, the loop run_sync uses, too."""
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        wd, events = runner.run(
            watch(("hog", functools.partial(hog, 0.2)), ("polite", functools.partial(polite, 0.3)))
        )
        assert "uvloop" in type(runner.get_loop()).__module__
    assert [e.nodes for e in events] == [["hog"]] and wd.reports[0].culprit == "task"

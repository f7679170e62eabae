"""One loop guard per event loop: shared by its runs, each run hearing of its own blocks.

Most tests drive a guard built with a ``FakeClock`` and no sampler thread:
the test advances the clock while a node is registered ("the node held the
loop 300 ms"), takes the sample the sampler thread would take meanwhile,
and then lets the run end or the monitor wake. Nothing sleeps to let
something happen.
"""

from __future__ import annotations

import asyncio
import builtins
import io
import os
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from engine.events import LoopBlocked
from engine.loopguard import GUARDS, LoopGuard
from engine.resources import FakeClock
from engine.watchdog import LoopWatchdog
from tests.support import burn

pytestmark = pytest.mark.timeout(60)


async def node_fn(state: Any) -> dict[str, Any]:
    return {}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def guard(clock: FakeClock) -> AsyncIterator[LoopGuard]:
    """A guard of the test's loop on the fake clock, with no sampler thread."""
    guard = LoopGuard(asyncio.get_running_loop(), clock=clock)
    yield guard
    await guard.aclose()


def run_watch(guard: LoopGuard, run_id: str, events: list[Any] | None = None) -> LoopWatchdog:
    sink = events.append if events is not None else None
    return LoopWatchdog(run_id=run_id, emit=sink, sampler=False, guard=guard)


def hold_loop(guard: LoopGuard, clock: FakeClock, seconds: float) -> None:
    """Stand for code holding the loop ``seconds``: time passes, the sampler looks once."""
    clock.advance(seconds)
    guard.sample()


async def until(condition: Any, turns: int = 1000) -> None:
    """Let the loop turn until ``condition()`` holds (the monitor runs on it)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def within(seconds: float, condition: Any) -> None:
    """Wait (real time, at most ``seconds``) until ``condition()`` holds."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the condition did not hold within {seconds} s")
        await asyncio.sleep(0.005)


class TestRunEnd:
    async def test_a_block_the_monitor_never_measured_is_reported_at_the_end(
        self, clock: FakeClock, guard: LoopGuard
    ) -> None:
        """The run's last node holds the loop 300 ms and the run ends at once: the end
        reports it (event, report, blame) before the monitor could wake."""
        events: list[Any] = []
        async with run_watch(guard, "r1", events) as wd:
            with wd.running("hog", fn=node_fn):
                hold_loop(guard, clock, 0.3)
            assert events == []  # nothing could report it yet
            wd.flush()
            assert [type(e) for e in events] == [LoopBlocked]
            assert events[0].nodes == ["hog"] and events[0].run_id == "r1"
            (report,) = wd.reports
            assert report.culprit == "task" and report.lag_s == pytest.approx(0.29)
            assert set(wd.blamed()) == {"hog"}
            wd.flush()  # a second end reports nothing twice
            assert len(wd.reports) == 1

    async def test_the_monitor_does_not_report_a_flushed_block_again(
        self, clock: FakeClock, guard: LoopGuard
    ) -> None:
        """After the end reported the block, the monitor's late wake-up skips that run."""
        a, b = run_watch(guard, "a"), run_watch(guard, "b")
        async with a, b:
            with a.running("hog", fn=node_fn):
                hold_loop(guard, clock, 0.3)
            a.flush()
            await until(lambda: guard._episode is None)  # the monitor woke, reported
        assert len(a.reports) == 1 and b.reports == []  # pinned on a's node only

    async def test_a_blocks_cpu_counts_from_its_beat(
        self, clock: FakeClock, guard: LoopGuard
    ) -> None:
        """The node burns 50 ms of CPU, the sampler looks while the beat is not stale yet,
        the node burns 100 ms more and the sampler finds the beat stale: the block's CPU
        counts from the beat (the last reading of a free loop), not from that look."""
        async with run_watch(guard, "r1") as wd:
            with wd.running("hog", fn=node_fn):
                burn(0.05)
                hold_loop(guard, clock, 0.02)  # not stale yet: nothing to note
                burn(0.1)
                hold_loop(guard, clock, 0.28)
            wd.flush()
        (report,) = wd.reports
        (share,) = report.shares
        assert share.node == "hog" and share.cpu_s is not None and share.cpu_s >= 0.14

    async def test_a_calm_end_reports_nothing(self, clock: FakeClock, guard: LoopGuard) -> None:
        """A run ending on a loop that was never held past the threshold reports nothing."""
        async with run_watch(guard, "r1") as wd:
            with wd.running("quick", fn=node_fn):
                hold_loop(guard, clock, 0.03)  # under 50 ms
            wd.flush()
        assert wd.reports == [] and wd.marks() == []


class TestAttribution:
    async def test_each_run_hears_of_its_own_node_only(
        self, clock: FakeClock, guard: LoopGuard
    ) -> None:
        """Run a's node holds the loop while run b's waits: a is told, b is not."""
        ev_a: list[Any] = []
        ev_b: list[Any] = []
        a, b = run_watch(guard, "a", ev_a), run_watch(guard, "b", ev_b)
        go_on = asyncio.Event()

        async def b_awaits() -> None:
            with b.running("polite", fn=node_fn):
                await go_on.wait()

        async with a, b:
            waiting = asyncio.create_task(b_awaits())
            await until(lambda: b.on_loop() == ["polite"])
            with a.running("hog", fn=node_fn):
                hold_loop(guard, clock, 0.2)
            await until(lambda: bool(a.reports))  # the monitor wakes late
            go_on.set()
            await waiting
        assert [e.nodes for e in ev_a] == [["hog"]] and ev_b == []
        assert a.reports[0].culprit == "task"

    async def test_one_block_shared_by_two_runs_is_split_between_them(
        self, clock: FakeClock, guard: LoopGuard
    ) -> None:
        """The same node of two runs holds the loop 200 ms each, back to back: each run
        gets a report naming its own call with its own 200 ms, not 400."""
        a, b = run_watch(guard, "a"), run_watch(guard, "b")
        async with a, b:
            with a.running("n", fn=node_fn):
                hold_loop(guard, clock, 0.2)
            with b.running("n", fn=node_fn):
                hold_loop(guard, clock, 0.2)
            a.flush()
            b.flush()
        for wd in (a, b):
            (report,) = wd.reports
            assert report.nodes == ("n",) and report.lag_s == pytest.approx(0.39)
            (share,) = report.shares
            assert share.blocked_s == pytest.approx(0.195)  # 0.2 of 0.4 sampled, scaled
            assert wd.blamed()["n"].blocked_s == pytest.approx(0.195)

    async def test_a_block_by_no_node_goes_to_every_run_attached(
        self, clock: FakeClock, guard: LoopGuard
    ) -> None:
        """Other code holds the loop: each run attached hears of it, naming its own calls
        on the loop in the window (or none); nobody is blamed."""
        a, b = run_watch(guard, "a"), run_watch(guard, "b")
        async with a, b:
            with a.running("waiting", fn=node_fn):
                await asyncio.sleep(0)
            hold_loop(guard, clock, 0.2)  # no node registered
            await until(lambda: bool(a.reports and b.reports))
        assert a.reports[0].culprit == "on_loop" and a.reports[0].nodes == ("waiting",)
        assert b.reports[0].culprit == "none" and b.reports[0].nodes == ()
        assert a.blamed() == {} and b.blamed() == {}

    async def test_each_run_keeps_its_own_threshold(
        self, clock: FakeClock, guard: LoopGuard
    ) -> None:
        """A 150 ms block: the run with a 50 ms threshold hears of it, the one with 300 ms not."""
        low = LoopWatchdog(run_id="low", sampler=False, guard=guard)
        high = LoopWatchdog(
            run_id="high", threshold_s=0.3, interval_s=0.01, sampler=False, guard=guard
        )
        async with low, high:
            hold_loop(guard, clock, 0.15)
            await until(lambda: bool(low.reports))  # both are judged in that one wake-up
        assert len(low.reports) == 1 and high.reports == []


class TestSharing:
    async def test_runs_on_one_loop_share_one_monitor_and_one_sampler(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """50 runs on one loop: one guard, one sampler thread, one monitor task. The last
        run to end leaves it lingering; a run that starts meanwhile takes it over, and
        once it has lingered unused it closes, and the next run starts a fresh guard."""
        monkeypatch.setattr(GUARDS, "linger_s", 0.05)
        loop = asyncio.get_running_loop()
        assert GUARDS.peek(loop) is None
        # Samplers of earlier tests' loops leave at their next look (at most 4 intervals).
        before = {t for t in threading.enumerate() if t.name == "engine-loop-sampler"}
        runs = [LoopWatchdog(run_id=f"r{i}") for i in range(50)]
        for wd in runs:
            wd.start()
        guard = GUARDS.peek(loop)
        assert guard is not None and guard.runs == 50
        samplers = [
            t for t in threading.enumerate() if t.name == "engine-loop-sampler" and t not in before
        ]
        monitors = [t for t in asyncio.all_tasks() if t.get_name() == "engine-loop-guard"]
        assert len(samplers) == 1 and len(monitors) == 1
        for wd in runs[:-1]:
            await wd.aclose()
        assert GUARDS.peek(loop) is guard and guard.runs == 1
        await runs[-1].aclose()
        assert GUARDS.peek(loop) is guard and guard.runs == 0  # lingering, still open
        async with LoopWatchdog():
            assert GUARDS.peek(loop) is guard and guard.runs == 1  # taken over
        await within(5.0, lambda: GUARDS.peek(loop) is None)
        await within(5.0, lambda: monitors[0].done() and not samplers[0].is_alive())
        assert "closed" in repr(guard)
        async with LoopWatchdog() as wd:
            fresh = GUARDS.peek(loop)
            assert fresh is not None and fresh is not guard and wd.on_loop() == []

    async def test_runs_on_one_loop_are_each_told_of_a_real_block(self) -> None:
        """Real time, real sampler: two runs share the guard; the one whose node burns
        200 ms is told, naming it; the other, whose node awaits meanwhile, is not."""
        ev_a: list[Any] = []
        ev_b: list[Any] = []

        async def hog(state: Any) -> None:
            burn(0.2)

        async def polite(state: Any) -> None:
            await asyncio.sleep(0.3)

        async def call(wd: LoopWatchdog, node: str, fn: Any) -> None:
            with wd.running(node, fn=fn):
                await fn(None)

        a = LoopWatchdog(run_id="a", emit=ev_a.append)
        b = LoopWatchdog(run_id="b", emit=ev_b.append)
        async with a, b:
            await asyncio.sleep(0.03)  # the monitor and the sampler settle
            await asyncio.gather(call(a, "hog", hog), call(b, "polite", polite))
        assert ["hog"] in [e.nodes for e in ev_a]
        assert all("polite" not in e.nodes for e in ev_b)
        assert {r.culprit for r in a.reports if "hog" in r.nodes} == {"task"}

    async def test_a_calm_loops_sampler_wakes_when_a_beat_could_turn_stale(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Real time, real sampler: while the loop is calm the sampler looks when the
        current beat would turn stale, not every interval (each wake-up of a thread
        costs CPU), and a block is still caught and named."""
        looks: list[float] = []
        real_sample = LoopGuard.sample

        def counted(guard: LoopGuard) -> float:
            looks.append(guard.clock.monotonic())
            return real_sample(guard)

        monkeypatch.setattr(LoopGuard, "sample", counted)
        events: list[Any] = []

        async def hog(state: Any) -> None:
            burn(0.25)

        wd = LoopWatchdog(run_id="calm", threshold_s=0.1, interval_s=0.01, emit=events.append)
        async with wd:
            await asyncio.sleep(0.6)  # calm: beats every 10 ms
            calm = len(looks)
            with wd.running("hog", fn=hog):
                await hog(None)
            wd.flush()  # what the recorder does as a run ends
        # Every 10 ms would be ~60 looks; a beat turns stale 60 ms after it (at most
        # 4 intervals between looks): ~15.
        assert 3 <= calm <= 30, calm
        assert ["hog"] in [e.nodes for e in events]

    def test_the_guard_of_a_closed_loop_is_dropped(self) -> None:
        """A loop closed while a run was still attached: the sampler sees it and leaves,
        and the registry forgets the guard."""
        loop = asyncio.new_event_loop()
        wd = LoopWatchdog()

        async def start() -> LoopGuard | None:
            wd.start()
            return GUARDS.peek(asyncio.get_running_loop())

        try:
            guard = loop.run_until_complete(start())
            assert guard is not None
            sampler = guard._thread
            assert sampler is not None and sampler.is_alive()
            fd = guard._loop_schedstat
            # What asyncio.run does on its way out: cancel what is left, then close.
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        finally:
            loop.close()
        sampler.join(10)
        assert not sampler.is_alive() and GUARDS.peek(loop) is None
        if fd is not None:  # the loop's schedstat file, closed with the guard
            assert not names_schedstat(fd)


def run_queue_wait(path: str) -> float:
    """Seconds a thread has waited on a run queue, from its schedstat ``path`` (opened by
    ``io.open``: a test may count the opens through ``builtins.open``)."""
    with io.open(path, "rb") as f:  # noqa: UP020
        return int(f.read().split()[1]) / 1e9


def names_schedstat(fd: int) -> bool:
    """Whether ``fd`` is open on a schedstat file (False: closed, or reused for another)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}").endswith("/schedstat")
    except OSError:
        return False


@pytest.mark.skipif(
    not os.path.exists("/proc/thread-self/schedstat"), reason="run-queue readings are Linux's"
)
class TestReadings:
    async def test_beats_read_the_loops_run_queue_wait_from_a_file_opened_once(
        self, clock: FakeClock, guard: LoopGuard, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The guard opens the loop thread's schedstat as it starts; its beats read it
        without opening it again (an open costs ~10 us, a read ~1), and aclose closes it."""
        opened: list[str] = []
        real_open, real_os_open = builtins.open, os.open

        def counted_open(file: Any, *args: Any, **kwargs: Any) -> Any:
            opened.append(str(file))
            return real_open(file, *args, **kwargs)

        def counted_os_open(path: Any, *args: Any, **kwargs: Any) -> int:
            opened.append(str(path))
            return real_os_open(path, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", counted_open)
        monkeypatch.setattr(os, "open", counted_os_open)
        path = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        async with run_watch(guard, "r1"):
            for _ in range(5):
                beat = guard._beat
                clock.advance(0.05)
                await until(lambda beat=beat: guard._beat is not beat)  # the monitor beat
            # What it reads is the file's (the loop thread's run-queue wait, in ns).
            before = run_queue_wait(path)
            read = guard._loop_queued()
            assert before <= read <= run_queue_wait(path)
            fd = guard._loop_schedstat
            assert fd is not None and names_schedstat(fd)
        assert [p for p in opened if p.startswith("/proc/self/task/")] == [path]
        await guard.aclose()
        assert not names_schedstat(fd)


class TestAnnouncing:
    async def test_a_block_of_no_node_told_to_many_runs_is_one_warning(
        self, clock: FakeClock, guard: LoopGuard
    ) -> None:
        """The loop busy computing in no node's code, three runs attached: each gets its
        event and report, one of them warns (runs_told=3), the others log at debug."""
        runs = [run_watch(guard, f"r{i}") for i in range(3)]
        try:
            for wd in runs:
                wd.start()
            with capture_logs() as logs:
                burn(0.08)  # real CPU on the loop thread: the report's cpu_s
                hold_loop(guard, clock, 0.1)
                await until(lambda: all(wd.reports for wd in runs))
            lines = [e for e in logs if e["event"] == "loop_blocked"]
            assert len(lines) == 3 and {e["runs_told"] for e in lines} == {3}
            assert [e["log_level"] for e in lines].count("warning") == 1
            assert all(wd.reports[0].culprit == "none" for wd in runs)
        finally:
            for wd in runs:
                await wd.aclose()

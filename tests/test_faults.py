"""The cpu lane under real faults: crashes, bad payloads, timeouts, cancellation.

Every fault is caused for real (a segfault, ``os._exit``, a SIGKILL from
outside, objects that fail in ``__reduce__``), in a step with an innocent
sibling, after the model of loky's crash matrix. After each case the
sibling has finished on its first attempt and the pool runs a normal graph.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cloudpickle
import loky
import pytest
from structlog.testing import capture_logs

import tests.crashers as crashers
from engine import (
    START,
    Graph,
    InvalidUpdateError,
    NodeError,
    NodeTimeoutError,
    RetryPolicy,
    Send,
    WorkerCrashedError,
)
from engine.checkpoint import MemoryCheckpointer
from engine.errors import node_error_of
from engine.events import NodeFailed, NodeFinished
from engine.lanes import describe_exit, is_worker_crash
from engine.lanes.pool import default_executor, default_workers, warm
from engine.lanes.process import pid_alive
from tests.crashers import FaultState, lines

cloudpickle.register_pickle_by_value(crashers)

pytestmark = pytest.mark.timeout(60)

SIBLING_S = 0.6


# -- helpers -----------------------------------------------------------------


async def wait_for_pid(path: Path, timeout: float = 20.0) -> int:
    """The pid a node published in ``path`` (waits for it)."""
    async with asyncio.timeout(timeout):
        while not path.exists():
            await asyncio.sleep(0.01)
    return int(path.read_text())


async def wait_gone(pid: int, timeout: float = 2.0) -> float:
    """Seconds until process ``pid`` is gone; fails after ``timeout``."""
    t0 = time.monotonic()
    while pid_alive(pid):
        assert time.monotonic() - t0 < timeout, f"worker {pid} still alive after {timeout} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


def with_sibling(
    fn: Callable[..., Any], payload: Any, side: Path, sibling_s: float = SIBLING_S
) -> Graph:
    """Step 0 runs ``crash`` (fed ``payload`` by a Send) beside an innocent cpu sibling."""
    g = Graph(FaultState)
    g.add_node("crash", fn, lane="cpu")
    g.add_node("sib", functools.partial(crashers.sibling, str(side), "sib", sibling_s), lane="cpu")

    def route(state: FaultState) -> list[Any]:
        return [Send("crash", payload), "sib"]

    g.add_conditional_edges(START, route)
    return g


async def normal_run_works() -> None:
    """The pool (replaced or not) runs two cpu nodes in parallel workers, and no marker
    of a call of a broken pool is left behind in the driver's marker directory."""
    g = Graph(FaultState)
    for name in ("n1", "n2"):
        g.add_node(name, functools.partial(crashers.sibling, os.devnull, name, 0.05), lane="cpu")
        g.add_edge(START, name)
    result = await g.compile().arun({})
    assert sorted(result.state.items) == ["n1", "n2"]
    assert all(c.ok and c.pid != os.getpid() for c in result.trace.calls)
    from engine.lanes.process import marker_base

    left = [p for d in Path(marker_base()).glob(f"engine-cpu-{os.getpid()}-*") for p in d.iterdir()]
    assert left == []


def sibling_events_ok(events: list[Any]) -> None:
    """The sibling finished on attempt 1 and never failed: no retry was charged to it."""
    finished = [e for e in events if isinstance(e, NodeFinished) and e.node == "sib"]
    failed = [e for e in events if isinstance(e, NodeFailed) and e.node == "sib"]
    assert [e.attempt for e in finished] == [1] and failed == []


# -- the crash matrix ------------------------------------------------------------

DRIVER = os.getpid()

# (id, node function, Send payload, expected error, message pattern, breaks the pool)
MATRIX = [
    ("segfault", crashers.segfault, None, WorkerCrashedError, r"SIGSEGV", True),
    ("os._exit", crashers.hard_exit, None, WorkerCrashedError, r"exited with code 3", True),
    ("sys.exit", crashers.sys_exit, None, NodeError, r"raised SystemExit: 4", False),
    (
        "argument pickling raises (driver)",
        crashers.touch_payload,
        crashers.FailsToPickle(),
        NodeError,
        r"its input \(type FailsToPickle\) cannot be pickled",
        False,
    ),
    (
        "argument unpickling raises (worker)",
        crashers.touch_payload,
        crashers.FailsToUnpickle(),
        NodeError,
        r"could not unpickle its input: refuses to be unpickled",
        False,
    ),
    (
        "argument unpickling kills the worker",
        crashers.touch_payload,
        crashers.CrashesOnUnpickle(),
        WorkerCrashedError,
        r"exited with code 5",
        True,
    ),
    (
        "result pickling raises (worker)",
        crashers.return_fails_to_pickle,
        None,
        NodeError,
        r"field 'items' \(type list\) cannot be pickled to return from the worker",
        False,
    ),
    (
        "result pickling kills the worker",
        crashers.return_crashes_on_pickle,
        None,
        WorkerCrashedError,
        r"exited with code 6",
        True,
    ),
    (
        "result unpickling raises (driver)",
        functools.partial(crashers.return_unpicklable_in_driver, DRIVER),
        None,
        NodeError,
        r"field 'items' \(type list\) came back from the worker but cannot be unpickled",
        False,
    ),
    (
        "result is not a dict",
        crashers.not_a_dict,
        None,
        InvalidUpdateError,
        r"'crash' \(step 0\) returned list",
        False,
    ),
]


class TestCrashMatrix:
    @pytest.mark.parametrize(
        ("fn", "payload", "expected", "pattern", "breaks"),
        [pytest.param(*case[1:], id=case[0]) for case in MATRIX],
    )
    async def test_fault_fails_only_its_node_and_the_pool_recovers(
        self,
        tmp_path: Path,
        fn: Callable[..., Any],
        payload: Any,
        expected: type[Exception],
        pattern: str,
        breaks: bool,
    ) -> None:
        """Each fault fails its own node with the right error; the sibling and the pool survive."""
        pool = default_executor()
        warm(pool)  # every worker up: the sibling runs while the fault happens
        first_workers = set(pool._processes)  # type: ignore[attr-defined]
        side = tmp_path / "side"
        events: list[Any] = []
        with capture_logs() as logs, pytest.raises(expected, match=pattern) as info:
            await with_sibling(fn, payload, side).compile().arun({}, on_event=events.append)
        err = info.value
        assert getattr(err, "node", None) == "crash" and getattr(err, "step", None) == 0
        assert isinstance(err, WorkerCrashedError) == (expected is WorkerCrashedError)
        assert lines(side) == ["sib"]  # ran to its end exactly once
        sibling_events_ok(events)
        # The crash cases broke (and replaced) the pool; the others left it as it was.
        assert (default_executor() is not pool) == breaks
        redispatched = {e["call"] for e in logs if e["event"] == "cpu_call_redispatched"}
        (finished,) = [e for e in events if isinstance(e, NodeFinished) and e.node == "sib"]
        if breaks:
            # The sibling was in the pool when it broke (its submission failed and went
            # again), and it finished on a worker of a replacement pool.
            assert redispatched == {"sib"}
            assert finished.pid not in first_workers
        else:
            assert redispatched == set() and finished.pid in first_workers
        await normal_run_works()

    async def test_sigkill_from_outside_names_the_signal_and_oom(self, tmp_path: Path) -> None:
        """Its worker SIGKILLed by another process on each of 3 runs: poison, SIGKILL, 'out of
        memory'; each kill replaced the warm pool and the sibling survived them all."""
        pool = default_executor()
        warm(pool)
        pid_file = tmp_path / "pid"
        side = tmp_path / "side"
        app = with_sibling(
            functools.partial(crashers.stall, str(pid_file)), None, side, sibling_s=0.2
        ).compile()
        events: list[Any] = []
        run = asyncio.create_task(app.arun({}, on_event=events.append))
        pools, killed = [], []
        for _ in range(3):  # the engine runs a crashed call again until its 3rd crash
            pid = await wait_for_pid(pid_file)
            pid_file.unlink()
            pools.append(default_executor())
            assert pid in pools[-1]._processes  # type: ignore[attr-defined]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        with pytest.raises(WorkerCrashedError, match="possibly out of memory") as info:
            await run
        err = info.value
        assert (err.exitcode, err.signal, err.pid) == (-signal.SIGKILL, "SIGKILL", killed[-1])
        assert "SIGKILL" in str(err) and err.node == "crash" and err.attempt == 3
        # The first kill broke the warm pool, and each kill the pool that replaced it.
        assert pools[0] is pool and len({id(p) for p in pools}) == 3
        assert default_executor() is not pools[-1]
        assert lines(side) == ["sib"]
        sibling_events_ok(events)
        await normal_run_works()

    async def test_crash_after_the_result_was_delivered_blames_nobody(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A worker dying idle after it returned: the run succeeds and no call is charged."""
        monkeypatch.setenv("ENGINE_CPU_WORKERS", "2")  # whatever the machine: 2 workers
        warm(default_executor())  # every worker up, so the sibling starts on another one
        side = tmp_path / "side"
        fn = functools.partial(crashers.exit_after_returning, 0.2)
        # The sibling still computes when the other worker dies, 0.5 s in (a call
        # whose result is on its way when a pool breaks is lost and run again).
        app = with_sibling(fn, None, side, sibling_s=1.2).compile()
        events: list[Any] = []
        with capture_logs() as logs:
            result = await app.arun({}, on_event=events.append)
        assert sorted(result.state.items) == ["delivered", "sib"]
        assert sorted((c.node, c.attempt, c.ok) for c in result.trace.calls) == [
            ("crash", 1, True),
            ("sib", 1, True),
        ]
        assert lines(side) == ["sib"]
        sibling_events_ok(events)
        # The sibling's worker was healthy when the other one died: it ran again, uncharged.
        assert [e["call"] for e in logs if e["event"] == "cpu_call_redispatched"] == ["sib"]
        await normal_run_works()


class TestCrashPolicy:
    async def test_crash_is_run_again_without_a_policy(self, tmp_path: Path) -> None:
        """A node without retry= whose worker is killed once: attempt 2 runs and succeeds."""
        flag, pid_file, side = tmp_path / "flag", tmp_path / "pid", tmp_path / "side"
        g = Graph(FaultState)
        g.add_node(
            "once",
            functools.partial(crashers.stall_once, str(flag), str(pid_file), str(side), "once"),
            lane="cpu",
        )
        g.add_edge(START, "once")
        events: list[Any] = []
        run = asyncio.create_task(g.compile().arun({}, on_event=events.append))
        killed = await wait_for_pid(pid_file)
        os.kill(killed, signal.SIGKILL)
        result = await run
        assert [(c.attempt, c.ok, c.error) for c in result.trace.for_node("once")] == [
            (1, False, "crash"),
            (2, True, None),
        ]
        assert result.trace.for_node("once")[1].pid != killed
        failed = [e for e in events if isinstance(e, NodeFailed)]
        assert [(e.attempt, e.will_retry) for e in failed] == [(1, True)]
        assert result.state.items == ["once"] and len(lines(side)) == 1

    async def test_crash_is_not_charged_to_the_retry_policy(self, tmp_path: Path) -> None:
        """Crash, then a ConnectionError, then success: a 2-attempt policy still gets its retry."""
        side, count = tmp_path / "side", tmp_path / "count"
        g = Graph(FaultState)
        g.add_node(
            "flaky",
            functools.partial(crashers.crash_then_fail, str(count), str(side), "flaky"),
            lane="cpu",
            retry=RetryPolicy(max_attempts=2, initial_interval=0.0, jitter=False),
        )
        g.add_edge(START, "flaky")
        result = await g.compile().arun({})
        assert [(c.attempt, c.ok, c.error) for c in result.trace.for_node("flaky")] == [
            (1, False, "crash"),
            (2, False, "ConnectionError"),
            (3, True, None),
        ]
        assert result.state.items == ["flaky"] and len(lines(side)) == 1

    @pytest.mark.parametrize("max_attempts", [None, 10])
    async def test_poison_fails_on_its_third_crash_whatever_its_policy(
        self, max_attempts: int | None
    ) -> None:
        """A node killing its worker every time fails as poison on crash 3, policy or not."""
        g = Graph(FaultState)
        policy = None
        if max_attempts is not None:
            policy = RetryPolicy(max_attempts=max_attempts, initial_interval=0.0, jitter=False)
        g.add_node("poison", crashers.kill_self, lane="cpu", retry=policy)
        g.add_edge(START, "poison")
        events: list[Any] = []
        with pytest.raises(WorkerCrashedError, match="SIGKILL, possibly out of memory") as info:
            await g.compile().arun({}, on_event=events.append)
        err = info.value
        assert err.attempt == 3 and (err.exitcode, err.signal) == (-signal.SIGKILL, "SIGKILL")
        assert any("poison" in note and "3 times" in note for note in err.__notes__)
        failed = [e for e in events if isinstance(e, NodeFailed)]
        assert [(e.attempt, e.will_retry) for e in failed] == [(1, True), (2, True), (3, False)]
        await normal_run_works()

    async def test_next_call_on_a_worker_dying_after_its_result_succeeds(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """1 worker: a returns, then its worker dies while b runs; b is blamed, run again, ok."""
        monkeypatch.setenv("ENGINE_CPU_WORKERS", "1")
        warm(default_executor())
        started, side = tmp_path / "started", tmp_path / "side"
        g = Graph(FaultState)
        g.add_node("a", functools.partial(crashers.exit_when_started, str(started)), lane="cpu")
        g.add_node(
            "b",
            functools.partial(crashers.start_then_burn, str(started), str(side), "b", 0.5),
            lane="cpu",
        )
        g.add_edge(START, "a")
        g.add_edge(START, "b")
        result = await g.compile().arun({})
        (a,) = result.trace.for_node("a")
        b1, b2 = result.trace.for_node("b")
        assert (a.attempt, a.ok) == (1, True)
        # b started on a's worker (the only one), which then died: b was blamed ...
        assert (b1.attempt, b1.ok, b1.error) == (1, False, "crash")
        assert a.pid in result.state.pids
        # ... and the engine ran it again on a fresh worker, without any RetryPolicy.
        assert (b2.attempt, b2.ok) == (2, True) and b2.pid != a.pid
        assert sorted(result.state.items) == ["b", "delivered"]
        assert [x.split()[0] for x in lines(side)] == ["b"]

    async def test_unpicklable_input_is_never_retried(self, tmp_path: Path) -> None:
        """A payload that cannot be pickled fails on attempt 1 even if retry_on says retry."""
        g = Graph(FaultState)
        always = RetryPolicy(max_attempts=3, initial_interval=0.0, retry_on=lambda exc: True)
        g.add_node("crash", crashers.touch_payload, lane="cpu", retry=always)
        g.add_conditional_edges(START, lambda s: [Send("crash", crashers.FailsToPickle())])
        with pytest.raises(NodeError, match="cannot be pickled") as info:
            await g.compile().arun({})
        assert info.value.attempt == 1 and info.value.error_type == "TypeError"

    def test_is_worker_crash_knows_dask_by_name(self) -> None:
        """A class named KilledWorker (Dask's) counts as a worker crash; a ValueError does not."""
        from concurrent.futures.process import BrokenProcessPool

        class KilledWorker(Exception):
            pass

        assert is_worker_crash(KilledWorker("x")) and is_worker_crash(BrokenProcessPool())
        assert not is_worker_crash(ValueError("x"))

    def test_exit_descriptions(self) -> None:
        """Exit codes read as words: signal names, the OOM hint for SIGKILL, plain codes."""
        assert "SIGKILL, possibly out of memory" in describe_exit(-9)
        assert "SIGSEGV" in describe_exit(-11)
        assert describe_exit(3) == "exited with code 3"
        assert describe_exit(None) == "exit status unknown"


class TestUserExecutor:
    @pytest.mark.parametrize("kind", ["stdlib", "loky"])
    async def test_broken_user_pool_is_replaced_and_the_sibling_survives(
        self, tmp_path: Path, kind: str
    ) -> None:
        """A user's process pool: crash blamed on its node, then later runs on it still work."""
        side = tmp_path / "side"
        made = ProcessPoolExecutor(2) if kind == "stdlib" else loky.ProcessPoolExecutor(2)
        with made as pool:
            events: list[Any] = []
            with pytest.raises(WorkerCrashedError, match="exited with code 3"):
                await (
                    with_sibling(crashers.hard_exit, None, side)
                    .compile()
                    .arun({}, executor=pool, on_event=events.append)
                )
            assert lines(side) == ["sib"]
            sibling_events_ok(events)
            g = Graph(FaultState)
            g.add_node("n", functools.partial(crashers.sibling, str(side), "n", 0.0), lane="cpu")
            g.add_edge(START, "n")
            result = await g.compile().arun({}, executor=pool)  # the user's pool is broken
            (call,) = result.trace.calls
            assert call.ok and call.pid not in pool._processes  # type: ignore[attr-defined]
        # The replacement the run made was shut down with the run: its worker is gone.
        await wait_gone(call.pid)

    async def test_timeout_kills_the_user_pool_worker(self, tmp_path: Path) -> None:
        """On a stdlib pool too, a timed-out cpu node's worker is killed."""
        pid_file = tmp_path / "pid"
        g = Graph(FaultState)
        g.add_node("st", functools.partial(crashers.stall, str(pid_file)), lane="cpu", timeout=0.3)
        g.add_edge(START, "st")
        with ProcessPoolExecutor(1) as pool:
            with pytest.raises(NodeTimeoutError):
                await g.compile().arun({}, executor=pool)
            await wait_gone(int(pid_file.read_text()))


# -- timeouts ----------------------------------------------------------------------


def slow_thread(arg: Any) -> dict[str, Any]:
    time.sleep(2.0)
    return {"items": ["late"]}


class TestTimeouts:
    @pytest.mark.parametrize("lane", ["io", "thread", "cpu"])
    async def test_timeout_per_lane(self, lane: str, tmp_path: Path) -> None:
        """A node past its timeout fails with NodeTimeoutError soon after the deadline, any lane."""
        pid_file = tmp_path / "pid"
        fn: Callable[..., Any] = {
            "io": functools.partial(crashers.io_sibling, os.devnull, "x", 5.0),
            "thread": slow_thread,
            "cpu": functools.partial(crashers.stall, str(pid_file)),
        }[lane]
        g = Graph(FaultState)
        g.add_node("slow", fn, lane=lane, timeout=0.3)
        g.add_edge(START, "slow")
        if lane == "cpu":
            warm(default_executor())  # the clock below is not for starting workers
        t0 = time.monotonic()
        with pytest.raises(NodeTimeoutError, match=r"'slow' \(step 0, lane '\w+', attempt 1\)"):
            await g.compile().arun({})
        assert time.monotonic() - t0 < 1.5  # the run did not wait for the runaway call
        if lane == "cpu":
            # The runaway worker is gone within 2 s of the deadline (it is killed at once).
            assert await wait_gone(int(pid_file.read_text()), timeout=2.0) < 2.0
            await normal_run_works()

    @pytest.mark.parametrize("timeout", [None, 5.0])
    async def test_io_nodes_own_timeout_error_is_its_own(self, timeout: float | None) -> None:
        """A TimeoutError of the node's own (its wait_for) is raised as itself, never as
        the engine's NodeTimeoutError; the engine's record keeps its traceback."""

        async def waits_too_little(state: FaultState) -> dict[str, Any]:
            await asyncio.wait_for(asyncio.sleep(5.0), 0.01)
            return {}

        g = Graph(FaultState)
        g.add_node("impatient", waits_too_little, timeout=timeout)
        g.add_edge(START, "impatient")
        with pytest.raises(TimeoutError, match=r"'impatient' \(step 0") as info:
            await g.compile().arun({})
        assert not isinstance(info.value, NodeError)
        err = node_error_of(info.value)
        assert err is not None and "ran past its timeout" not in str(err)
        assert err.error_type == "TimeoutError"
        assert "waits_too_little" in err.traceback_text and "wait_for" in err.traceback_text

    async def test_cpu_timeout_then_retry_succeeds(self, tmp_path: Path) -> None:
        """Attempt 1 times out (its worker killed, writes discarded); attempt 2 succeeds."""
        flag, pid_file, side = tmp_path / "flag", tmp_path / "pid", tmp_path / "side"
        g = Graph(FaultState)
        g.add_node(
            "st",
            functools.partial(crashers.stall_once, str(flag), str(pid_file), str(side), "st"),
            lane="cpu",
            timeout=1.0,
            retry=RetryPolicy(max_attempts=2, initial_interval=0.0, jitter=False),
        )
        g.add_edge(START, "st")
        result = await g.compile().arun({})
        assert result.state.items == ["st"]
        assert [(c.attempt, c.ok, c.error) for c in result.trace.for_node("st")] == [
            (1, False, "timeout"),
            (2, True, None),
        ]
        assert not pid_alive(int(pid_file.read_text()))
        assert len(lines(side)) == 1

    async def test_time_queued_in_the_pool_does_not_count(self, tmp_path: Path) -> None:
        """A call queued behind other work in the pool for longer than its timeout still runs."""
        pool = default_executor()
        warm(pool)
        blockers = [pool.submit(time.sleep, 0.8) for _ in range(default_workers())]
        side = tmp_path / "side"
        g = Graph(FaultState)
        g.add_node(
            "late",
            functools.partial(crashers.sibling, str(side), "late", 0.0),
            lane="cpu",
            timeout=0.3,
        )
        g.add_edge(START, "late")
        result = await g.compile().arun({})
        assert result.state.items == ["late"] and lines(side) == ["late"]
        for b in blockers:
            await asyncio.wrap_future(b)


# -- an unexpected error in one call of a step ---------------------------------------


class TestUnexpectedError:
    async def test_siblings_are_cancelled_and_awaited_before_it_propagates(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An engine error (not a node's) in one call: the step's other calls are stopped and
        awaited before arun raises it; the finished call's write is kept as pending."""
        from engine.dispatch import Dispatcher

        pid_file, side = tmp_path / "pid", tmp_path / "side"
        real = Dispatcher._on_lane
        stopped: list[str] = []

        async def call(self: Dispatcher, call: Any, route: Any, arg: Any) -> Any:
            if call.task.node == "bad":
                await wait_for_pid(pid_file)  # the cpu sibling computes, the io one sleeps
                raise RuntimeError("an engine bug")
            return await real(self, call, route, arg)

        async def sleeper(state: FaultState) -> dict[str, Any]:
            try:
                await asyncio.sleep(30)
            finally:
                stopped.append("sleeper")
            return {}

        monkeypatch.setattr(Dispatcher, "_on_lane", call)
        g = Graph(FaultState)
        g.add_node("bad", functools.partial(crashers.io_sibling, os.devnull, "bad", 0.0))
        g.add_node("quick", functools.partial(crashers.io_sibling, str(side), "quick", 0.0))
        g.add_node("sleeper", sleeper)
        g.add_node("burner", functools.partial(crashers.stall, str(pid_file)), lane="cpu")
        for name in ("bad", "quick", "sleeper", "burner"):
            g.add_edge(START, name)
        cp = MemoryCheckpointer()
        with pytest.raises(RuntimeError, match="an engine bug"):
            await g.compile(checkpointer=cp).arun({}, thread_id="t")
        # Nothing of the step runs on: the io call was cancelled and awaited ...
        assert stopped == ["sleeper"]
        # (the loop guard's monitor lingers for the loop's next run: not the step's)
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert [t for t in others if t.get_name() != "engine-loop-guard"] == []
        # ... and the cpu call's worker was killed.
        assert await wait_gone(int(pid_file.read_text())) < 2.0
        latest = await cp.get_latest("t")
        assert latest is not None and latest.status == "failed"
        assert [w.node for w in latest.pending_writes] == ["quick"]
        monkeypatch.undo()
        await normal_run_works()


# -- KeyboardInterrupt and SystemExit in the driver -----------------------------------

#: Runs a sync node raising ``KeyboardInterrupt`` or ``SystemExit`` on each
#: driver-side path, through ``invoke`` (``run_sync``), and prints what came
#: out. A subprocess: a KeyboardInterrupt escaping pytest's own loop would end
#: the whole test session.
INTERRUPT_DRIVER = """
import sys
from engine import START, Graph, NodeError
from tests.crashers import FaultState

def interrupt(state):
    raise KeyboardInterrupt

def exits(state):
    sys.exit(9)

for kind, fn in (("KeyboardInterrupt", interrupt), ("SystemExit", exits)):
    for lane, mode in (("inline", "parallel"), ("thread", "sequential"), ("thread", "parallel")):
        g = Graph(FaultState)
        g.add_node("n", fn, lane=lane)
        g.add_edge(START, "n")
        try:
            g.compile().invoke({}, mode=mode)
            got = "returned"
        except KeyboardInterrupt:
            got = "KeyboardInterrupt"
        except NodeError as exc:
            got = "NodeError " + exc.error_type
        print(kind, lane, mode, "->", got, flush=True)
"""


class TestInterruptsInTheDriver:
    def test_keyboard_interrupt_propagates_and_system_exit_is_a_node_error(self) -> None:
        """Ctrl-C in a sync node run in the driver (inline, sequential, thread) is not a
        NodeError; a node's sys.exit stays one on every one of those paths."""
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(
            [sys.executable, "-c", INTERRUPT_DRIVER],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        paths = ["inline parallel", "thread sequential", "thread parallel"]
        assert out.stdout.splitlines() == [
            *(f"KeyboardInterrupt {p} -> KeyboardInterrupt" for p in paths),
            *(f"SystemExit {p} -> NodeError SystemExit" for p in paths),
        ]


# -- bounded dispatch and cancellation ---------------------------------------------


class CountingExecutor(ThreadPoolExecutor):
    """A pool of ``workers`` threads that counts the calls submitted and not yet done."""

    def __init__(self, workers: int) -> None:
        super().__init__(max_workers=workers)
        self._lock = threading.Lock()
        self.in_flight = self.peak = self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.submitted += 1
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        fut = super().submit(fn, *args, **kwargs)
        fut.add_done_callback(self._done)
        return fut

    def _done(self, _: Any) -> None:
        with self._lock:
            self.in_flight -= 1


class TestCancellation:
    async def test_in_flight_calls_never_exceed_the_workers(self) -> None:
        """Six cpu nodes on a 2-worker executor: at most 2 are in it at once, the rest wait."""
        pool = CountingExecutor(workers=2)
        g = Graph(FaultState)
        for i in range(6):
            fn = functools.partial(crashers.sibling, os.devnull, f"n{i}", 0.05)
            g.add_node(f"n{i}", fn, lane="cpu")
            g.add_edge(START, f"n{i}")
        try:
            result = await g.compile().arun({}, executor=pool)
        finally:
            pool.shutdown()
        assert len(result.state.items) == 6
        assert pool.submitted == 6 and pool.peak == 2  # the rest waited in the lane's queue

    async def test_cancelled_call_waiting_in_the_pool_never_runs(self, tmp_path: Path) -> None:
        """A call cancelled while it waits in the pool's own queue is claimed: it never starts."""
        pool = default_executor()
        warm(pool)
        blockers = [pool.submit(time.sleep, 0.8) for _ in range(default_workers())]
        marker = tmp_path / "ran"
        g = Graph(FaultState)
        g.add_node(
            "late", functools.partial(crashers.sibling, str(marker), "late", 0.0), lane="cpu"
        )
        g.add_edge(START, "late")
        run = asyncio.create_task(g.compile().arun({}))
        await asyncio.sleep(0.3)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        for b in blockers:
            await asyncio.wrap_future(b)
        # Proof, not a wait: once every worker has answered a call sent after the
        # cancel, whatever was ahead of it in the pool's queue has run, or been skipped.
        await asyncio.to_thread(warm, pool)
        assert not marker.exists()
        await normal_run_works()

    async def test_cancel_while_a_cold_pool_is_being_submitted_to(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Cancelled while the first submit runs in its thread: the call is taken back."""
        from engine.lanes.process import ProcessLane

        default_executor().shutdown(wait=True)  # cold: the first submit goes off the loop
        entered, release = threading.Event(), threading.Event()
        real = ProcessLane._submit
        lanes: list[ProcessLane] = []

        def held(self: ProcessLane, *args: Any) -> Any:
            lanes.append(self)
            entered.set()
            release.wait(10)
            return real(self, *args)

        monkeypatch.setattr(ProcessLane, "_submit", held)
        ran = tmp_path / "ran"
        g = Graph(FaultState)
        g.add_node("late", functools.partial(crashers.sibling, str(ran), "late", 0.5), lane="cpu")
        g.add_edge(START, "late")
        run = asyncio.create_task(g.compile().arun({}))
        assert await asyncio.to_thread(entered.wait, 10)
        run.cancel()
        await asyncio.sleep(0.05)
        assert not run.done()  # it waits for the submission before it takes it back ...
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await run
        (lane,) = lanes
        assert "running=0" in repr(lane)  # ... so nothing it sent is left running
        monkeypatch.undo()
        # Every worker answering a call sent after it proves the call was skipped
        # (a worker that had taken it would run it, 0.5 s, before the new one).
        await asyncio.to_thread(warm, default_executor())
        assert not ran.exists()
        await normal_run_works()

    async def test_concurrent_cold_submissions_leave_no_marker_behind(self) -> None:
        """Calls submitted at once to a cold pool (each from its own thread) share the
        driver's one marker directory, which holds no marker once the run ends."""
        from engine.lanes.process import marker_base

        mine = f"engine-cpu-{os.getpid()}-*"
        g = Graph(FaultState)
        for i in range(4):
            fn = functools.partial(crashers.sibling, os.devnull, f"n{i}", 0.0)
            g.add_node(f"n{i}", fn, lane="cpu")
            g.add_edge(START, f"n{i}")
        app = g.compile()
        for _ in range(5):
            default_executor().shutdown(wait=True)  # cold: every submission goes off the loop
            result = await app.arun({})
            assert len(result.state.items) == 4
            dirs = list(Path(marker_base()).glob(mine))
            assert len(dirs) == 1 and list(dirs[0].iterdir()) == []

    async def test_cancel_mid_step_saves_finished_writes_and_leaves_no_process(
        self, tmp_path: Path
    ) -> None:
        """Cancelling arun: finished writes saved as pending, workers killed, queue dropped."""
        side = tmp_path / "side"
        n = default_workers()
        g = Graph(FaultState)
        g.add_node("fast", functools.partial(crashers.async_step_node, str(side), "fast"))
        g.add_edge(START, "fast")
        for i in range(n):  # one stalling call per worker: the pool is full
            call = functools.partial(
                crashers.stall_once,
                str(tmp_path / f"flag{i}"),
                str(tmp_path / f"pid{i}"),
                str(side),
                f"st{i}",
            )
            g.add_node(f"st{i}", call, lane="cpu")
            g.add_edge(START, f"st{i}")
        # Sorted last ("z"): waits in the lane's own queue behind the stalls.
        g.add_node("zq", functools.partial(crashers.sibling, str(side), "zq", 0.0), lane="cpu")
        g.add_edge(START, "zq")
        cp = MemoryCheckpointer()
        app = g.compile(checkpointer=cp)
        loop = asyncio.get_running_loop()
        problems: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: problems.append(ctx))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run = asyncio.create_task(app.arun({}, thread_id="t"))
            pids = [await wait_for_pid(tmp_path / f"pid{i}") for i in range(n)]
            async with asyncio.timeout(10):
                while "fast" not in " ".join(lines(side)):
                    await asyncio.sleep(0.01)
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
            for pid in pids:  # no worker computes on for a cancelled run
                await wait_gone(pid)
            gc.collect()
            await asyncio.sleep(0.1)
        loop.set_exception_handler(None)
        assert problems == [] and [str(w.message) for w in caught] == []
        assert [x.split()[0] for x in lines(side)] == ["fast"]  # the queued call never started
        latest = await cp.get_latest("t")
        assert latest is not None and latest.status == "interrupted"
        assert [w.node for w in latest.pending_writes] == ["fast"]
        # Resume: only what had not finished runs; 'fast' ran once in all.
        result = await app.arun(None, thread_id="t")
        assert sorted(result.state.items) == sorted(["fast", "zq", *(f"st{i}" for i in range(n))])
        assert [x.split()[0] for x in lines(side)].count("fast") == 1


# -- innocents under repeated, attributed crashes ------------------------------------

POISON_POLICY = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=False)
LONG_S = 3.0


def redispatches(logs: list[dict[str, Any]], call: str) -> int:
    """How many times the pool broke under ``call`` and it was submitted again."""
    return sum(1 for e in logs if e["event"] == "cpu_call_redispatched" and e["call"] == call)


def poison_graph(side: Path, *, sibling: bool) -> Graph:
    """``poison`` kills its worker on every attempt; ``sib`` computes for LONG_S beside it."""
    g = Graph(FaultState)
    g.add_node("poison", crashers.kill_self, lane="cpu", retry=POISON_POLICY)
    g.add_edge(START, "poison")
    if sibling:
        fn = functools.partial(crashers.sibling, str(side), "sib", LONG_S)
        g.add_node("sib", fn, lane="cpu")
        g.add_edge(START, "sib")
    return g


class TestInnocentsOfAttributedBreaks:
    """A break with a culprit never counts against the calls it disrupted."""

    async def test_long_sibling_of_a_poison_node_succeeds(self, tmp_path: Path) -> None:
        """Poison crashes 3 times beside a long sibling: it is re-sent 3 times and succeeds."""
        warm(default_executor())
        side = tmp_path / "side"
        events: list[Any] = []
        with capture_logs() as logs, pytest.raises(WorkerCrashedError, match="SIGKILL") as info:
            await poison_graph(side, sibling=True).compile().arun({}, on_event=events.append)
        assert info.value.node == "poison" and info.value.attempt == 3
        assert not any("also failed" in note for note in info.value.__notes__)
        assert redispatches(logs, "sib") == 3  # every break hit it ...
        assert lines(side) == ["sib"]  # ... and it still ran to its end, once
        sibling_events_ok(events)
        await normal_run_works()

    async def test_call_of_a_concurrent_run_survives_another_runs_poison(
        self, tmp_path: Path
    ) -> None:
        """Run A's poison breaks the shared pool 3 times; run B's long call still succeeds."""
        warm(default_executor())
        side = tmp_path / "side"
        g = Graph(FaultState)
        fn = functools.partial(crashers.sibling, str(side), "innocent", LONG_S)
        g.add_node("innocent", fn, lane="cpu")
        g.add_edge(START, "innocent")
        bystander = g.compile()
        with capture_logs() as logs:
            poisoned, survived = await asyncio.gather(
                poison_graph(side, sibling=False).compile().arun({}),
                bystander.arun({}, executor=None),
                return_exceptions=True,
            )
        assert isinstance(poisoned, WorkerCrashedError) and poisoned.attempt == 3
        assert not isinstance(survived, BaseException), survived
        assert [(c.node, c.attempt, c.ok) for c in survived.trace.calls] == [("innocent", 1, True)]
        assert redispatches(logs, "innocent") == 3
        assert lines(side) == ["innocent"]

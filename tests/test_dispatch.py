"""The dispatcher protocol: a step's tasks in, one typed outcome per attempt out, each
placement decided once, retries when settle asks, and a step that stands or falls whole."""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import warnings
from typing import Any

import cloudpickle
import pytest

import tests.crashers as crashers
from engine import Graph
from engine.dispatch import START_SLICE, Dispatcher, Route, all_or_none, plan_routes
from engine.lanes import Lanes, Mode
from engine.lanes.calls import (
    Cancelled,
    NodeRaised,
    Outcome,
    Refused,
    TimedOut,
    WorkerLost,
)
from engine.lanes.placement import Placement
from engine.recorder import Nobody, Recorder
from engine.resources import FakeClock, SystemClock
from engine.spec import START, Task
from tests.support import State, append

cloudpickle.register_pickle_by_value(crashers)

pytestmark = pytest.mark.timeout(90)


async def ok(state: Any) -> dict[str, Any]:
    return {"items": ["ok"]}


async def raises(state: Any) -> dict[str, Any]:
    raise KeyError("missing")


async def slow(state: Any) -> dict[str, Any]:
    await asyncio.sleep(30)
    return {}


async def cancels_itself(state: Any) -> dict[str, Any]:
    raise asyncio.CancelledError("stop")


def plain(state: Any) -> dict[str, Any]:
    return {"items": ["plain"]}


def graph(**nodes: tuple[Any, dict[str, Any]]) -> Any:
    g = Graph(State)
    for name, (fn, options) in nodes.items():
        g.add_node(name, fn, **options)
        g.add_edge(START, name)
    return g.compile().plan


async def dispatch(
    plan: Any, tasks: list[Task], mode: Mode = "parallel", *, again: Any = None, clock: Any = None
) -> list[Outcome]:
    """Run one step's tasks through a dispatcher; every outcome settle heard, in order."""
    heard: list[Outcome] = []
    lanes = Lanes(mode)
    recorder = Recorder("r", thread_id=None, mode=mode, sink=Nobody(), clock=SystemClock())
    d = Dispatcher(plan, lanes, recorder, clock=clock or SystemClock())

    def settle(out: Outcome) -> float | None:
        heard.append(out)
        return again(out) if again is not None else None

    try:
        await d.run_step(0, State(), tasks, settle)
    finally:
        await lanes.aclose()
    return heard


class TestOutcomes:
    async def test_each_way_to_fail_comes_back_as_its_own_failure_type(self) -> None:
        """A node's error, a timeout, a node's own cancellation: typed failures, not
        exceptions, each with the original error where there is one."""
        plan = graph(
            a=(ok, {}),
            b=(raises, {}),
            c=(slow, {"timeout": 0.05}),
            d=(cancels_itself, {}),
        )
        heard = await dispatch(plan, [Task(n) for n in "abcd"])
        by = {o.call.task.node: o for o in heard}
        assert by["a"].ok and by["a"].value == {"items": ["ok"]} and by["a"].record.ok
        raised = by["b"].failure
        assert isinstance(raised, NodeRaised) and isinstance(raised.error, KeyError)
        assert raised.error_type == "KeyError" and "raises" in raised.traceback
        timed = by["c"].failure
        assert isinstance(timed, TimedOut) and timed.stopped == "cancelled"
        assert by["c"].record.error == "timeout" and by["c"].record.pid == -1
        assert isinstance(by["d"].failure, Cancelled)

    async def test_a_payload_that_cannot_cross_is_refused_before_anything_is_sent(self) -> None:
        """A Send payload the driver cannot pickle: Refused (payload), no worker involved."""
        plan = graph(w=(crashers.touch_payload, {"lane": "cpu"}))
        (out,) = await dispatch(plan, [Task("w", 0, crashers.FailsToPickle(), True)])
        assert isinstance(out.failure, Refused) and out.failure.reason == "payload"
        assert "cannot be pickled" in out.failure.message and out.record.error == "payload"

    async def test_a_worker_that_dies_is_a_worker_lost_with_its_exit(self) -> None:
        """os._exit(3) in the worker: WorkerLost naming the dead worker and its exit code."""
        plan = graph(x=(crashers.hard_exit, {"lane": "cpu"}))
        (out,) = await dispatch(plan, [Task("x")])
        lost = out.failure
        assert isinstance(lost, WorkerLost) and not lost.by_executor
        assert lost.exitcode == 3 and lost.pid is not None and lost.pid != os.getpid()


class TestRetries:
    async def test_settle_asks_for_the_same_call_again_after_its_delay(self) -> None:
        """settle answering a delay: the same task runs again as attempt 2, after that
        long on the dispatcher's clock; answering None ends it."""
        plan = graph(b=(raises, {}))
        clock = FakeClock()
        heard = await dispatch(
            plan, [Task("b")], again=lambda o: 7.5 if o.call.attempt < 3 else None, clock=clock
        )
        assert [o.call.attempt for o in heard] == [1, 2, 3]
        assert all(isinstance(o.failure, NodeRaised) for o in heard)
        assert clock.monotonic() == pytest.approx(15.0)


class TestPlacement:
    @pytest.mark.parametrize(
        ("lane", "mode", "where", "crosses", "guarded"),
        [
            ("io", "parallel", Placement.LOOP_TASK, False, True),
            ("cpu", "parallel", Placement.PROCESS, True, False),
            ("cpu", "concurrent", Placement.THREAD, False, False),
            ("inline", "parallel", Placement.LOOP_CALL, False, True),
            ("thread", "sequential", Placement.LOOP_CALL, False, True),
        ],
    )
    def test_a_route_decides_everything_that_follows_from_where_a_call_runs(
        self, lane: str, mode: Mode, where: Placement, crosses: bool, guarded: bool
    ) -> None:
        """Placement, the copy decision and the loop-guard registration, once per node."""
        fn = ok if lane == "io" else plain
        plan = graph(n=(fn, {"lane": lane}))
        (route,) = plan_routes(plan, mode, guarded=True).values()
        assert (route.placement, route.crosses, route.guarded) == (where, crosses, guarded)

    def test_a_call_in_this_process_gets_a_private_copy_a_worker_call_the_state(self) -> None:
        """Copying is the dispatcher's decision: none for a worker (pickling copies)."""
        plan = graph(n=(plain, {"lane": "cpu"}))
        state = State(items=["x"])
        dispatcher = Dispatcher(
            plan, Lanes("parallel"), Recorder("r", thread_id=None, mode="parallel",
                                              sink=Nobody(), clock=SystemClock()),
            clock=SystemClock(),
        )  # fmt: skip
        route: Route = dispatcher._routes["n"]
        assert dispatcher._argument(route, state, Task("n")) is state
        in_driver = plan_routes(plan, "concurrent")["n"]
        copy = dispatcher._argument(in_driver, state, Task("n"))
        assert copy == state and copy is not state and copy.items is not state.items


class TestBatches:
    async def test_a_fan_out_of_short_cpu_calls_settles_each_call_of_its_chunks(self) -> None:
        """200 Sends of a cpu node go out in chunks; settle hears 200 outcomes, one per
        Send index, each with its own worker-side record."""
        plan = graph(w=(functools.partial(append, "items", "w"), {"lane": "cpu"}))
        tasks = [Task("w", i, {"i": i}, True) for i in range(200)]
        heard = await dispatch(plan, tasks)
        assert sorted(o.call.task.index for o in heard) == list(range(200))
        assert all(o.ok and o.record.pid != os.getpid() and o.record.bytes_in for o in heard)


class TestSupervision:
    async def test_a_big_step_lets_the_loop_turn_while_its_calls_start(self) -> None:
        """Thousands of calls start a slice per turn of the loop, not all in one turn."""
        order: list[object] = []
        loop = asyncio.get_running_loop()

        async def call(i: int) -> None:
            order.append(i)
            if i == 0:  # something else the loop has to do, scheduled by the first call
                loop.call_soon(order.append, "tick")

        await all_or_none([call(i) for i in range(10 * START_SLICE)])
        assert order.index("tick") <= START_SLICE
        assert sorted(x for x in order if isinstance(x, int)) == list(range(10 * START_SLICE))

    async def test_cancelled_while_starting_leaves_no_coroutine_unawaited(self) -> None:
        """A step cancelled mid-start closes the calls it never started (no warnings)."""
        started: list[int] = []

        async def call(i: int) -> None:
            started.append(i)
            await asyncio.sleep(10)

        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            task = asyncio.ensure_future(all_or_none([call(i) for i in range(4 * START_SLICE)]))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            gc.collect()
        assert 0 < len(started) < 4 * START_SLICE
        assert [w for w in seen if "never awaited" in str(w.message)] == []

    async def test_an_engine_error_stops_the_other_calls_first(self) -> None:
        """One call raises what is not a node's failure: the others are cancelled and
        awaited before it propagates, as it is."""
        stopped: list[int] = []

        async def long(i: int) -> None:
            try:
                await asyncio.sleep(10)
            finally:
                stopped.append(i)

        async def bug() -> None:
            await asyncio.sleep(0)
            raise RuntimeError("an engine bug")

        with pytest.raises(RuntimeError, match="an engine bug"):
            await all_or_none([long(0), bug(), long(1)])
        assert sorted(stopped) == [0, 1]

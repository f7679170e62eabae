"""The dispatcher: a step's calls in, one outcome per attempt out.

::

    scheduler --run_step(step, state, tasks, settle)--> Dispatcher
                                                  |  per node, once per run: a Route
                                                  |  (placement, copy decision, budget,
                                                  |  loop-guard registration, timeout)
                                                  |
          a Send fan-out of short cpu calls ------+------ every other call: a task of
          (parallel mode, first attempts):        |       its own (one after another in
          chunks, each one submission             |       sequential mode)
          (lanes.batching plans, CpuLane sends)   |         budget -> registered -> lane
                                                  v
    scheduler <--settle(Outcome) -> None | delay--+  None: settled; a delay: the same
                                                     call runs again after it

Everything that depends on where a call runs is decided here, once per
node and run, from ``lanes.placement.place``: which lane runs it, whether
its input is a private copy (calls in this process) or pickled (a worker
gets its own), whether it is registered with the loop guard (it runs on
the loop's thread), what its timeout does to it. A failure comes back as
the outcome's typed ``Failure`` (``lanes.calls``); the exceptions the lanes
raise on their way (a timeout, an input that cannot be pickled, a dead
worker, an executor that cannot run anything) are turned into failures in
one place, ``_failure``. Only cancellation and the engine's own errors
propagate: a step that raises has its other calls stopped and awaited
first (``all_or_none``).

The retry policy is not here: ``settle`` (``engine.attempts``) judges each
outcome and says whether the call runs again, and when.
"""

from __future__ import annotations

import asyncio
import copy
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Literal

from .cache import cache_key, dump_value, load_value
from .callwriter import reset_writer, set_writer
from .context import adapt, asks_for_config, for_call, leave, resumes
from .lanes import Lanes, Mode
from .lanes.batching import ChunkPlan, chunk_plan
from .lanes.calls import (
    Call,
    Failure,
    Outcome,
    Refused,
    TimedOut,
    WorkerLost,
    lost,
)
from .lanes.channel import StreamInfo
from .lanes.cpu import pickled, pickled_together
from .lanes.failures import CallRefused, PayloadError, WorkerDied, describe_exit, is_worker_crash
from .lanes.loop import run_coroutine, run_here, run_on_thread
from .lanes.placement import Placement, place
from .logs import get_logger
from .procs import hostname
from .spec import Task
from .trace import call_record

if TYPE_CHECKING:
    from .cache import CachePolicy, NodeCache
    from .lean import Reads
    from .measured import MeasuredPolicy
    from .plan import Plan
    from .recorder import Recorder
    from .resources import Budgets, Clock
    from .watchdog import LoopWatchdog

log = get_logger("engine")

#: How an outcome is settled: None, or the seconds after which the same call runs again.
Settle = Callable[[Outcome], "float | None"]
#: ``Settle`` for many outcomes at once (a chunk's): the (outcome, delay) of each to run again.
SettleMany = Callable[[Sequence[Outcome]], "list[tuple[Outcome, float]]"]

#: Calls of a step started per turn of the event loop.
START_SLICE = 128
#: Outcomes of a finished chunk settled per turn of the event loop.
SETTLE_SLICE = 256

#: A task's place in its step: node name, then Send index.
_task_order = attrgetter("node", "index")

#: Values no node can change in place: a Send payload of these is passed as it is.
_IMMUTABLE = frozenset({int, float, complex, str, bytes, bool, type(None)})

_STOPPED: Mapping[Placement, Literal["cancelled", "killed", "abandoned"]] = {
    Placement.LOOP_TASK: "cancelled",
    Placement.LOOP_CALL: "abandoned",
    Placement.THREAD: "abandoned",
    Placement.PROCESS: "killed",
}


@dataclass(frozen=True, slots=True)
class Route:
    """Everything about how one node's calls run in one run, decided once."""

    node: str
    lane: str
    placement: Placement
    fn: Callable[..., Any]
    timeout: float | None
    init: Any
    memory: int | None
    resources: Mapping[str, int] | None
    reads: Reads | None
    #: The call gets its input pickled (a worker's own copy): no copy is made here.
    crosses: bool
    #: Registered with the loop guard while it runs (it runs on the loop's thread).
    guarded: bool
    #: Waits for the run's budgets (its resources, or a cap on its lane).
    budgeted: bool
    #: A Send fan-out of its calls may go to the pool in chunks.
    batchable: bool
    #: Its results are kept by a key of its input (``engine.cache``), when the app has a cache.
    cache_policy: CachePolicy | None = None
    #: Its calls say which task they are even when nobody streams the run: the node reads
    #: LangGraph's per-task config (``engine.context.node_config``).
    named: bool = False


def plan_routes(
    plan: Plan, mode: Mode, *, budgets: Budgets | None = None, guarded: bool = False
) -> dict[str, Route]:
    """Every node's ``Route`` for runs of ``plan`` in ``mode``: where and how its calls run.

    ``guarded``: the run has a loop guard (calls on the loop register with
    it). Routes depend on nothing else, so an app keeps them for its runs
    without budgets (a budget makes them run-specific).
    """
    cpu_capped = budgets is not None and budgets.lane_limit("cpu") is not None
    langgraph = plan.schema.conventions == "langgraph"
    routes = {}
    for name, node in plan.nodes.items():
        spec = node.spec
        where = place(node.lane, mode, is_coroutine=spec.is_coroutine)
        routes[name] = Route(
            node=name,
            lane=node.lane,
            placement=where,
            fn=adapt(spec.fn, spec.takes, is_coroutine=spec.is_coroutine),
            timeout=spec.timeout,
            init=spec.worker_init,
            memory=spec.memory_per_worker,
            resources=spec.resources,
            reads=node.reads,
            crosses=where is Placement.PROCESS,
            guarded=guarded and where.on_loop,
            budgeted=budgets is not None
            and bool(spec.resources or budgets.lane_limit(node.lane) is not None),
            batchable=(
                where is Placement.PROCESS
                and spec.batch
                and spec.timeout is None
                and not spec.resources
                and not cpu_capped
                and spec.cache_policy is None
            ),
            cache_policy=spec.cache_policy,
            named=langgraph and asks_for_config(spec.fn, spec.takes),
        )
    return routes


class Dispatcher:
    """Runs the calls of one run's steps on their lanes.

    Invariant: ``_routes`` is decided once, when the run starts, from the
    plan the run keeps; the dispatcher holds no state between steps (what a
    step's calls came to is its caller's, through ``settle``).
    """

    def __init__(
        self,
        plan: Plan,
        lanes: Lanes,
        recorder: Recorder,
        *,
        clock: Clock,
        budgets: Budgets | None = None,
        watchdog: LoopWatchdog | None = None,
        measured: MeasuredPolicy | None = None,
        cache: NodeCache | None = None,
        routes: Mapping[str, Route] | None = None,
    ) -> None:
        self.plan = plan
        self.lanes = lanes
        self.mode: Mode = lanes.mode
        self.recorder = recorder
        self.clock = clock
        self._budgets = budgets
        self._watchdog = watchdog
        self._measured = measured
        self._cache = cache
        self._values = plan.schema.held == "values"
        #: The run's ``custom`` chunk writer for calls in this process (None: nobody streams).
        self._writer = recorder.writer() if recorder.chunks is not None else None
        if routes is None:
            routes = plan_routes(plan, lanes.mode, budgets=budgets, guarded=watchdog is not None)
        self._routes = routes
        self._batching = any(r.batchable for r in routes.values())

    def __repr__(self) -> str:
        return f"<Dispatcher mode={self.mode} nodes={len(self._routes)}>"

    # -- a step ------------------------------------------------------------------

    async def run_step(
        self,
        step: int,
        state: Any,
        tasks: Sequence[Task],
        settle: Settle,
        settle_many: SettleMany | None = None,
    ) -> None:
        """Run ``tasks`` (a step's, sorted) until each is settled; ``settle`` hears every attempt
        (``settle_many``, when given, a chunk's outcomes together).

        Raises only what is not a call's failure: cancellation, or an engine
        error (the step's other calls are stopped and awaited first).
        """
        if self.mode == "sequential":
            for task in tasks:
                await self._run(Call(task, step), state, settle)
            return
        singles: Iterable[Task] = tasks
        jobs: list[Coroutine[Any, Any, None]] = []
        if self._batching and len(tasks) > 1:  # (one call is never a batch)
            singles, batches = self._batches(tasks)
            jobs += [self._run_batch(route, step, group, plan, state, settle, settle_many)
                     for route, group, plan in batches]  # fmt: skip
        jobs += [self._run(Call(task, step), state, settle) for task in singles]
        await all_or_none(jobs)

    async def _run(self, call: Call, state: Any, settle: Settle, delay: float = 0.0) -> None:
        """One task's attempts: run, settle, and again while ``settle`` says so."""
        route = self._routes[call.task.node]
        while True:
            if delay > 0:
                await self.clock.sleep(delay)
            arg = self._argument(route, state, call.task)
            key = None
            if route.cache_policy is not None and self._cache is not None:
                key = cache_key(route.cache_policy, call.task.node, arg, step=call.step)
                hit = self._cache.get(call.task.node, key) if call.attempt == 1 else None
                if hit is not None:
                    self.recorder.call_started(call, route.lane)
                    if settle(_cached(call, route.lane, load_value(hit))) is None:
                        return
                    key, call = None, call.again()  # a kept update the step refuses: run it
            self.recorder.call_started(call, route.lane)
            if route.budgeted:
                out = await self._budgeted(call, route, arg)
            else:
                out = await self._on_lane(call, route, arg)
            if key is not None and out.ok:
                self._keep(route, key, out)
            again = settle(out)
            if again is None:
                return
            call, delay = call.again(), again

    def _keep(self, route: Route, key: str, out: Outcome) -> None:
        """A successful update into the node cache (one that cannot be pickled is not kept)."""
        assert self._cache is not None and route.cache_policy is not None
        data = dump_value(out.value)
        if data is None:
            log.warning(
                "node_result_not_cached",
                node=route.node,
                step=out.call.step,
                why="its update cannot be pickled",
            )
            return
        self._cache.set(route.node, key, data, route.cache_policy.ttl)

    async def _budgeted(self, call: Call, route: Route, arg: Any) -> Outcome:
        """The call once its budgets let it through (its resources, its lane's cap)."""
        assert self._budgets is not None
        async with self._budgets.acquire(
            route.resources, lane=route.lane, node=call.task.node, index=call.task.index
        ) as wait:
            if wait is not None and wait.waited_s > 0:
                self.recorder.budget_waited(call, wait)
            return await self._on_lane(call, route, arg)

    def _argument(self, route: Route, state: Any, task: Task) -> Any:
        """What the node is called with: the copy decision, made here and nowhere else.

        A worker gets its own copy by unpickling; a call in this process gets
        a private copy, so no node can see or change another's view. A node
        that declared what it reads gets only those fields (lean dispatch);
        a ``Send`` gets its payload.
        """
        if task.has_payload:
            payload = task.payload
            if route.crosses or type(payload) in _IMMUTABLE:
                return payload  # nothing a node could change in place
            return copy.deepcopy(payload)
        if route.reads is not None:
            return route.reads.project(state, copy_values=not route.crosses)
        if not route.crosses:
            return self.plan.schema.copy(state)
        if self._values:  # channel values: the node's view of them (pickling copies it)
            return self.plan.schema.state_view(state, copy_values=False)
        return state

    async def _on_lane(self, call: Call, route: Route, arg: Any) -> Outcome:
        # A resumed call's answers to its interrupt() (engine.interrupts): None otherwise.
        resumed = for_call(call.task.node, call.task.index)
        try:
            if route.placement is Placement.PROCESS or (self._writer is None and not route.named):
                return await self._placed(call, route, arg)
            # get_stream_writer() in the node finds it
            token = set_writer(self._writer, call.task.node, call.step, call.task.index, arg)
            try:
                return await self._placed(call, route, arg)
            finally:
                reset_writer(token)
        finally:
            if resumed is not None:
                leave(resumed)

    def _stream_info(
        self, route: Route, step: int, index: int = -1, indexes: tuple[int, ...] = ()
    ) -> StreamInfo | None:
        """What a cpu-lane call sends its worker to stream, or, nobody streaming, to say
        which task it is (a node reading LangGraph's per-task config)."""
        info = self.recorder.stream_info(route.node, step, index, indexes)
        if info is None and route.named:
            return StreamInfo.unstreamed(route.node, step, index, indexes)
        return info

    async def _placed(self, call: Call, route: Route, arg: Any) -> Outcome:
        started = time.time()
        lanes = self.lanes
        try:
            where = route.placement
            if where is Placement.LOOP_TASK:
                running = run_coroutine(
                    call, route.lane, route.fn, arg, route.timeout, route.init, lanes.resources
                )
                if not route.guarded:
                    return await running
                watchdog = self._watchdog
                assert watchdog is not None
                key = watchdog.enter(call.task.node, call.task.index, route.fn)
                try:
                    return await running
                finally:
                    watchdog.leave(key)
            if where is Placement.PROCESS:
                stream = self._stream_info(route, call.step, call.task.index)
                return await lanes.cpu.run(
                    call, route.fn, arg, timeout=route.timeout, init=route.init,
                    memory=route.memory, stream=stream,
                )  # fmt: skip
            if where is Placement.LOOP_CALL:
                if not route.guarded:
                    return run_here(call, route.lane, route.fn, arg, route.init, lanes.resources)
                assert self._watchdog is not None
                with self._watchdog.running(call.task.node, index=call.task.index, fn=route.fn):
                    return run_here(call, route.lane, route.fn, arg, route.init, lanes.resources)
            return await run_on_thread(
                lanes.threads(), call, route.lane, route.fn, arg, route.timeout, route.init,
                lanes.resources,
            )  # fmt: skip
        except Exception as exc:
            failure = _failure(exc, route)
            if failure is None:
                raise
            return lost(call, route.lane, started, failure)

    # -- batches -------------------------------------------------------------------

    def _batches(
        self, tasks: Sequence[Task]
    ) -> tuple[list[Task], list[tuple[Route, list[Task], ChunkPlan]]]:
        """The tasks that go alone, and the Send fan-outs that go to the pool in chunks."""
        groups: dict[str, list[Task]] = {}
        singles: list[Task] = []
        answers = resumes()  # a resumed call goes alone: its answers travel in its own context
        batchable = {name for name, route in self._routes.items() if route.batchable}
        for task in tasks:
            node = task.node
            if task.has_payload and node in batchable and (node, task.index) not in answers:
                group = groups.get(node)
                if group is None:
                    groups[node] = [task]
                else:
                    group.append(task)
            else:
                singles.append(task)
        batches = []
        workers = self.lanes.cpu_workers
        for name, group in groups.items():
            dispatch_s = call_s = None
            if self._measured is not None:
                prof = self._measured.nodes.get(name)
                call_s = prof.wall_s if prof is not None else None
                if self._measured.dispatch is not None:
                    payload = prof.payload_bytes or 0.0 if prof is not None else 0.0
                    dispatch_s = self._measured.dispatch.cost(payload)
            plan = chunk_plan(len(group), workers=workers, dispatch_s=dispatch_s, call_s=call_s)
            if plan is None:
                singles += group
                continue
            batches.append((self._routes[name], group, plan))
            log.info(
                "cpu_batch_planned",
                node=name,
                calls=len(group),
                chunks=len(plan.sizes),
                reason=plan.reason,
            )
        singles.sort(key=_task_order)
        return singles, batches

    async def _run_batch(
        self,
        route: Route,
        step: int,
        tasks: list[Task],
        plan: ChunkPlan,
        state: Any,
        settle: Settle,
        settle_many: SettleMany | None,
    ) -> None:
        """Send ``tasks`` to the pool in the planned chunks.

        One chunk is started per turn of the loop, and each pickles its own
        arguments once the lane has room for it (``gate``: as many as the
        lane keeps submitted): the first is submitted (and its worker
        computing) before the next is even pickled, and the loop's thread
        goes idle, letting the pool's threads hand the first chunks to the
        workers, before it prepares the chunks that would only wait.
        """
        gate = asyncio.Semaphore(self.lanes.cpu.process.window)
        chunks = [
            self._run_chunk(route, step, tasks[part], state, settle, settle_many, gate)
            for part in plan.slices()
        ]
        await all_or_none(chunks, per_turn=1)

    async def _run_chunk(
        self,
        route: Route,
        step: int,
        tasks: list[Task],
        state: Any,
        settle: Settle,
        many: SettleMany | None,
        gate: asyncio.Semaphore,
    ) -> None:
        """One chunk: prepared and sent while it holds a place in ``gate`` (as many as the
        lane keeps submitted), settled, and its retries or lone re-runs awaited, after it
        gave the place back (a retry's back-off must not hold back the chunks behind it)."""
        retries: list[Coroutine[Any, Any, None]] = []
        died: WorkerDied | None = None
        async with gate:
            calls, args = self._chunk_calls(route, step, tasks, state, settle, retries)
            started = time.time()
            try:
                outcomes = (
                    await self.lanes.cpu.run_chunk(
                        calls,
                        args,
                        route.fn,
                        init=route.init,
                        memory=route.memory,
                        stream=self._stream_info(
                            route, step, indexes=tuple([c.task.index for c in calls])
                        ),
                    )
                    if calls
                    else []
                )
            except WorkerDied as exc:
                died, outcomes = exc, []
            except Exception as exc:
                failure = _failure(exc, route)
                if failure is None:
                    raise
                outcomes = [lost(c, route.lane, started, failure) for c in calls]
        if died is not None:
            # One of these calls killed its worker, or none did (it was killed
            # from outside): each runs again alone, so only a culprit is charged.
            log.warning(
                "cpu_chunk_lost_rerun_singly", node=route.node, calls=len(calls), error=str(died)
            )
            blobs = args if isinstance(args, list) else [pickled(c.task.payload) for c in calls]
            reruns = [
                self._rerun(route, c, b, state, settle) for c, b in zip(calls, blobs, strict=True)
            ]
            await all_or_none(reruns + retries)
            return
        for at in range(0, len(outcomes), SETTLE_SLICE):
            if at:
                await asyncio.sleep(0)  # thousands of outcomes at once: let the loop breathe
            part = outcomes[at : at + SETTLE_SLICE]
            if many is None:
                again = [(out, delay) for out in part if (delay := settle(out)) is not None]
            else:
                again = many(part)
            retries += [self._run(out.call.again(), state, settle, delay) for out, delay in again]
        if retries:
            await all_or_none(retries)

    def _chunk_calls(
        self,
        route: Route,
        step: int,
        tasks: list[Task],
        state: Any,
        settle: Settle,
        retries: list[Coroutine[Any, Any, None]],
    ) -> tuple[list[Call], list[bytes] | bytes]:
        """A chunk's calls and their arguments pickled: plain payloads (the usual Send
        argument) cannot fail to cross, one pickle for them all; any other is pickled
        call by call, a bad one failing alone (settled now, its retry added to
        ``retries``)."""
        tell = self.recorder.call_started if self.recorder.tells_calls else None
        together = pickled_together([t.payload for t in tasks])
        if together is not None:
            new = tuple.__new__  # (a named tuple's own __new__ is a Python call per call)
            calls: list[Call] = [new(Call, (task, step, 1)) for task in tasks]
            if tell is not None:
                for call in calls:
                    tell(call, route.lane)
            return calls, together
        calls, blobs = [], []
        for task in tasks:
            call = Call(task, step)
            if tell is not None:
                tell(call, route.lane)
            try:
                blobs.append(pickled(task.payload))
            except PayloadError as exc:  # fails alone, before anything is sent
                retry = self._settle(
                    lost(call, route.lane, time.time(), _refused(exc)), state, settle
                )
                if retry is not None:
                    retries.append(retry)
                continue
            calls.append(call)
        return calls, blobs

    async def _rerun(
        self, route: Route, call: Call, blob: bytes, state: Any, settle: Settle
    ) -> None:
        """A call of a lost chunk, alone, from its pickled argument: the same attempt."""
        started = time.time()
        try:
            (out,) = await self.lanes.cpu.run_chunk(
                [call], [blob], route.fn, init=route.init, memory=route.memory,
                stream=self._stream_info(route, call.step, call.task.index),
            )  # fmt: skip
        except Exception as exc:
            failure = _failure(exc, route)
            if failure is None:
                raise
            out = lost(call, route.lane, started, failure)
        retry = self._settle(out, state, settle)
        if retry is not None:
            await retry

    def _settle(self, out: Outcome, state: Any, settle: Settle) -> Coroutine[Any, Any, None] | None:
        """Settle an outcome that came without a task of its own; its retry, if any, to run."""
        again = settle(out)
        if again is None:
            return None
        return self._run(out.call.again(), state, settle, again)


# -- failures --------------------------------------------------------------------------


def _failure(exc: Exception, route: Route) -> Failure | None:
    """The typed failure of a call a lane raised ``exc`` for; None: not a call's failure."""
    if isinstance(exc, TimeoutError):
        stopped = _STOPPED[route.placement]
        return TimedOut(f"timed out after {route.timeout} s", exc, route.timeout or 0.0, stopped)
    if isinstance(exc, CallRefused):
        return _refused(exc)
    if isinstance(exc, WorkerDied):
        return WorkerLost(str(exc), exc.__cause__ or exc, exc.pid, exc.exitcode)
    if is_worker_crash(exc):  # a crash the executor attributed itself (Dask's KilledWorker)
        return WorkerLost(
            f"the worker process running it died ({type(exc).__name__}: {exc})",
            exc,
            None,
            getattr(exc, "exitcode", None),
            by_executor=True,
        )
    return None


def _refused(exc: CallRefused) -> Refused:
    reason: Literal["payload", "executor"] = "executor" if exc.kind == "executor" else "payload"
    return Refused(str(exc), exc, reason, type(exc.__cause__ or exc).__name__)


def exit_detail(failure: WorkerLost) -> str:
    """How the worker ended, in words (an exit code or a signal, with its likely cause)."""
    if failure.by_executor:
        return str(failure.error)
    return describe_exit(failure.exitcode)


# -- supervision ---------------------------------------------------------------------------


async def all_or_none(
    calls: Sequence[Coroutine[Any, Any, None]], *, per_turn: int = START_SLICE
) -> None:
    """Run ``calls`` at once; the first to raise stops the others (TaskGroup semantics).

    ``gather`` would propagate that error at once and leave the other calls
    running, unsupervised, past the step's end. Here they are cancelled and
    awaited first (their lanes take cpu calls back, killing busy workers),
    then the error propagates as it is (no ExceptionGroup: callers catch the
    engine's own types). Cancelling this cancels them all, awaited the same
    way. At most ``per_turn`` are started per turn of the loop.
    """
    if len(calls) == 1:
        # One call (a chain's step): nothing to supervise beside it, so no wait
        # machinery; still a task, so the node runs in a copy of the context,
        # as every call of a bigger step does (cancelling us cancels it).
        await asyncio.ensure_future(calls[0])
        return
    tasks: list[asyncio.Future[None]] = []
    try:
        for i, call in enumerate(calls):
            tasks.append(asyncio.ensure_future(call))
            if (i + 1) % per_turn == 0:
                # Thousands of calls (a Send fan-out) would all take their first
                # step in one turn of the loop, blocking it for a quarter of a
                # second: let each slice start, and the loop breathe, first.
                await asyncio.sleep(0)
    except asyncio.CancelledError:
        for c in calls[len(tasks) :]:
            c.close()  # never started: close, so none warns "never awaited"
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    if not tasks:
        return
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    # In task order, so which error surfaces does not depend on the set's order.
    failed = [t for t in tasks if t in done and (t.cancelled() or t.exception() is not None)]
    if not failed:
        return
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    first = failed[0]
    if first.cancelled():
        raise asyncio.CancelledError
    error = first.exception()
    assert error is not None
    raise error


def _cached(call: Call, lane: str, value: Any) -> Outcome:
    """The outcome of a call answered from the node cache: its record says so, took no time."""
    now = time.time()
    record = call_record(
        call.task.node, call.step, lane, call.attempt, call.task.index,
        os.getpid(), threading.get_native_id(), hostname(), now, now, 0.0, 0, 0, True, None,
        0.0, 0.0,
    )  # fmt: skip
    record.__dict__["cached"] = True
    return Outcome(call, record, value)


__all__ = [
    "START_SLICE",
    "Dispatcher",
    "Route",
    "Settle",
    "SettleMany",
    "all_or_none",
    "exit_detail",
    "plan_routes",
]

"""The super-step loop.

::

    tasks(step) --dispatch--> lanes (all at once; one at a time in sequential)
         ^                         |
         |                    barrier: every call finished (or failed)
         |                         v
    route: edges, fan-ins,   merge writes in (node, Send index) order
    branches, Sends  <------ through reducers, then checkpoint
                                   |
                            no task triggered -> run ends

A step's failures are collected at the barrier: the writes of the calls that
succeeded are saved as pending writes, so a resume re-runs only what failed.
A cancelled step saves the writes of the calls that finished the same way
(status "interrupted"). Only this module changes run state; lanes run calls,
trace measures them.

Faults, per call: an error is retried per the node's ``RetryPolicy``; a
worker that died under the call is a crash charged to that call only (the
process lane re-dispatches the innocent calls itself), which the engine runs
again on a budget of its own, apart from the policy, until the call has
crashed its worker ``POISON_AFTER_CRASHES`` times: then it fails as poison
with ``WorkerCrashedError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from .errors import (
    GraphError,
    InvalidUpdateError,
    NodeError,
    NodeTimeoutError,
    RecursionLimitError,
    WorkerCrashedError,
)
from .events import (
    BudgetWaited,
    NodeFailed,
    NodeFinished,
    NodeStarted,
    RunFinished,
    RunStarted,
    StepFinished,
    StepStarted,
    WorkerLoaded,
)
from .lanes import (
    CallOutcome,
    CallRefused,
    LaneRunner,
    Mode,
    PayloadError,
    WorkerLost,
    describe_exit,
    is_worker_crash,
)
from .lanes.batching import plan_chunks, should_batch
from .lanes.placement import runs_on_loop
from .lanes.worker import hostname
from .logs import get_logger
from .marks import Mark
from .plan import Plan, PlanNode
from .policy import NO_RETRY
from .spec import END, START, NodeSpec, Send
from .state import Write
from .trace import Metrics, NodeCall, Trace, compute_metrics
from .warm import load_mark

if TYPE_CHECKING:
    from .checkpoint import Checkpoint, Checkpointer
    from .checkpoint.snapshot import RunCodec
    from .profile import MeasuredPolicy
    from .resources import Budgets
    from .watchdog import LoopWatchdog

Emit = Callable[[Any], None]


class Sink(Protocol):
    """Where events go: a callable, false when nobody listens (``app._Sinks``)."""

    def __call__(self, event: Any) -> None: ...

    def __bool__(self) -> bool: ...


class _Nobody:
    """The event sink of a run nobody observes: false, so per-call events are skipped."""

    def __call__(self, event: Any) -> None:
        return None

    def __bool__(self) -> bool:
        return False


_nobody = _Nobody()
log = get_logger("engine")

#: node_failed is a warning for this many failed attempts per step, then debug.
FAILURES_LOGGED_PER_STEP = 10

#: A call whose worker died this many times is poison: no retry policy runs it again.
POISON_AFTER_CRASHES = 3


@dataclass(frozen=True)
class Task:
    """One call to make in a step: a node, and its Send payload if it has one."""

    node: str
    index: int = -1  # Send index within the step; -1 when triggered by an edge
    payload: Any = None
    has_payload: bool = False

    @property
    def order(self) -> tuple[str, int]:
        return (self.node, self.index)


@dataclass
class _TaskResult:
    task: Task
    updates: Mapping[str, Any] | None = None
    error: NodeError | InvalidUpdateError | None = None


@dataclass(frozen=True)
class RunResult:
    """What ``arun`` returns: the final state, the trace, and the metrics."""

    state: BaseModel
    trace: Trace
    metrics: Metrics
    run_id: str
    thread_id: str | None
    mode: str


@dataclass
class RunCursor:
    """Where a run stands between steps (what a checkpoint saves).

    Invariant: ``tasks`` are the tasks of step ``step``, sorted by order;
    ``pending`` holds writes already made in step ``step`` by a previous,
    failed attempt at it.
    """

    state: BaseModel
    step: int
    tasks: list[Task]
    fanin: dict[str, set[str]] = field(default_factory=dict)
    pending: dict[tuple[str, int], Mapping[str, Any]] = field(default_factory=dict)


class Scheduler:
    """Runs a plan's super-steps for one ``arun`` call.

    Invariant: ``cursor`` is only replaced at a barrier, after the step's
    writes merged; ``calls`` only grows.
    """

    def __init__(
        self,
        plan: Plan,
        runner: LaneRunner,
        *,
        run_id: str | None = None,
        thread_id: str | None = None,
        recursion_limit: int = 100,
        checkpointer: Checkpointer | None = None,
        emit: Emit | None = None,
        watchdog: LoopWatchdog | None = None,
        budgets: Budgets | None = None,
        measured: MeasuredPolicy | None = None,
    ) -> None:
        self.plan = plan
        self.runner = runner
        self.mode: Mode = runner.mode
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.thread_id = thread_id
        self.recursion_limit = recursion_limit
        self.checkpointer = checkpointer
        self._emit: Sink | Emit = emit if emit is not None else _nobody
        self.calls: list[NodeCall] = []
        self.watchdog = watchdog  # watches the loop for exactly this run
        self.budgets = budgets  # limits, rates and lane caps shared by every call
        self.measured = measured  # the profile snapshot this run was planned from
        # Calls of this step's batches whose Send payload could not be pickled.
        self._refused: dict[Any, PayloadError] = {}
        self._loads: list[Mark] = []  # worker_init builds, drawn as slices in the trace
        self._failures_logged: dict[int, int] = {}  # step -> node_failed lines so far
        self.started_at: float | None = None  # time.time() when run() began
        self.log = log.bind(run_id=self.run_id, thread_id=thread_id, mode=self.mode)

    def __repr__(self) -> str:
        return f"<Scheduler run={self.run_id} mode={self.mode} calls={len(self.calls)}>"

    # -- entry ------------------------------------------------------------

    def start_cursor(self, state: BaseModel, step: int = 0) -> RunCursor:
        """The cursor of a fresh run: START's edges and branches on the input."""
        tasks = self._route([START], state, step=-1, fanin={})
        return RunCursor(state=state, step=step, tasks=tasks)

    async def run(self, cursor: RunCursor, *, resumed: bool = False) -> RunResult:
        """Run from ``cursor`` to the end; the loop watchdog, if any, watches this run."""
        if self.watchdog is None:
            return await self._run(cursor, resumed=resumed)
        async with self.watchdog:
            return await self._run(cursor, resumed=resumed)

    async def _run(self, cursor: RunCursor, *, resumed: bool) -> RunResult:
        self.started_at = time.time()
        t0 = time.perf_counter()
        first_step = cursor.step
        self._emit(
            RunStarted(
                run_id=self.run_id,
                time=time.time(),
                thread_id=self.thread_id,
                mode=self.mode,
                resumed_from_step=first_step if resumed else None,
            )
        )
        self.log.info("run_started", step=first_step)
        status = "failed"
        error: BaseException | None = None
        try:
            if not resumed:
                await self._save(cursor, "running")
            while cursor.tasks:
                if cursor.step - first_step >= self.recursion_limit:
                    raise RecursionLimitError(
                        f"the run took more than recursion_limit={self.recursion_limit} "
                        f"steps (next step {cursor.step} would run "
                        f"{[t.node for t in cursor.tasks]}); check the graph's cycles for a "
                        "missing exit, or raise recursion_limit"
                    )
                cursor = await self._step(cursor)
            status = "done"
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            wall = time.perf_counter() - t0
            if self.watchdog is not None:
                self.watchdog.flush()  # a block in the last step, before RunFinished
            self._emit(
                RunFinished(
                    run_id=self.run_id,
                    time=time.time(),
                    status=status,  # type: ignore[arg-type]
                    steps=cursor.step - first_step,
                    wall_s=wall,
                    error=f"{type(error).__name__}: {error}" if error else None,
                )
            )
            self.log.info("run_finished", status=status, steps=cursor.step, wall_s=round(wall, 4))
        metrics = compute_metrics(
            self.calls, wall, cursor.step - first_step, self.runner.cpu_workers
        )
        return RunResult(
            state=cursor.state,
            trace=Trace(
                calls=tuple(self.calls),
                run_id=self.run_id,
                driver_pid=os.getpid(),
                marks=self._marks(),
            ),
            metrics=metrics,
            run_id=self.run_id,
            thread_id=self.thread_id,
            mode=self.mode,
        )

    # -- one super-step ---------------------------------------------------

    async def _step(self, cursor: RunCursor) -> RunCursor:
        step = cursor.step
        t0 = time.perf_counter()
        todo = [t for t in cursor.tasks if t.order not in cursor.pending]
        if bool(self._emit):
            self._emit(
                StepStarted(
                    run_id=self.run_id, time=time.time(), step=step, nodes=[t.node for t in todo]
                )
            )
        self.log.debug("step_started", step=step, calls=len(todo))
        done: dict[tuple[str, int], _TaskResult] = {}
        try:
            if self.mode == "sequential":
                for task in todo:
                    done[task.order] = await self._run_task(cursor.state, step, task)
            else:
                self._refused = self._open_batches(todo, step)
                try:
                    await _all_or_none(
                        [self._collect(cursor.state, step, task, done) for task in todo]
                    )
                finally:
                    self._refused = {}
                    await self.runner.close_batches()
        except asyncio.CancelledError:
            # Keep what finished: a resume re-runs only the rest.
            if self._saving:
                await _finish(self._save_partial(cursor, done, "interrupted"))
            raise
        except Exception:
            # Not a node's failure (those come back as results): an engine
            # error. The step's other calls were stopped; keep what finished.
            if self._saving:
                await _finish(self._save_partial(cursor, done, "failed"))
            raise
        failures = sorted(
            (r for r in done.values() if r.error is not None), key=lambda r: r.task.order
        )
        logged = self._failures_logged.pop(step, 0)
        if logged > FAILURES_LOGGED_PER_STEP:
            # A fan-out that fails thousands of times must not print thousands of lines.
            self.log.warning(
                "node_failures_summarised",
                step=step,
                failed_attempts=logged,
                as_warnings=FAILURES_LOGGED_PER_STEP,
                hint="the rest were logged at debug level; the step's NodeError names the first",
            )
        writes = {order: r.updates or {} for order, r in done.items() if r.error is None}
        writes.update(cursor.pending)
        ok = not failures
        if bool(self._emit):
            self._emit(
                StepFinished(
                    run_id=self.run_id,
                    time=time.time(),
                    step=step,
                    duration_s=time.perf_counter() - t0,
                    ok=ok,
                )
            )
        self.log.debug(
            "step_finished", step=step, ok=ok, duration_s=round(time.perf_counter() - t0, 6)
        )
        if failures:
            await self._save_failed_step(cursor, writes)
            first = failures[0].error
            assert first is not None
            if len(failures) > 1:
                others = ", ".join(repr(f.task.node) for f in failures[1:])
                first.add_note(f"in the same step {others} also failed")
            raise first
        try:
            state = self.plan.schema.merge(
                cursor.state,
                [Write(node, index, upd) for (node, index), upd in writes.items()],
                step,
            )
            fanin = {k: set(v) for k, v in cursor.fanin.items()}
            ran = sorted({t.node for t in cursor.tasks})
            tasks = self._route(ran, state, step, fanin)
        except Exception:
            # Every call of the step succeeded, but merging or routing their
            # writes failed (a conflict, a router's bug): keep the writes, so
            # a resume merges and routes again without re-running the calls.
            await self._save_failed_step(cursor, writes)
            raise
        nxt = RunCursor(state=state, step=step + 1, tasks=tasks, fanin=fanin)
        # The step is done: a cancellation now must not lose its saved writes.
        await self._save_fully(nxt, "running" if tasks else "done", writes)
        return nxt

    async def _save_failed_step(
        self, cursor: RunCursor, writes: Mapping[tuple[str, int], Mapping[str, Any]]
    ) -> None:
        """Save step ``cursor.step`` as failed, with ``writes`` pending for the resume."""
        failed = RunCursor(
            state=cursor.state,
            step=cursor.step,
            tasks=cursor.tasks,
            fanin=cursor.fanin,
            pending=dict(writes),
        )
        await self._save_fully(failed, "failed")

    async def _collect(
        self, state: BaseModel, step: int, task: Task, done: dict[tuple[str, int], _TaskResult]
    ) -> None:
        done[task.order] = await self._run_task(state, step, task)

    async def _run_task(self, state: BaseModel, step: int, task: Task) -> _TaskResult:
        """Call one task with its retry policy; never raises but for cancellation.

        Two budgets: ``failures`` (errors of the node's own, and crashes an
        executor attributed itself, such as Dask's ``KilledWorker``) go
        through the node's ``RetryPolicy``; ``crashes`` the process lane
        attributed to this call (its worker died under it) are the engine's:
        the call runs again at once, whatever its policy says, until its
        ``POISON_AFTER_CRASHES``-th crash fails it as poison. A crash is often
        not the call's doing (a neighbour's memory, a worker dying just after
        it returned a result), so one must not fail a run with no policy.
        """
        node = self.plan.nodes[task.node]
        policy = node.spec.retry or NO_RETRY
        attempt = 1
        failures = 0
        crashes = 0
        while True:
            err = await self._attempt(node, state, step, task, attempt)
            if isinstance(err, _TaskResult):
                return err
            cause = err.__cause__ if err.__cause__ is not None else err
            delay = 0.0
            if isinstance(err, WorkerCrashedError):
                crashes += 1
            if isinstance(err, WorkerCrashedError) and isinstance(cause, WorkerLost):
                retry = crashes < POISON_AFTER_CRASHES
            else:
                failures += 1
                # Bad updates and payloads that cannot cross the process boundary
                # would fail the same way again: never retried.
                retry = not isinstance(err, InvalidUpdateError) and (
                    not isinstance(cause, CallRefused)
                    and (policy.should_retry(cause, failures) or policy.should_retry(err, failures))
                )
                retry = retry and crashes < POISON_AFTER_CRASHES
                delay = policy.delay(failures)
            if isinstance(err, WorkerCrashedError) and crashes >= POISON_AFTER_CRASHES:
                err.add_note(
                    f"poison: {task.node!r} crashed its worker {crashes} times, so it is not "
                    "run again (the engine re-runs a crashed call, apart from its RetryPolicy, "
                    f"until its {POISON_AFTER_CRASHES}rd crash); find what kills the process "
                    "(memory, native code)"
                )
            self._emit(
                NodeFailed(
                    run_id=self.run_id,
                    time=time.time(),
                    step=step,
                    node=task.node,
                    index=task.index,
                    lane=node.lane,
                    attempt=attempt,
                    error=f"{getattr(err, 'error_type', '') or type(err).__name__}: {err}",
                    will_retry=retry,
                )
            )
            logged = self._failures_logged.get(step, 0) + 1
            self._failures_logged[step] = logged
            say = self.log.warning if logged <= FAILURES_LOGGED_PER_STEP else self.log.debug
            say(
                "node_failed",
                step=step,
                node=task.node,
                index=task.index,
                attempt=attempt,
                error=f"{getattr(err, 'error_type', '') or type(err).__name__}",
                will_retry=retry,
            )
            if not retry:
                return _TaskResult(task=task, error=err)
            if delay > 0:
                await asyncio.sleep(delay)
            attempt += 1

    async def _attempt(
        self, node: PlanNode, state: BaseModel, step: int, task: Task, attempt: int
    ) -> _TaskResult | NodeError | InvalidUpdateError:
        lane = node.lane
        spec = node.spec
        arg: Any = task.payload if task.has_payload else state
        if node.reads is not None and not task.has_payload:
            # Lean dispatch: only the fields the node reads (copied when in process).
            arg = node.reads.project(state, copy_values=not self.runner.crosses_process(lane))
        elif not self.runner.crosses_process(lane):
            # In-process calls get a private copy; pickling copies for the process lane.
            arg = self.plan.schema.copy(arg) if not task.has_payload else copy.deepcopy(arg)
        if bool(self._emit):  # per-call events are built only for someone listening
            self._emit(
                NodeStarted(
                    run_id=self.run_id,
                    time=time.time(),
                    step=step,
                    node=task.node,
                    index=task.index,
                    lane=lane,
                    attempt=attempt,
                )
            )
        self.log.debug(
            "node_started", step=step, node=task.node, index=task.index, lane=lane, attempt=attempt
        )
        where = f"node {task.node!r} (step {step}, lane {lane!r}, attempt {attempt})"
        started = time.time()
        try:
            async with self._budget(task, step, spec, lane):
                with self._on_loop(task, spec, lane):
                    refused = self._refused.pop(task.order, None) if attempt == 1 else None
                    if refused is not None:  # its batch could not pickle its payload
                        raise refused
                    outcome = await self.runner.call(
                        task.node,
                        lane,
                        spec.fn,
                        arg,
                        is_coroutine=spec.is_coroutine,
                        timeout=spec.timeout,
                        init=spec.worker_init,
                        key=task.order if attempt == 1 else None,
                        memory=spec.memory_per_worker,
                        guard=self.watchdog,
                        index=task.index,
                    )
        except TimeoutError as exc:
            stopped = (
                "; its worker process was killed and its writes discarded"
                if self.runner.crosses_process(lane)
                else ""
            )
            err: NodeError = NodeTimeoutError(
                f"{where} ran past its timeout of {spec.timeout} s{stopped}; make it faster, "
                "raise timeout=, or add a RetryPolicy",
                node=task.node,
                step=step,
                lane=lane,
                attempt=attempt,
                error_type="TimeoutError",
                error_message=f"timed out after {spec.timeout} s",
            )
            err.__cause__ = exc
            self._record_lost(task, step, lane, attempt, started, "timeout")
            return err
        except CallRefused as exc:
            err = NodeError(
                f"{where}: {exc}",
                node=task.node,
                step=step,
                lane=lane,
                attempt=attempt,
                error_type=type(exc.__cause__ or exc).__name__,
                error_message=str(exc),
            )
            err.__cause__ = exc  # the pickling error itself is exc.__cause__
            self._record_lost(task, step, lane, attempt, started, exc.kind)
            return err
        except Exception as exc:
            if not is_worker_crash(exc):
                raise
            if isinstance(exc, WorkerLost):
                code, pid, what = exc.exitcode, exc.pid, str(exc)
                kind, detail = type(exc.__cause__ or exc).__name__, describe_exit(code)
            else:  # a crash the executor attributed itself (Dask's KilledWorker)
                code, pid = getattr(exc, "exitcode", None), None
                what = f"the worker process running it died ({type(exc).__name__}: {exc})"
                kind, detail = type(exc).__name__, str(exc)
            err = WorkerCrashedError(
                f"{where}: {what}; the other calls of the step were not charged. Find what "
                "kills the process (memory, native code)",
                node=task.node,
                step=step,
                lane=lane,
                attempt=attempt,
                error_type=kind,
                error_message=detail,
                exitcode=code,
                pid=pid,
            )
            err.__cause__ = exc
            self._record_lost(task, step, lane, attempt, started, "crash")
            return err
        self._record(task, step, lane, attempt, outcome)
        if not outcome.ok:
            err = NodeError(
                f"{where} raised {outcome.error_type}: {outcome.error_message}",
                node=task.node,
                step=step,
                lane=lane,
                attempt=attempt,
                error_type=outcome.error_type,
                error_message=outcome.error_message,
                traceback_text=outcome.traceback_text,
            )
            if outcome.error is not None:
                err.__cause__ = outcome.error
            return err
        try:
            updates = self.plan.schema.check_update(task.node, step, outcome.value)
        except InvalidUpdateError as exc:
            return exc
        if bool(self._emit):
            self._emit(
                NodeFinished(
                    run_id=self.run_id,
                    time=time.time(),
                    step=step,
                    node=task.node,
                    index=task.index,
                    lane=lane,
                    attempt=attempt,
                    duration_s=outcome.end - outcome.start,
                    pid=outcome.pid,
                )
            )
        self.log.debug(
            "node_finished",
            step=step,
            node=task.node,
            index=task.index,
            attempt=attempt,
            pid=outcome.pid,
            duration_s=round(outcome.end - outcome.start, 6),
        )
        return _TaskResult(task=task, updates=updates)

    # -- issue 5: budgets, the loop guard, warm workers, batched fan-outs ----

    @contextlib.asynccontextmanager
    async def _budget(
        self, task: Task, step: int, spec: NodeSpec, lane: str
    ) -> AsyncIterator[None]:
        """Hold the call's budgets (resources, lane cap) around it; waiting is an event."""
        if self.budgets is None:
            yield
            return
        async with self.budgets.acquire(
            spec.resources, lane=lane, node=task.node, index=task.index
        ) as wait:
            if wait is not None and wait.waited_s > 0:
                self._emit(
                    BudgetWaited(
                        run_id=self.run_id,
                        time=time.time(),
                        step=step,
                        node=task.node,
                        index=task.index,
                        resources=list(wait.keys),
                        wait_s=wait.waited_s,
                    )
                )
            yield

    def _on_loop(
        self, task: Task, spec: NodeSpec, lane: str
    ) -> contextlib.AbstractContextManager[Any]:
        """Register a call that runs on the loop's thread with the watchdog."""
        if self.watchdog is None or not runs_on_loop(
            lane, self.mode, is_coroutine=spec.is_coroutine
        ):
            return contextlib.nullcontext()
        return self.watchdog.running(task.node, index=task.index, fn=spec.fn)

    def _open_batches(self, todo: Sequence[Task], step: int) -> dict[Any, PayloadError]:
        """Open a batch for each fan-out of many short cpu calls in this step.

        Only in ``parallel`` mode, for ``Send`` calls of a cpu node without a
        timeout (a timeout kills a worker, and with it a chunk's innocent
        calls) and outside any budget (a budget lets calls through a few at
        a time, which chunks would only delay). Chunk sizes come from the
        measured dispatch cost and the node's measured call time.
        """
        if self.mode != "parallel":
            return {}
        groups: dict[str, list[Task]] = {}
        capped = self.budgets is not None and self.budgets.lane_limit("cpu") is not None
        for task in todo:
            node = self.plan.nodes[task.node]
            spec = node.spec
            if (
                task.has_payload
                and node.lane == "cpu"
                and spec.batch
                and spec.timeout is None
                and not spec.resources
                and not capped
            ):
                groups.setdefault(task.node, []).append(task)
        if not groups:
            return {}
        workers = self.runner.cpu_workers
        refused: dict[Any, PayloadError] = {}
        for name, tasks in groups.items():
            prof = self.measured.nodes.get(name) if self.measured is not None else None
            cost = self.measured.dispatch if self.measured is not None else None
            call_s = prof.wall_s if prof is not None else None
            dispatch_s = None
            if cost is not None:
                dispatch_s = cost.cost(prof.payload_bytes or 0.0 if prof is not None else 0.0)
            if not should_batch(len(tasks), workers=workers, dispatch_s=dispatch_s, call_s=call_s):
                continue
            plan = plan_chunks(len(tasks), workers=workers, dispatch_s=dispatch_s, call_s=call_s)
            spec = self.plan.nodes[name].spec
            args = {t.order: t.payload for t in tasks}
            refused.update(
                self.runner.open_batch(
                    name, spec.fn, plan, args, spec.worker_init, spec.memory_per_worker
                )
            )
            self.log.info(
                "cpu_batch_planned",
                node=name,
                step=step,
                calls=len(tasks),
                chunks=len(plan.sizes),
                reason=plan.reason,
            )
        return refused

    def _marks(self) -> tuple[Mark, ...]:
        marks: list[Mark] = []
        if self.watchdog is not None:
            marks += self.watchdog.marks()
        if self.budgets is not None:
            marks += self.budgets.marks()
        marks += self._loads
        return tuple(sorted(marks, key=lambda m: m.start))

    def _record(self, task: Task, step: int, lane: str, attempt: int, outcome: CallOutcome) -> None:
        if outcome.load_name:
            self._loads.append(
                load_mark(
                    outcome.load_name,
                    outcome.load_start,
                    outcome.load_end,
                    pid=outcome.pid,
                    thread=outcome.load_thread or outcome.thread,
                    host=outcome.host,
                    node=task.node,
                )
            )
            self._emit(
                WorkerLoaded(
                    run_id=self.run_id,
                    time=outcome.load_end,
                    node=task.node,
                    resource=outcome.load_name,
                    pid=outcome.pid,
                    load_s=max(0.0, outcome.load_end - outcome.load_start),
                )
            )
        self.calls.append(
            NodeCall(
                node=task.node,
                step=step,
                lane=lane,
                attempt=attempt,
                pid=outcome.pid,
                thread=outcome.thread,
                host=outcome.host,
                start=outcome.start,
                end=outcome.end,
                cpu_s=outcome.cpu_s,
                bytes_in=outcome.bytes_in,
                bytes_out=outcome.bytes_out,
                ok=outcome.ok,
                index=task.index,
                error=None if outcome.ok else outcome.error_type,
                queued_s=outcome.queued_s,
                load_s=max(0.0, outcome.load_end - outcome.load_start),
            )
        )

    def _record_lost(
        self, task: Task, step: int, lane: str, attempt: int, started: float, why: str
    ) -> None:
        """A call whose worker-side record never came back: timed from the driver."""
        self.calls.append(
            NodeCall(
                node=task.node,
                step=step,
                lane=lane,
                attempt=attempt,
                pid=-1,
                thread=-1,
                host=hostname(),
                start=started,
                end=time.time(),
                cpu_s=0.0,
                ok=False,
                index=task.index,
                error=why,
            )
        )

    # -- routing ----------------------------------------------------------

    def _route(
        self, ran: Sequence[str], state: BaseModel, step: int, fanin: dict[str, set[str]]
    ) -> list[Task]:
        """The tasks of the next step, from what ran in this one (sorted)."""
        triggered: set[str] = set()
        sends: list[Send] = []
        for name in ran:
            triggered.update(t for t in self.plan.edges.get(name, ()) if t != END)
            for fan in self.plan.fanins_by_source.get(name, ()):
                fanin.setdefault(fan.key, set()).add(name)
            for branch in self.plan.branches.get(name, ()):
                try:
                    result = branch.route(self.plan.schema.copy(state))
                except Exception as exc:
                    raise GraphError(
                        f"the router of the conditional edge from {name!r} raised "
                        f"{type(exc).__name__}: {exc} ({_routing(step)}); fix the router, then "
                        "resume: the step's writes are kept, its nodes do not run again",
                        node=name,
                        step=step,
                    ) from exc
                if inspect.isawaitable(result):
                    if inspect.iscoroutine(result):
                        result.close()  # never awaited: close it so it does not warn later
                    raise GraphError(
                        f"the router of the conditional edge from {name!r} is async "
                        f"({_routing(step)}); routers must be plain functions of the state",
                        node=name,
                        step=step,
                    )
                self._interpret(name, branch.path_map, result, triggered, sends, step)
        for fan in self.plan.fanins:
            if fanin.get(fan.key, set()) >= fan.sources:
                triggered.add(fan.target)
        for fan in self.plan.fanins:
            # A fan-in target that runs starts counting its sources afresh.
            if fan.target in triggered:
                fanin.pop(fan.key, None)
        tasks = [Task(node=n) for n in triggered]
        tasks += [
            Task(node=s.node, index=i, payload=s.arg, has_payload=True) for i, s in enumerate(sends)
        ]
        return sorted(tasks, key=lambda t: t.order)

    def _interpret(
        self,
        source: str,
        path_map: Mapping[Any, str] | None,
        result: Any,
        triggered: set[str],
        sends: list[Send],
        step: int,
    ) -> None:
        items: Iterable[Any] = result if isinstance(result, list | tuple) else [result]
        for item in items:
            if isinstance(item, Send):
                if item.node not in self.plan.nodes:
                    raise GraphError(
                        f"the router of {source!r} sent to unknown node {item.node!r} "
                        f"({_routing(step)})",
                        node=source,
                        step=step,
                    )
                sends.append(item)
                continue
            if item is None and (path_map is None or None not in path_map):
                # Most likely a branch of the router that forgot to return:
                # ending the run silently would hide it (LangGraph refuses it too).
                raise GraphError(
                    f"the router of the conditional edge from {source!r} returned None "
                    f"({_routing(step)}); return END to end the run there (or a node name, a "
                    "list of them, or Sends)",
                    node=source,
                    step=step,
                )
            if item == END:
                continue
            target = item
            if path_map is not None:
                if item not in path_map:
                    raise GraphError(
                        f"the router of {source!r} returned {item!r}, which is not in its "
                        f"path_map {sorted(map(str, path_map))} ({_routing(step)})",
                        node=source,
                        step=step,
                    )
                target = path_map[item]
                if target == END:
                    continue
            if target not in self.plan.nodes:
                raise GraphError(
                    f"the router of {source!r} returned {target!r}, which is not a node "
                    f"(known: {sorted(self.plan.nodes)}; {_routing(step)})",
                    node=source,
                    step=step,
                )
            triggered.add(target)

    # -- checkpoints ------------------------------------------------------

    @property
    def _saving(self) -> bool:
        return self.checkpointer is not None and self.thread_id is not None

    async def _save(
        self,
        cursor: RunCursor,
        status: str,
        written: Mapping[tuple[str, int], Mapping[str, Any]] | None = None,
    ) -> None:
        if self.checkpointer is None or self.thread_id is None:
            return
        await self.checkpointer.put(self.to_checkpoint(cursor, status, written))

    async def _save_fully(
        self,
        cursor: RunCursor,
        status: str,
        written: Mapping[tuple[str, int], Mapping[str, Any]] | None = None,
    ) -> None:
        """``_save``, finished even if the run is cancelled meanwhile (see ``_finish``)."""
        if self._saving:
            await _finish(self._save(cursor, status, written))

    async def _save_partial(
        self, cursor: RunCursor, done: Mapping[tuple[str, int], _TaskResult], status: str
    ) -> None:
        """Save the step with the writes of the calls that finished (a stopped step)."""
        writes = dict(cursor.pending)
        writes.update({o: r.updates or {} for o, r in done.items() if r.error is None})
        interrupted = RunCursor(
            state=cursor.state,
            step=cursor.step,
            tasks=cursor.tasks,
            fanin=cursor.fanin,
            pending=writes,
        )
        try:
            await self._save(interrupted, status)
        except Exception:
            self.log.exception("checkpoint_on_stop_failed", step=cursor.step, status=status)

    def _run_codec(self) -> RunCodec:
        from .checkpoint.snapshot import RunCodec, Topology

        topology = Topology(
            nodes=frozenset(self.plan.nodes),
            fanins={f.key: f.sources for f in self.plan.fanins},
        )
        return RunCodec(self.plan.schema, topology)

    def to_checkpoint(
        self,
        cursor: RunCursor,
        status: str,
        written: Mapping[tuple[str, int], Mapping[str, Any]] | None = None,
    ) -> Checkpoint:
        """The checkpoint of ``cursor`` (``engine.checkpoint.snapshot``), or CheckpointError.

        ``written``: the writes of the step that made ``cursor.state``, to
        name the node behind a value that cannot be saved.
        """
        return self._run_codec().save(
            thread_id=self.thread_id or "",
            run_id=self.run_id,
            step=cursor.step,
            state=cursor.state,
            tasks=cursor.tasks,
            fanin=cursor.fanin,
            pending=cursor.pending,
            status=status,
            started_at=self.started_at,
            written=written,
        )

    def from_checkpoint(self, cp: Checkpoint) -> RunCursor:
        """The cursor a checkpoint describes; validated, never executes stored code."""
        restored = self._run_codec().load(cp)
        return RunCursor(
            state=restored.state,
            step=restored.step,
            tasks=[
                Task(node=t.node, index=t.index, payload=t.payload, has_payload=t.has_payload)
                for t in restored.tasks
            ],
            fanin=restored.fanin,
            pending=restored.pending,
        )


#: Calls of a step started per turn of the event loop.
START_SLICE = 128


async def _all_or_none(calls: Sequence[Coroutine[Any, Any, None]]) -> None:
    """Run ``calls`` at once; the first to raise stops the others (TaskGroup semantics).

    ``gather`` would propagate that error at once and leave the other calls
    running, unsupervised, past the step's end. Here they are cancelled and
    awaited first (their lanes take cpu calls back, killing busy workers),
    then the error propagates as it is (no ExceptionGroup: callers catch the
    engine's own types). Cancelling this cancels them all, awaited the same way.
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
            if (i + 1) % START_SLICE == 0:
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


def _routing(step: int) -> str:
    """Which routing a router error happened in, for its message."""
    return "routing the input, before step 0" if step < 0 else f"routing after step {step}"


async def _finish(save: Coroutine[Any, Any, None]) -> None:
    """Await a checkpoint write to its end even when cancelled, then let the cancel through.

    Scenario: the run is cancelled while a step's checkpoint is being
    written. ``shield`` alone would raise at once and leave the write running
    unsupervised past the run's end (and past the release of the thread's
    lock); here the cancelled run waits for the write, then stops.
    """
    task = asyncio.ensure_future(save)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            log.error("checkpoint_failed_while_cancelling", error=repr(task.exception()))
        raise

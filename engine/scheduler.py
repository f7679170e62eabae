"""The super-step loop: route -> dispatch -> barrier -> merge -> save.

::

    RunCursor (state, step, tasks)
        |
        |  dispatch: every call of the step at once (one at a time in
        |  sequential mode), each attempt settled as it ends       engine.dispatch
        |  (retries, the run's errors: engine.attempts)            engine.attempts
        v
    barrier: every call settled; a failure fails the step, keeping
        the writes of the calls that succeeded as pending writes
        |
    merge: the writes in (node, Send index) order, through reducers   engine.state
        |
    route: edges, fan-ins, branches, Sends -> the next step's tasks    engine.routing
        |
    save: the next cursor, before the next step starts                 engine.saving
        |
    no task triggered -> the run ends; what it said: engine.recorder

A node that asks a person (``interrupt()``) stops the run at the barrier:
the step's finished writes are saved as pending, with the questions, and
the run ends interrupted (``RunResult.interrupts``); a resume runs only the
interrupted tasks again, with their answers (``engine.interrupts``). A
breakpoint (``interrupt_before``/``interrupt_after``) stops it the same way
before a step runs those nodes, or after a step ran them.

A cancelled step saves the writes of the calls that finished the same way
(status "interrupted"), so a resume re-runs only the rest. Only this module
changes a run's state; the dispatcher runs calls, the recorder tells.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .attempts import StepAttempts
from .context import current as current_context
from .context import enter, leave, with_resumes
from .errors import GraphRecursionError
from .events import RunStatus
from .interrupts import Asked, Breakpoints, Interrupt, Paused, interrupt_id, stops_at
from .routing import next_tasks, start_tasks
from .saving import RunCursor, RunSaver
from .state import Write, writes_of
from .subgraph_node import ParentCommand
from .trace import Metrics, Trace, compute_metrics

if TYPE_CHECKING:
    from .dispatch import Dispatcher
    from .plan import Plan
    from .recorder import Recorder
    from .resources import Clock

S = TypeVar("S")


@dataclass(frozen=True)
class RunResult(Generic[S]):
    """What ``arun`` returns: the final state, the trace, and the metrics (computed from
    the trace when first read: a fan-out of thousands of calls does not wait for them)."""

    state: S
    trace: Trace
    run_id: str
    thread_id: str | None
    mode: str
    #: The final channel values, for a state the run holds as values (None otherwise).
    values: Mapping[str, Any] | None = None
    #: The questions the run stopped on (``interrupt()``), in (node, Send index) order.
    interrupts: tuple[Interrupt[Any], ...] = ()
    #: Whether the run stopped before its end: a question, or a breakpoint. Resume it
    #: with ``arun(Command(resume=...))`` or ``arun(None)`` on its thread.
    interrupted: bool = False
    #: What ``metrics`` is computed from besides the trace: wall seconds, steps, cpu workers.
    measured: tuple[float, int, int] = field(default=(0.0, 0, 1), repr=False, compare=False)

    @cached_property
    def metrics(self) -> Metrics:
        """The run's metrics (``Metrics``), from its trace, wall time, steps and workers."""
        wall, steps, workers = self.measured
        return compute_metrics(self.trace.calls, wall, steps, workers)


@dataclass(frozen=True)
class _Stop:
    """Why a run stopped before its end: the questions asked (none for a breakpoint)."""

    asked: list[Asked]


class Scheduler:
    """Runs a plan's super-steps for one ``arun`` call.

    Invariant: the cursor is only replaced at a barrier, after the step's
    writes merged and the next cursor was saved; a step's calls are only
    ever run through the dispatcher, and its outcomes only ever judged by
    its ``StepAttempts``.
    """

    def __init__(
        self,
        plan: Plan,
        dispatcher: Dispatcher,
        recorder: Recorder,
        saver: RunSaver,
        *,
        clock: Clock,
        recursion_limit: int = 100,
        interrupt_before: Breakpoints = frozenset(),
        interrupt_after: Breakpoints = frozenset(),
        checkpoint_ns: str = "",
    ) -> None:
        self.plan = plan
        self.dispatcher = dispatcher
        self.recorder = recorder
        self.saver = saver
        self.clock = clock
        self.recursion_limit = recursion_limit
        self.interrupt_before = interrupt_before
        self.interrupt_after = interrupt_after
        self.checkpoint_ns = checkpoint_ns

    def __repr__(self) -> str:
        return f"<Scheduler run={self.recorder.run_id} calls={len(self.recorder.calls)}>"

    def start_cursor(self, state: Any, step: int = 0) -> RunCursor:
        """The cursor of a fresh run: START's edges and branches on the input."""
        fanin: dict[str, set[str]] = {}  # a deferred node START triggered is held there
        tasks = start_tasks(self.plan, state, fanin)
        return RunCursor(state=state, step=step, tasks=tasks, fanin=fanin)

    async def run(self, cursor: RunCursor, *, resumed: bool = False) -> RunResult[Any]:
        """Run from ``cursor`` until no task is triggered; the final state, trace, metrics."""
        self.saver.started_at = self.clock.time()
        t0 = self.clock.monotonic()
        first = cursor.step
        self.recorder.run_started(first, resumed=resumed)
        if self.recorder.chunks is not None:
            self.recorder.values(cursor.state)
        status, error = RunStatus.FAILED, None
        stop: _Stop | None = None
        state = cursor.state
        try:
            if not resumed:
                await self.saver.save(cursor, "running")
            while cursor.tasks:
                if cursor.step - first >= self.recursion_limit:
                    raise GraphRecursionError(
                        f"the run took more than recursion_limit={self.recursion_limit} "
                        f"steps (next step {cursor.step} would run "
                        f"{[t.node for t in cursor.tasks]}); check the graph's cycles for a "
                        "missing exit, or raise recursion_limit"
                    )
                # A resumed run goes past the breakpoint it stopped at.
                if (cursor.step > first or not resumed) and stops_at(
                    self.interrupt_before, (t.node for t in cursor.todo())
                ):
                    stop = await self._pause(cursor)
                    break
                ran = cursor.tasks
                cursor, stop = await self._step(cursor)
                if stop is not None:
                    break
                if cursor.tasks and stops_at(self.interrupt_after, (t.node for t in ran)):
                    stop = await self._pause(cursor)
                    break
            status = RunStatus.DONE if stop is None else RunStatus.INTERRUPTED
            state = cursor.state if stop is None else self._with_pending(cursor)
        except asyncio.CancelledError:
            status = RunStatus.CANCELLED
            raise
        except ParentCommand:
            # A subgraph's run that hands its parent a Command ends there, as it should.
            status = RunStatus.DONE
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            # A checkpoint still being written (durability="async") ends before the run.
            await self.saver.flush(quiet=error is not None or status != RunStatus.DONE)
            wall = self.clock.monotonic() - t0
            self.recorder.run_finished(status, cursor.step - first, wall, error)
        return RunResult(
            state=self.plan.schema.final(state),
            trace=self.recorder.trace(),
            run_id=self.recorder.run_id,
            thread_id=self.saver.thread_id,
            mode=self.dispatcher.mode,
            values=state if self.plan.schema.held == "values" else None,
            interrupts=tuple(a.interrupt for a in stop.asked) if stop is not None else (),
            interrupted=stop is not None,
            measured=(wall, cursor.step - first, self.dispatcher.lanes.cpu_workers),
        )

    def _with_pending(self, cursor: RunCursor) -> Any:
        """The state of a stopped step with the writes of its finished calls (what the caller
        of an interrupted run sees, as a snapshot of the thread shows it)."""
        if not cursor.pending:
            return cursor.state
        merged = writes_of(cursor.pending)
        try:
            return self.plan.schema.merge(cursor.state, merged, cursor.step)
        except Exception:  # the writes conflict: the resume raises it, when it merges them
            return cursor.state

    async def _pause(self, cursor: RunCursor) -> _Stop:
        """Stop at a breakpoint, before ``cursor``'s step: saved as interrupted."""
        await self.saver.save(replace(cursor, paused=True), "interrupted")
        if self.recorder.chunks is not None:
            self.recorder.chunks("updates", {"__interrupt__": ()})
        return _Stop([])

    def _ask_id(self, step: int, order: tuple[str, int], n: int) -> str | None:
        """The id of question ``n`` of task ``order`` in ``step``; None while the step's
        checkpoint is still being written (``async`` durability: its id is not known)."""
        saver = self.saver
        if saver.writing:
            return None
        thread = saver.thread_id or saver.run_id
        where = saver.checkpoint_id or f"{saver.run_id}:{step}"
        return interrupt_id(thread, self.checkpoint_ns, where, order, n)

    def _asked(self, cursor: RunCursor, attempts: StepAttempts) -> list[Asked]:
        """The questions the step's calls asked, each with its id (the step's checkpoint
        is written: ``flush``)."""
        out: list[Asked] = []
        for order in sorted(attempts.interrupted):
            q = attempts.interrupted[order]
            nested = getattr(q.error, "asked", None)
            if nested:  # a subgraph's questions, all of them, with their own ids
                out.extend(Asked(order[0], order[1], n, i) for n, i in enumerate(nested))
                continue
            ident = self._ask_id(cursor.step, order, q.index)
            assert ident is not None
            out.append(Asked(order[0], order[1], q.index, Interrupt(value=q.value, id=ident)))
        return out

    def _tell_asked(self, stopped: RunCursor, attempts: StepAttempts, asked: list[Asked]) -> None:
        """Stream a step that stopped on questions: the questions (``updates`` and
        ``values`` chunks), then the finished calls' updates and the state with them."""
        chunks = self.recorder.chunks
        assert chunks is not None
        shown = tuple(a.interrupt for a in asked)
        chunks("updates", {"__interrupt__": shown})
        chunks("values", Paused(stopped.state, shown))
        done = sorted((Write(n, i, u) for (n, i), u in attempts.writes.items()), key=_order)
        if done:
            named = ((attempts.shown(w.node, w.index), w.index, w.updates) for w in done)
            self.recorder.updates(stopped.step, named)
            self.recorder.values(self._with_pending(stopped))

    async def _step(self, cursor: RunCursor) -> tuple[RunCursor, _Stop | None]:
        step = cursor.step
        t0 = time.perf_counter()
        todo = cursor.todo()
        self.recorder.step_started(step, todo)
        # dispatch: every call, until each is settled
        attempts = StepAttempts(
            self.plan, step, self.recorder, lambda order, n: self._ask_id(step, order, n)
        )
        resuming = None
        if cursor.resumes:  # the interrupted calls find their answers (context.for_call)
            ctx = current_context()
            if ctx is not None:
                resuming = enter(with_resumes(ctx, cursor.resumes))
        try:
            await self.dispatcher.run_step(
                step, cursor.state, todo, attempts.settle, attempts.settle_many
            )
            if attempts.unhandled:  # error handlers of calls that failed for good
                await attempts.handle(cursor.state)
        except asyncio.CancelledError:
            # Keep what finished: a resume re-runs only the rest.
            await self.saver.save_stopped(
                cursor, attempts.kept_writes(), "interrupted", attempts.kept_gotos()
            )
            raise
        except Exception:
            # Not a node's failure (those settle as outcomes): an engine error.
            # The step's other calls were stopped; keep what finished.
            await self.saver.save_stopped(
                cursor, attempts.kept_writes(), "failed", attempts.kept_gotos()
            )
            raise
        finally:
            if resuming is not None:
                leave(resuming)
        # barrier
        writes: dict[tuple[str, int], Mapping[str, Any]] = dict(attempts.writes)
        writes.update(cursor.pending)
        # The gotos of the writes kept (those of an earlier attempt at the step too) route it.
        if cursor.gotos or attempts.gotos:
            gotos = {**cursor.gotos, **attempts.gotos}
            kept_gotos = {**cursor.gotos, **attempts.kept_gotos()}
        else:
            gotos = kept_gotos = {}
        error = attempts.first_error()
        self.recorder.step_finished(step, time.perf_counter() - t0, ok=error is None)
        if error is not None:
            await self.saver.save(
                cursor.with_pending(
                    _kept(cursor, attempts), resumes=cursor.resumes, gotos=kept_gotos
                ),
                "failed",
                errors=attempts.failed,
            )
            raise error
        if attempts.to_parent:
            # A node of this subgraph routes its parent: the run ends here, saving nothing
            # more (as LangGraph); the parent's node returns the first such Command.
            raise attempts.to_parent[min(attempts.to_parent)]
        if attempts.interrupted:
            # Questions: the run stops here; a resume runs only the interrupted calls.
            await self.saver.flush()  # (async durability) the step's checkpoint id is known
            asked = self._asked(cursor, attempts)
            answered = {o: v for o, v in cursor.resumes.items() if o in attempts.interrupted}
            stopped = cursor.with_pending(_kept(cursor, attempts), asked, answered, kept_gotos)
            await self.saver.save(replace(stopped, paused=True), "interrupted")
            if self.recorder.chunks is not None:
                self._tell_asked(stopped, attempts, asked)
            return stopped, _Stop(asked)
        try:
            # merge, route
            merged = writes_of(writes)
            state = self.plan.schema.merge(cursor.state, merged, step)
            fanin = {k: set(v) for k, v in cursor.fanin.items()} if cursor.fanin else {}
            tasks = cursor.tasks
            ran = [tasks[0].node] if len(tasks) == 1 else sorted({t.node for t in tasks})
            handled: set[str] = set()
            if attempts.handled:  # a node all of whose tasks were handled: its goto routes
                handled = set(ran) - {
                    t.node for t in cursor.tasks if t.order not in attempts.handled
                }
            tasks = next_tasks(self.plan, ran, state, step, fanin, gotos, handled)
        except Exception:
            # Every call of the step succeeded, but merging or routing their
            # writes failed (a conflict, a router's bug): keep the writes, so
            # a resume merges and routes again without re-running the calls.
            await self.saver.save(
                cursor.with_pending(_kept(cursor, attempts), gotos=kept_gotos), "failed"
            )
            raise
        if self.recorder.chunks is not None:
            ordered = sorted(merged, key=_order)
            self.recorder.updates(
                step, ((attempts.shown(w.node, w.index), w.index, w.updates) for w in ordered)
            )
            self.recorder.values(state)
        # save
        nxt = RunCursor(state=state, step=step + 1, tasks=tasks, fanin=fanin)
        if self.saver.active:
            await self.saver.save(nxt, "running" if tasks else "done", writes)
        return nxt, None


def _kept(cursor: RunCursor, attempts: StepAttempts) -> dict[tuple[str, int], Mapping[str, Any]]:
    """The writes a stopped step keeps, so that a resume need not re-run their calls: those
    kept from an earlier attempt at the step, and this attempt's (``kept_writes``)."""
    return {**cursor.pending, **attempts.kept_writes()}


def _order(write: Write) -> tuple[str, int]:
    return (write.node, write.index)


__all__ = ["RunCursor", "RunResult", "Scheduler"]

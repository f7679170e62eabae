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

A cancelled step saves the writes of the calls that finished the same way
(status "interrupted"), so a resume re-runs only the rest. Only this module
changes a run's state; the dispatcher runs calls, the recorder tells.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .attempts import StepAttempts
from .errors import GraphRecursionError
from .events import RunStatus
from .routing import next_tasks, start_tasks
from .saving import RunCursor, RunSaver
from .state import Write
from .trace import Metrics, Trace, compute_metrics

if TYPE_CHECKING:
    from .dispatch import Dispatcher
    from .plan import Plan
    from .recorder import Recorder
    from .resources import Clock

S = TypeVar("S")


@dataclass(frozen=True)
class RunResult(Generic[S]):
    """What ``arun`` returns: the final state, the trace, and the metrics."""

    state: S
    trace: Trace
    metrics: Metrics
    run_id: str
    thread_id: str | None
    mode: str
    #: The final channel values, for a state the run holds as values (None otherwise).
    values: Mapping[str, Any] | None = None


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
    ) -> None:
        self.plan = plan
        self.dispatcher = dispatcher
        self.recorder = recorder
        self.saver = saver
        self.clock = clock
        self.recursion_limit = recursion_limit

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
                cursor = await self._step(cursor)
            status = RunStatus.DONE
        except asyncio.CancelledError:
            status = RunStatus.CANCELLED
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
            state=self.plan.schema.final(cursor.state),
            trace=self.recorder.trace(),
            metrics=compute_metrics(
                self.recorder.calls, wall, cursor.step - first, self.dispatcher.lanes.cpu_workers
            ),
            run_id=self.recorder.run_id,
            thread_id=self.saver.thread_id,
            mode=self.dispatcher.mode,
            values=cursor.state if self.plan.schema.held == "values" else None,
        )

    async def _step(self, cursor: RunCursor) -> RunCursor:
        step = cursor.step
        t0 = time.perf_counter()
        todo = cursor.todo()
        self.recorder.step_started(step, [t.node for t in todo])
        # dispatch: every call, until each is settled
        attempts = StepAttempts(self.plan, step, self.recorder)
        try:
            await self.dispatcher.run_step(step, cursor.state, todo, attempts.settle)
        except asyncio.CancelledError:
            # Keep what finished: a resume re-runs only the rest.
            await self.saver.save_stopped(cursor, attempts.kept_writes(), "interrupted")
            raise
        except Exception:
            # Not a node's failure (those settle as outcomes): an engine error.
            # The step's other calls were stopped; keep what finished.
            await self.saver.save_stopped(cursor, attempts.kept_writes(), "failed")
            raise
        # barrier
        writes: dict[tuple[str, int], Mapping[str, Any]] = dict(attempts.writes)
        writes.update(cursor.pending)
        kept = {**cursor.pending, **attempts.kept_writes()}  # what a resume need not re-run
        error = attempts.first_error()
        self.recorder.step_finished(step, time.perf_counter() - t0, ok=error is None)
        if error is not None:
            await self.saver.save(cursor.with_pending(kept), "failed", errors=attempts.failed)
            raise error
        try:
            # merge, route
            merged = [Write(node, index, upd) for (node, index), upd in writes.items()]
            state = self.plan.schema.merge(cursor.state, merged, step)
            fanin = {k: set(v) for k, v in cursor.fanin.items()}
            ran = sorted({t.node for t in cursor.tasks})
            tasks = next_tasks(self.plan, ran, state, step, fanin, attempts.gotos)
        except Exception:
            # Every call of the step succeeded, but merging or routing their
            # writes failed (a conflict, a router's bug): keep the writes, so
            # a resume merges and routes again without re-running the calls.
            await self.saver.save(cursor.with_pending(kept), "failed")
            raise
        if self.recorder.chunks is not None:
            ordered = sorted(merged, key=_order)
            self.recorder.updates(step, ((w.node, w.index, w.updates) for w in ordered))
            self.recorder.values(state)
        # save
        nxt = RunCursor(state=state, step=step + 1, tasks=tasks, fanin=fanin)
        await self.saver.save(nxt, "running" if tasks else "done", writes)
        return nxt


def _order(write: Write) -> tuple[str, int]:
    return (write.node, write.index)


__all__ = ["RunCursor", "RunResult", "Scheduler"]

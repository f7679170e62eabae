"""A step's attempts as they settle: what each outcome means, and whether its call runs again.

::

    dispatcher --Outcome--> StepAttempts.settle              --> None: settled
                              ok: the update checked (a bad one: InvalidUpdateError)
                                  -> the step's write; a Command: its update the
                                  write, its goto kept for routing (``gotos``)
                              failed: the run's error for it (names node, step,
                                  lane, attempt; NodeTimeoutError, WorkerCrashedError)
                                  run it again?  -> a delay: the call runs again
                                  failed for good, the node has an error_handler:
                                  kept for ``handle``
                              the recorder hears every attempt (NodeFinished / NodeFailed)

    scheduler, after the barrier --> StepAttempts.handle(state)
                              each error handler run in the driver, in (node, Send
                              index) order: its return is the task's write (its goto
                              kept), its error the task's failure

Two budgets per task. ``failures`` (the node's own errors, its timeouts, and
crashes an executor attributed itself, such as Dask's ``KilledWorker``) go
through the node's ``RetryPolicy``; a worker the engine found dead under
the call (``WorkerLost``) is the engine's: the call runs again at once,
whatever its policy says, until its ``POISON_AFTER_CRASHES``-th crash fails
it as poison. A crash is often not the call's doing (a neighbour's memory,
a worker dying just after it returned a result), so one must not fail a
run with no policy. What cannot cross the process boundary (``Refused``)
and updates the schema rejects fail the same way again: never retried.

A call that failed for good whose node has an ``error_handler`` is not a
failure yet: ``handle`` runs the handler once the step's calls all settled
(no handler runs in a step that fails anyway). The handler's return stands
in for the call's, and the task is ``handled``: routing follows its goto,
not the node's edges, and checkpoints keep no write of it (it runs again on
resume). A ``Command``'s goto is kept with its task's write when the step
fails or stops, so that task does not run again.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .context import adapt
from .dispatch import exit_detail
from .errors import InvalidUpdateError, NodeError, NodeTimeoutError, WorkerCrashedError
from .interrupts import GraphBubbleUp, Interrupt
from .lanes.calls import (
    Cancelled,
    Failure,
    Interrupted,
    NodeRaised,
    Outcome,
    Refused,
    TimedOut,
    WorkerLost,
)
from .lgtypes import langgraphs_error
from .policy import NO_RETRY
from .spec import END, Command, ErrorHandler, Send, Task, handler_name
from .streaming import Asking
from .subgraph_node import ParentCommand, ToParent

if TYPE_CHECKING:
    from .plan import Plan
    from .recorder import Recorder
    from .trace import NodeCall

#: A call whose worker died this many times is poison: no retry policy runs it again.
POISON_AFTER_CRASHES = 3

Order = tuple[str, int]


class StepAttempts:
    """The attempts of one step's calls, settled one outcome at a time.

    Invariant: a task's order is in at most one of ``writes``, ``failed`` and
    ``unhandled`` (or ``interrupted``, ``to_parent``), and only once its last attempt
    settled; ``handle`` moves each
    of ``unhandled`` to ``writes`` (and ``handled``) or ``failed``, or, in a step
    that fails anyway, drops it (it runs again on resume). ``_tries``
    holds (failures, crashes) so far for the tasks that failed at least once.
    """

    def __init__(
        self,
        plan: Plan,
        step: int,
        recorder: Recorder,
        ask_id: Callable[[Order, int], str | None] | None = None,
    ) -> None:
        self.plan = plan
        self.step = step
        self.recorder = recorder
        #: The id of a task's n-th question (the scheduler's), None while it is not known
        #: yet: a streamed ``task_result`` lists the questions with their ids.
        self.ask_id = ask_id
        self.writes: dict[Order, Mapping[str, Any]] = {}
        self.failed: dict[Order, NodeError | InvalidUpdateError] = {}
        #: Tasks whose node asked a person (``interrupt()``): no write, never retried.
        self.interrupted: dict[Order, Interrupted] = {}
        #: Tasks of a subgraph's node that returned ``Command(graph=Command.PARENT)``:
        #: no write, no failure; the scheduler hands the first to the parent.
        self.to_parent: dict[Order, ParentCommand] = {}
        #: The ``goto`` of each task that returned a ``Command`` with one (routing's input).
        self.gotos: dict[Order, tuple[str | Send, ...]] = {}
        #: Tasks whose write is their node's error handler's (routing skips their edges).
        self.handled: set[Order] = set()
        #: Calls that failed for good whose node has an error handler (``handle`` runs it).
        self.unhandled: dict[Order, tuple[Task, NodeError]] = {}
        self._tries: dict[Order, list[int]] = {}

    def __repr__(self) -> str:
        return f"<StepAttempts step={self.step} ok={len(self.writes)} failed={len(self.failed)}>"

    def settle(self, out: Outcome) -> float | None:
        """Take one attempt's outcome; the seconds after which its call runs again, or None."""
        call = out.call
        task = call.task
        if out.failure is None:
            try:
                value, goto = command_parts(task.node, self.step, out.value)
                updates = self.plan.schema.check_update(task.node, self.step, value)
            except InvalidUpdateError as exc:
                bad = unawaited(exc, out.value)
                self.recorder.call_failed(out, bad, will_retry=False)
                self.failed[task.order] = bad
                return None
            if value is not out.value:  # a Command: streams show its update, as LangGraph's
                out = out._replace(value=value)
            self.recorder.call_finished(out)
            self.writes[task.order] = updates
            if goto:
                self.gotos[task.order] = goto
            return None
        if isinstance(out.failure, Interrupted):
            q = out.failure
            if self.ask_id is not None and self.recorder.chunks is not None:
                # A subgraph's question keeps the id its own run gave it (engine.subgraphs).
                ident = getattr(q.error, "interrupt_id", "") or self.ask_id(task.order, q.index)
                if ident is not None:
                    out = out._replace(value=Asking((Interrupt(value=q.value, id=ident),)))
            self.recorder.call_finished(out)
            self.interrupted[task.order] = q
            return None
        if self._to_parent(out):
            # Routing the parent graph (engine.subgraph_node), not a failure: never retried,
            # never an error handler's, no NodeFailed.
            self.recorder.call_finished(out)
            assert out.failure is not None and isinstance(out.failure.error, ParentCommand)
            self.to_parent[task.order] = out.failure.error
            return None
        node = self.plan.nodes[task.node]
        error = run_error(out, node.lane)
        failure = out.failure
        tries = self._tries.setdefault(task.order, [0, 0])
        delay = 0.0
        if isinstance(failure, WorkerLost):
            tries[1] += 1
        if isinstance(failure, WorkerLost) and not failure.by_executor:
            retry = tries[1] < POISON_AFTER_CRASHES
        else:
            tries[0] += 1
            policy = node.spec.retry or NO_RETRY
            cause = failure.error if failure.error is not None else error
            retry = (
                not isinstance(failure, Refused)
                and tries[1] < POISON_AFTER_CRASHES
                and (policy.should_retry(cause, tries[0]) or policy.should_retry(error, tries[0]))
            )
            delay = policy.delay(tries[0])
        if isinstance(failure, WorkerLost) and tries[1] >= POISON_AFTER_CRASHES:
            error.add_note(
                f"poison: {task.node!r} crashed its worker {tries[1]} times, so it is not "
                "run again (the engine re-runs a crashed call, apart from its RetryPolicy, "
                f"until its {POISON_AFTER_CRASHES}rd crash); find what kills the process "
                "(memory, native code)"
            )
        self.recorder.call_failed(out, error, will_retry=retry)
        if retry:
            return delay
        if node.spec.error_handler is not None:
            self.unhandled[task.order] = (task, error)
            return None
        self.failed[task.order] = error
        return None

    def settle_many(self, outs: Sequence[Outcome]) -> list[tuple[Outcome, float]]:
        """``settle`` for a chunk's outcomes; the (outcome, delay) of each to run again.

        The usual outcome (a success returning a plain dict of known fields, in a
        run nobody watches call by call) is taken in one tight loop: a chunk brings
        back hundreds. Any other goes through ``settle``.
        """
        retries: list[tuple[Outcome, float]] = []
        quiet = not self.recorder.tells_calls
        plain = self.plan.schema.plain_update
        writes = self.writes
        kept: list[NodeCall] = []
        for out in outs:
            value = out.value
            if quiet and out.failure is None and out.load is None and plain(value):
                kept.append(out.record)
                writes[out.call.task[:2]] = value  # (its order, by a C-level slice)
                continue
            if kept:  # the trace keeps calls in the order they settled
                self.recorder.kept(kept)
                kept = []
            again = self.settle(out)
            if again is not None:
                retries.append((out, again))
        self.recorder.kept(kept)
        return retries

    def _to_parent(self, out: Outcome) -> bool:
        """Whether ``out`` is a ``Command.PARENT`` of a node of a graph run as a subgraph
        (its nodes are ``ToParent``); raised out of a graph run on its own, it fails."""
        failure = out.failure
        return (
            isinstance(failure, NodeRaised)
            and isinstance(failure.error, ParentCommand)
            and isinstance(self.plan.nodes[out.call.task.node].spec.fn, ToParent)
        )

    async def handle(self, state: Any) -> None:
        """Run the error handlers of the calls that failed for good, in (node, Send index)
        order, in the driver, each with its call's input (``state``, or its Send payload)
        and error; none when a call failed with no handler (the step fails anyway)."""
        todo, self.unhandled = self.unhandled, {}
        if self.failed:  # the step fails with its unhandled error; these run again on resume
            return
        for order in sorted(todo):
            task, error = todo[order]
            handler = self.plan.nodes[task.node].spec.error_handler
            assert handler is not None
            if self.plan.schema.conventions == "langgraph":  # LangGraph's timeout class
                error = langgraphs_error(error, self.plan.nodes[task.node].spec.timeout)
            try:
                # its own copy of what the node was given, as a node's
                if task.has_payload:
                    arg = copy.deepcopy(task.payload)
                else:
                    arg = self.plan.schema.copy(state)
                result = await call_handler(handler, arg, error)
            except Exception as exc:
                self.failed[order] = handler_error(task.node, self.step, handler, exc, error)
                continue
            name = handler_name(task.node)
            try:
                value, goto = command_parts(name, self.step, result)
                updates = self.plan.schema.check_update(name, self.step, value)
            except InvalidUpdateError as exc:
                bad = unawaited(exc, result)
                bad.add_note(f"returned by the error_handler of node {task.node!r}")
                self.failed[order] = bad
                continue
            self.writes[order] = updates
            self.handled.add(order)
            if goto:
                self.gotos[order] = goto

    def shown(self, node: str, index: int) -> str:
        """The name a task's write streams under: its node's, or its error handler's."""
        return handler_name(node) if (node, index) in self.handled else node

    def kept_writes(self) -> dict[Order, Mapping[str, Any]]:
        """The writes a failed or stopped step keeps for its resume: every finished call's
        (a ``Command``'s goto is kept with its write: ``kept_gotos``), but not those of
        handled tasks (their node runs again, and its handler if it fails again)."""
        if not self.handled:
            return dict(self.writes)
        return {order: w for order, w in self.writes.items() if order not in self.handled}

    def kept_gotos(self) -> dict[Order, tuple[str | Send, ...]]:
        """The gotos kept with ``kept_writes``: the resume routes the step by them, as if
        their tasks had run again."""
        return {order: g for order, g in self.gotos.items() if order not in self.handled}

    def first_error(self) -> NodeError | InvalidUpdateError | None:
        """The step's error: its first failed call's, in (node, Send index) order."""
        if not self.failed:
            return None
        orders = sorted(self.failed)
        first = self.failed[orders[0]]
        if len(orders) > 1:
            others = ", ".join(repr(node) for node, _ in orders[1:])
            first.add_note(f"in the same step {others} also failed")
        return first


async def call_handler(handler: ErrorHandler, arg: Any, error: NodeError) -> Any:
    """An error handler called as its signature asks (``error``, ``config``, ``runtime``
    by name): awaited on the loop when async, else in a thread (the run's context goes
    with it, so ``get_config()`` works there too)."""
    fn = handler.fn
    if "error" in handler.takes:
        fn = functools.partial(fn, error=error)
    extras = tuple(name for name in handler.takes if name != "error")
    call = adapt(fn, extras, is_coroutine=handler.is_coroutine)
    if handler.is_coroutine:
        return await call(arg)
    return await asyncio.to_thread(call, arg)


def handler_error(
    node: str, step: int, handler: ErrorHandler, exc: Exception, handling: NodeError
) -> NodeError:
    """The run's error for an error handler that raised (``exc``, its ``__cause__``)."""
    name = getattr(handler.fn, "__qualname__", repr(handler.fn))
    fix = (
        "interrupt() cannot ask a person from an error handler: ask in the node, or in "
        "a node the handler's Command(goto=...) goes to"
        if isinstance(exc, GraphBubbleUp)
        else "a handler that raises fails the run: fix the handler, then resume (the "
        "node runs again)"
    )
    err = NodeError(
        f"the error_handler {name!r} of node {node!r} (step {step}) raised "
        f"{type(exc).__name__}: {exc}; {fix}",
        node=node,
        step=step,
        lane="io" if handler.is_coroutine else "thread",
        attempt=handling.attempt,
        error_type=type(exc).__name__,
        error_message=str(exc),
        raised=not isinstance(exc, GraphBubbleUp),
    )
    err.add_note(
        f"raised by the error_handler {name!r} of node {node!r}, handling "
        f"{handling.error_type}: {handling.error_message}"
    )
    err.__cause__ = exc
    return err


def command_parts(node: str, step: int, value: Any) -> tuple[Any, tuple[str | Send, ...]]:
    """A node's return value as (its update, its goto targets): a ``Command`` unwrapped
    (goto as a tuple of node names and ``Send``s, END left out), anything else as is."""
    if type(value) is dict or not isinstance(value, Command):
        return value, ()
    if value.graph is not None:
        raise InvalidUpdateError(
            f"node {node!r} (step {step}) returned Command(graph={value.graph!r}), but this "
            "graph runs on its own, not as a subgraph of another: drop graph= to route in "
            "this graph",
            node=node,
            step=step,
        )
    goto = value.goto
    items = list(goto) if isinstance(goto, list | tuple) else [goto]
    targets: list[str | Send] = []
    for item in items:
        if not isinstance(item, str | Send):
            raise InvalidUpdateError(
                f"node {node!r} (step {step}) returned Command(goto={goto!r}): a goto is a "
                f"node name, a Send, or a list of them, not {type(item).__name__}",
                node=node,
                step=step,
            )
        if item != END:
            targets.append(item)
    return _pairs(node, step, value.update), tuple(targets)


def _pairs(node: str, step: int, update: Any) -> Any:
    """A Command's update given as (key, value) pairs, as a dict (each key once)."""
    if not isinstance(update, list | tuple) or not all(
        isinstance(p, tuple) and len(p) == 2 for p in update
    ):
        return update
    keys = [k for k, _ in update]
    if len(set(keys)) != len(keys):
        raise InvalidUpdateError(
            f"node {node!r} (step {step}) returned a Command whose update pairs name a key "
            f"more than once ({keys}); give each key once (a list value for a reducer)",
            node=node,
            step=step,
        )
    return dict(update)


def unawaited(error: InvalidUpdateError, value: Any) -> InvalidUpdateError:
    """The error for a node that returned an awaitable instead of its update: a missing
    ``await``, said so (the coroutine is closed: it never ran, and never will)."""
    if not inspect.isawaitable(value):
        return error
    name = getattr(value, "__qualname__", None) or type(value).__name__
    if inspect.iscoroutine(value):
        value.close()
    node, step = error.node, error.step
    return InvalidUpdateError(
        f"node {node!r} (step {step}) returned {name}() un-awaited instead of its update: "
        f"a missing 'await'. Write 'return await {name}(...)' in an 'async def' node "
        "(a plain 'def' node cannot await: make it 'async def')",
        node=node,
        step=step,
    )


def run_error(out: Outcome, lane: str) -> NodeError:
    """The run's error for a failed attempt: where it failed, what happened, what to do."""
    failure: Failure | None = out.failure
    assert failure is not None
    call = out.call
    node, step, attempt = call.task.node, call.step, call.attempt
    where = f"node {node!r} (step {step}, lane {lane!r}, attempt {attempt})"
    at: dict[str, Any] = {"node": node, "step": step, "lane": lane, "attempt": attempt}
    err: NodeError
    if isinstance(failure, TimedOut):
        stopped = (
            "; its worker process was killed and its writes discarded"
            if failure.stopped == "killed"
            else ""
        )
        err = NodeTimeoutError(
            f"{where} ran past its timeout of {failure.timeout_s} s{stopped}; make it faster, "
            "raise timeout=, or add a RetryPolicy",
            error_type="TimeoutError",
            error_message=failure.message,
            **at,
        )
    elif isinstance(failure, WorkerLost):
        kind = type(failure.error).__name__ if failure.error is not None else "WorkerLost"
        err = WorkerCrashedError(
            f"{where}: {failure.message}; the other calls of the step were not charged. Find "
            "what kills the process (memory, native code)",
            error_type=kind,
            error_message=exit_detail(failure),
            exitcode=failure.exitcode,
            pid=failure.pid,
            **at,
        )
    elif isinstance(failure, Refused):
        err = NodeError(
            f"{where}: {failure.message}",
            error_type=failure.error_type,
            error_message=failure.message,
            **at,
        )
    elif isinstance(failure, Cancelled):
        err = NodeError(
            f"{where} was cancelled by its own code ({failure.message}); a node that stops "
            "itself fails its step: return instead, or raise an error that says why",
            error_type="CancelledError",
            error_message=failure.message,
            **at,
        )
    else:
        raised = failure if isinstance(failure, NodeRaised) else NodeRaised(failure.message)
        err = NodeError(
            f"{where} raised {raised.error_type}: {raised.message}",
            error_type=raised.error_type,
            error_message=raised.message,
            traceback_text=raised.traceback,
            raised=isinstance(failure, NodeRaised),
            **at,
        )
    if failure.error is not None:
        err.__cause__ = failure.error
    return err


__all__ = [
    "POISON_AFTER_CRASHES",
    "StepAttempts",
    "call_handler",
    "command_parts",
    "handler_error",
    "run_error",
    "unawaited",
]

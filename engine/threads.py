"""The state API: a thread's state, its history, updates, and runs from a past checkpoint.

::

    app.aget_state(thread_id)                 checkpointer.get     -> history.snapshot
    app.aget_state_history(thread_id, ...)    checkpointer.history -> [snapshot, ...]
    app.aupdate_state(thread_id, values, as_node=...)
                                              checkpointer.get -> history.update -> put
    app.arun(None, thread_id=..., checkpoint_id=...)
                                              checkpointer.get -> history.fork -> put,
                                              then the run resumes from the fork
    app.arun(input, thread_id=...)            input_cursor: the input checkpoint
                                              (source "input", its task ``__start__``
                                              writing the input) -> put, then the run

``engine.checkpoint.history`` decides what to show and what to write (pure
functions over checkpoints, LangGraph's ``StateSnapshot`` shape); this module
reads and writes the store for a compiled graph. Values are channel values
(a dict), whatever kind of state the graph has.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .checkpoint.base import Checkpoint
from .checkpoint.history import (
    StateSnapshot,
    config_of,
    empty_snapshot,
    fork,
    snapshot,
    starts_fork,
    update,
    values_of,
)
from .errors import CheckpointError
from .interrupts import answers, may_ask
from .routing import next_tasks, start_tasks
from .saving import RunCursor, RunSaver
from .spec import START, Command, Task
from .state import Write, writes_of

if TYPE_CHECKING:
    from .checkpoint import Checkpointer
    from .plan import Plan


#: A thread as the state API takes it: its id, or a LangGraph-style config naming it
#: (``{"configurable": {"thread_id": ..., "checkpoint_id": ...}}``).
Target = str | Mapping[str, Any]


def named(target: Target, checkpoint_id: str | None, what: str) -> tuple[str, str | None]:
    """The thread id and checkpoint id ``target`` names (``checkpoint_id`` wins when given)."""
    if isinstance(target, str):
        return target, checkpoint_id
    configurable = target.get("configurable") if isinstance(target, Mapping) else None
    thread = configurable.get("thread_id") if isinstance(configurable, Mapping) else None
    if thread is None:
        raise ValueError(
            f"{what} needs a thread: its id, or a config {{'configurable': {{'thread_id': ...}}}}"
            f" (got {target!r:.80})"
        )
    assert isinstance(configurable, Mapping)
    return str(thread), checkpoint_id or configurable.get("checkpoint_id") or None


def _store(checkpointer: Checkpointer | None, what: str) -> Checkpointer:
    if checkpointer is None:
        # A ValueError, as LangGraph raises: the call, not a store, is at fault.
        raise ValueError(
            f"{what} needs a checkpointer: compile(checkpointer=...) (MemoryCheckpointer, "
            "SqliteCheckpointer, PostgresCheckpointer)"
        )
    return checkpointer


def _saver(plan: Plan, checkpointer: Checkpointer, thread_id: str) -> RunSaver:
    return RunSaver(plan, checkpointer, thread_id=thread_id, run_id=uuid.uuid4().hex[:12])


async def get_state(
    plan: Plan,
    checkpointer: Checkpointer | None,
    target: Target,
    checkpoint_id: str | None = None,
) -> StateSnapshot:
    """The thread's state at ``checkpoint_id`` (its latest when None)."""
    store = _store(checkpointer, "get_state")
    thread_id, checkpoint_id = named(target, checkpoint_id, "get_state")
    cp = await store.get(thread_id, checkpoint_id)
    if cp is None:
        if checkpoint_id is not None:
            raise CheckpointError(f"thread {thread_id!r} has no checkpoint {checkpoint_id!r}")
        return empty_snapshot({"configurable": {"thread_id": thread_id}})
    codec = _saver(plan, store, thread_id).codec
    return snapshot(codec, cp, latest=checkpoint_id is None)


async def get_state_history(
    plan: Plan,
    checkpointer: Checkpointer | None,
    target: Target,
    *,
    before: Target | None = None,
    limit: int | None = None,
    filter: Mapping[str, Any] | None = None,
) -> list[StateSnapshot]:
    """The thread's snapshots, newest first, across every branch; ``before``: a checkpoint
    id, or a config naming one."""
    store = _store(checkpointer, "get_state_history")
    thread_id, only = named(target, None, "get_state_history")
    if before is not None and not isinstance(before, str):
        before = named(before, None, "get_state_history(before=...)")[1]
    codec = _saver(plan, store, thread_id).codec
    if only is not None:  # a config naming one checkpoint lists that one (LangGraph's)
        cps = await store.history(thread_id, before=before, filter=filter)
        cps = [cp for cp in cps if cp.checkpoint_id == only][:limit]
    else:
        cps = await store.history(thread_id, before=before, limit=limit, filter=filter)
    return [snapshot(codec, cp) for cp in cps]


async def update_state(
    plan: Plan,
    checkpointer: Checkpointer | None,
    target: Target,
    values: object,
    *,
    as_node: str | None = None,
    checkpoint_id: str | None = None,
) -> dict[str, Any]:
    """Write ``values`` as if ``as_node`` had returned them, on top of ``checkpoint_id``
    (the latest when None); the config naming the new checkpoint."""
    store = _store(checkpointer, "update_state")
    thread_id, checkpoint_id = named(target, checkpoint_id, "update_state")
    base = await store.get(thread_id, checkpoint_id)
    if base is None and checkpoint_id is not None:
        raise CheckpointError(f"thread {thread_id!r} has no checkpoint {checkpoint_id!r}")
    saver = _saver(plan, store, thread_id)
    schema = plan.schema

    def route(
        ran: Sequence[str], after: dict[str, Any], step: int, fanin: dict[str, set[str]]
    ) -> Sequence[Any]:
        state = after if schema.held == "values" else schema.result(after)
        if START in ran:  # an update as the input: START's edges, as a run's first step
            return start_tasks(plan, state, fanin)
        return next_tasks(plan, [n for n in ran if n in plan.nodes], state, step, fanin)

    new = update(
        saver.codec,
        base,
        values,
        as_node,
        thread_id=thread_id,
        run_id=saver.run_id,
        nodes=plan.nodes,
        route=route,
    )
    stored = await store.put(new)
    return config_of(thread_id, stored.checkpoint_id)


async def checkpoint_named(
    checkpointer: Checkpointer, thread_id: str, checkpoint_id: str
) -> Checkpoint:
    """The thread's checkpoint ``checkpoint_id``, or CheckpointError."""
    picked = await checkpointer.get(thread_id, checkpoint_id)
    if picked is None:
        raise CheckpointError(f"thread {thread_id!r} has no checkpoint {checkpoint_id!r}")
    return picked


async def picked_for_run(
    checkpointer: Checkpointer, thread_id: str, checkpoint_id: str, run_id: str
) -> Checkpoint:
    """The checkpoint a run from ``checkpoint_id`` starts from: a ``fork`` of it, stored
    (time travel: the thread's earlier history stays as it was), or an update's own."""
    picked = await checkpoint_named(checkpointer, thread_id, checkpoint_id)
    if not starts_fork(picked, named=True):
        return picked
    return await checkpointer.put(fork(picked, run_id=run_id))


def writes_input(saver: RunSaver) -> bool:
    """Whether a run of this saver's graph starts with an input checkpoint: a state held as
    channel values on a thread (a pydantic state on ``engine.Graph`` is replaced whole by
    its input, and has no values before it)."""
    return saver.active and saver.plan.schema.held == "values"


async def input_cursor(saver: RunSaver, latest: Checkpoint | None, input: object) -> RunCursor:
    """Save the run's input checkpoint and return the cursor of its first step.

    As LangGraph does, a run with an input first saves the thread's values
    before it (``latest``'s: the thread's latest checkpoint, or a past one a
    run with an input branches from; the empty channels of a new thread)
    with one task, ``__start__``, whose write is the input: step -1 on a new
    thread, one step after ``latest`` otherwise, its child. The run's first
    step then starts from those values with the input written through the
    reducers (a message list keeps its history); ``latest``'s own tasks are
    dropped (its questions too, when it stopped on some: the writes of its
    calls that finished are kept).
    """
    schema = saver.plan.schema
    updates = dict(schema.input_updates(input))
    before = values_of(saver.codec, latest) if latest is not None else schema.initial()
    if latest is not None and latest.paused and latest.pending_writes:
        # A new input on a thread stopped on questions: the questions are dropped, the
        # writes of the calls that finished are kept (LangGraph's).
        done = saver.codec.load_writes(latest)
        before = schema.apply(before, writes_of(done), latest.step)
    step = latest.step + 1 if latest is not None else -1
    assert saver.checkpointer is not None
    cp = saver.codec.save(
        thread_id=saver.thread_id or "",
        run_id=saver.run_id,
        step=step,
        state=before,
        tasks=[Task(START)],
        fanin={},
        pending={(START, -1): updates},
        status="running",
        started_at=saver.started_at,
        source="input",
        parent_id=latest.checkpoint_id if latest is not None else None,
        checkpoint_ns=saver.checkpoint_ns,
    )
    await saver.put(saver.placed(cp))  # as the run's durability says
    return _first_step(saver, before, updates, step)


def _first_step(saver: RunSaver, before: Any, updates: Mapping[str, Any], step: int) -> RunCursor:
    state = saver.plan.schema.apply(before, [Write(START, -1, updates)], step)
    fanin: dict[str, set[str]] = {}  # a deferred node START triggered is held there
    tasks = start_tasks(saver.plan, state, fanin)
    return RunCursor(state=state, step=step + 1, tasks=tasks, fanin=fanin)


async def resumed_cursor(saver: RunSaver, cp: Checkpoint) -> RunCursor:
    """The cursor a run resumed from ``cp`` starts with. An input checkpoint (the run
    stopped before its first step was saved): its first step, saved now, as a child of it."""
    if cp.source != "input":
        return saver.cursor_of(cp)
    writes = saver.codec.load_writes(cp)
    cursor = _first_step(saver, values_of(saver.codec, cp), writes.get((START, -1), {}), cp.step)
    assert saver.checkpointer is not None
    first = saver.checkpoint_of(cursor, "running" if cursor.tasks else "done")
    await saver.put(first.model_copy(update={"parent_id": cp.checkpoint_id}))
    return cursor


class _NoResume:
    def __repr__(self) -> str:
        return "NO_RESUME"


#: What ``resume_of`` gives for a run that answers nothing.
NO_RESUME: Any = _NoResume()


def resume_of(input: object) -> Any:
    """The answers a run's input resumes its thread with: ``Command(resume=...)``'s
    (the run then has no input of its own); NO_RESUME for any other input."""
    if not isinstance(input, Command) or input.resume is None:
        return NO_RESUME
    if input.update is not None or input.goto != () or input.graph is not None:
        raise ValueError(
            f"{input!r} as a run's input: only Command(resume=...) is supported there; "
            "write updates with update_state(...) before resuming"
        )
    return input.resume


def answered(cursor: RunCursor, resume: Any, thread_id: str, plan: Plan | None = None) -> RunCursor:
    """``cursor`` with ``resume``'s answers given to its interrupted tasks (RuntimeError
    when they do not fit its open questions): the questions are no longer open.

    With no question open (a run stopped at a breakpoint, or failed), ``resume`` as
    it is (a mapping too) answers the first ``interrupt()`` of one task of the step
    the run resumes with, as LangGraph gives it to the first ``interrupt()`` of that
    step to ask: decided here, before the step runs (its calls may be in other
    processes), as the first task in (node, Send index) order with no answer yet
    whose node's code may ask (``interrupts.may_ask``, read in ``plan``); when no node's
    code shows it, each such task gets it. A task that does not ask drops it, and so
    does the run's next step. A thread that finished has no step to resume.
    """
    if not cursor.asked:
        free = sorted(t.order for t in cursor.todo() if t.order not in cursor.resumes)
        if plan is not None:
            asking = [o for o in free if o[0] in plan.nodes and may_ask(plan.nodes[o[0]].spec.fn)]
            free = asking[:1] or free
        cursor.resumes = {**cursor.resumes, **{order: (resume,) for order in free}}
        return cursor
    cursor.resumes = answers(cursor.asked, cursor.resumes, resume, thread=thread_id)
    cursor.asked = []
    return cursor


async def run_cursor(
    checkpointer: Checkpointer | None,
    saver: RunSaver,
    state: Any,
    thread_id: str | None,
    checkpoint_id: str | None = None,
    input: object = None,
    *,
    start: Callable[..., RunCursor],
) -> RunCursor:
    """The cursor a run starts from: a fresh start (``start(state, step=...)``), the
    thread's input checkpoint, a resume of its latest checkpoint, or a run from a past
    ``checkpoint_id`` (a resume of it, or with an input, a branch from it)."""
    if checkpoint_id is not None:
        with_input = state is not None
        if checkpointer is None or thread_id is None or (with_input and not writes_input(saver)):
            raise CheckpointError(
                "a run from checkpoint_id needs a checkpointer and a thread_id, and for "
                f"a pydantic state input=None (got input {type(state).__name__}); pass "
                "the input with update_state first"
            )
        if with_input:  # a new input on a past checkpoint: a branch from it
            base = await checkpoint_named(checkpointer, thread_id, checkpoint_id)
            return await input_cursor(saver, base, input)
        picked = await picked_for_run(checkpointer, thread_id, checkpoint_id, saver.run_id)
        return await resumed_cursor(saver, picked)
    latest = None
    if checkpointer is not None and thread_id is not None:
        latest = await checkpointer.get_latest(thread_id)
    if state is None:
        if latest is None:
            raise CheckpointError(
                f"thread {thread_id!r} has no checkpoint to resume; start it with an input"
            )
        return await resumed_cursor(saver, latest)
    if latest is not None and latest.status != "done" and not latest.paused:
        raise CheckpointError(
            f"thread {thread_id!r} has an unfinished run (step {latest.step}, "
            f"{latest.status}); resume it with arun(None, thread_id={thread_id!r}), "
            f"abandon it with `await checkpointer.delete_thread({thread_id!r})`, "
            "or use a new thread_id"
        )
    if writes_input(saver):
        # The input checkpoint first; the run continues the thread's values.
        return await input_cursor(saver, latest, input)
    # A new input on a finished thread continues its step numbering.
    return start(state, step=latest.step + 1 if latest else 0)


__all__ = [
    "NO_RESUME",
    "StateSnapshot",
    "Target",
    "answered",
    "checkpoint_named",
    "get_state",
    "get_state_history",
    "input_cursor",
    "named",
    "picked_for_run",
    "resume_of",
    "resumed_cursor",
    "run_cursor",
    "update_state",
    "writes_input",
]

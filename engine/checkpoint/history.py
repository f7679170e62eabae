"""The state API's data side: snapshots of stored checkpoints, updates, forks.

Pure functions over checkpoints; the app reads and writes the store and
routes, these decide what to show and what to write::

    get_state(config)          store.get(thread, id) --snapshot()--> StateSnapshot
    get_state_history(config)  store.history(...)    --snapshot()--> [StateSnapshot, ...]
    update_state(config, v, as_node)
                               store.get(...) --update()--> Checkpoint(source="update") --put
    invoke(None, past config)  store.get(...) --fork()-->   Checkpoint(source="fork") --put,
                               then the run resumes from the fork

Snapshots have LangGraph's shape (``StateSnapshot``, ``PregelTask``), so
the LangGraph layer re-exports them as they are.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..errors import InvalidUpdateError
from ..interrupts import Asked
from ..spec import START
from ..state import Values, Write
from .base import Checkpoint
from .codec import decode
from .snapshot import RunCodec, TaskLike

#: Task ids are uuid5s in this namespace of (checkpoint id, node, Send index): the
#: same task of the same checkpoint has the same id wherever it is shown.
TASK_IDS = uuid.UUID("5f8d3a1e-6c2b-4f7e-9a10-2b7c4d9e8f01")


def task_id(checkpoint_id: str, node: str, index: int = -1) -> str:
    """The id of the task ``(node, index)`` that runs from checkpoint ``checkpoint_id``."""
    return str(uuid.uuid5(TASK_IDS, f"{checkpoint_id}\x00{node}\x00{index}"))


class PregelTask(NamedTuple):
    """One task of a snapshot's ``next`` step.

    Named and shaped as LangGraph's (a NamedTuple with the same fields), so
    the LangGraph layer re-exports it as it is and code that unpacks one, or
    checks its type's name, keeps working.
    """

    id: str
    name: str
    #: ("__pregel_pull", node) for an edge-triggered task, ("__pregel_push", index, False)
    #: for a Send.
    path: tuple[Any, ...] = ()
    #: The ``repr`` of the exception the task failed with, if it did.
    error: str | None = None
    interrupts: tuple[Any, ...] = ()
    #: A subgraph's own snapshot, where one is asked for.
    state: Any = None
    #: The task's writes, once it ran ({} when it returned None).
    result: Any = None


class StateSnapshot(NamedTuple):
    """A thread's state at one checkpoint, as ``get_state`` returns it (LangGraph's shape)."""

    values: dict[str, Any]
    #: The nodes of the tasks that run next (one per task: a node sent to twice shows twice).
    next: tuple[str, ...]
    #: The config that names this checkpoint (``configurable``: thread_id, checkpoint_ns,
    #: checkpoint_id).
    config: dict[str, Any]
    #: source, step, parents and the caller's metadata; None for a thread with no checkpoint.
    metadata: dict[str, Any] | None
    #: ISO 8601 in UTC; None for a thread with no checkpoint.
    created_at: str | None
    parent_config: dict[str, Any] | None
    tasks: tuple[PregelTask, ...]
    interrupts: tuple[Any, ...] = ()


def config_of(thread_id: str, checkpoint_id: str, checkpoint_ns: str = "") -> dict[str, Any]:
    """The config naming one checkpoint."""
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": checkpoint_ns,
            "checkpoint_id": checkpoint_id,
        }
    }


def empty_snapshot(config: Mapping[str, Any]) -> StateSnapshot:
    """The snapshot of a thread nothing was saved for: the config as given, nothing else."""
    return StateSnapshot(
        values={},
        next=(),
        config=dict(config),
        metadata=None,
        created_at=None,
        parent_config=None,
        tasks=(),
    )


def snapshot(run_codec: RunCodec, cp: Checkpoint, *, latest: bool = False) -> StateSnapshot:
    """The snapshot of a stored checkpoint.

    Its tasks are the tasks of its step, each with its writes once it ran
    (``result``), the ``repr`` of its failure (``error``), or the questions
    it asked and nobody answered yet (``interrupts``; the snapshot's
    ``interrupts`` are all of them). ``latest``: the
    caller asked for the thread's current state (no ``checkpoint_id``): the
    writes of the tasks that finished in a step that stopped are applied to
    the values, and ``next`` keeps only the tasks still to run, as LangGraph
    shows it (not on an input checkpoint: its one task, ``__start__``, is
    shown still to run until the run's first step is saved). Applying them
    raises what the step raised when its writes conflict
    (``InvalidUpdateError``): that state cannot be shown.
    """
    values = values_of(run_codec, cp)
    writes = run_codec.load_writes(cp) if cp.pending_writes else {}
    errors = {(e.node, e.index): e.error for e in cp.errors}
    asked: dict[tuple[str, int], list[Any]] = {}
    for a in run_codec.load_asked(cp):
        asked.setdefault(a.order, []).append(a.interrupt)
    tasks = tuple(
        PregelTask(
            id=task_id(cp.checkpoint_id, ref.node, ref.index),
            name=ref.node,
            path=("__pregel_push", ref.index, False)
            if ref.index >= 0
            else ("__pregel_pull", ref.node),
            error=errors.get((ref.node, ref.index)),
            interrupts=tuple(asked.get((ref.node, ref.index), ())),
            result=writes.get((ref.node, ref.index)),
        )
        for ref in cp.next_tasks
    )
    nxt = [ref for ref in cp.next_tasks]
    if latest and writes and cp.source != "input":
        done = [Write(n, i, u) for (n, i), u in writes.items() if n != START]
        values = run_codec.schema.apply(values, done, cp.step)
        nxt = [ref for ref in nxt if (ref.node, ref.index) not in writes]
    parent = config_of(cp.thread_id, cp.parent_id, cp.checkpoint_ns) if cp.parent_id else None
    return StateSnapshot(
        values=run_codec.schema.all_values(values),
        next=tuple(ref.node for ref in nxt),
        config=config_of(cp.thread_id, cp.checkpoint_id, cp.checkpoint_ns),
        metadata=decode(cp.describe_metadata()),
        created_at=dt.datetime.fromtimestamp(cp.created_at, dt.UTC).isoformat(),
        parent_config=parent,
        tasks=tasks,
        interrupts=tuple(i for t in tasks for i in t.interrupts),
    )


def values_of(run_codec: RunCodec, cp: Checkpoint) -> Values:
    """The channel values a checkpoint holds (a model-held state's fields, every one)."""
    state = run_codec.load_state(cp)
    if run_codec.held == "model":
        return run_codec.schema.values_of(state)
    assert isinstance(state, dict)
    return state


def starts_fork(picked: Checkpoint, *, named: bool) -> bool:
    """Whether running from ``picked`` first writes a ``fork`` checkpoint.

    ``named``: the caller's config named the checkpoint (``checkpoint_id``).
    A named checkpoint is forked, even the latest, unless ``update_state``
    made it: its update is continued as it is (LangGraph's behaviour); a
    run's input checkpoint is not either: its first step becomes a new child.
    """
    return named and picked.source not in ("update", "input")


def fork(picked: Checkpoint, *, run_id: str) -> Checkpoint:
    """The ``fork`` checkpoint a run from ``picked`` starts with: the same state and tasks,
    one step later, child of ``picked``; none of its writes (its tasks run again)."""
    return picked.model_copy(
        update={
            "checkpoint_id": "",
            "parent_id": picked.checkpoint_id,
            "run_id": run_id,
            "step": picked.step + 1,
            "source": "fork",
            "pending_writes": [],
            "parent_writes": [],
            "errors": [],
            "interrupts": [],
            "resumes": [],
            "paused": False,
            "status": "running" if picked.next_tasks else "done",
            "created_at": time.time(),
        }
    )


#: Routing as the scheduler does it: (nodes that ran, values after their writes, step,
#: fan-in bookkeeping to update in place) -> the tasks of the next step.
Route = Callable[[Sequence[str], Values, int, dict[str, set[str]]], Sequence[TaskLike]]


@dataclass(frozen=True)
class _Task:
    node: str
    index: int = -1
    payload: Any = None
    has_payload: bool = False


def update(
    run_codec: RunCodec,
    base: Checkpoint | None,
    values: object,
    as_node: str | None,
    *,
    thread_id: str,
    run_id: str,
    nodes: Collection[str],
    route: Route,
    metadata: Mapping[str, Any] | None = None,
) -> Checkpoint:
    """The checkpoint ``update_state(values, as_node)`` writes on top of ``base``.

    The values go through the reducers as if ``as_node`` had written them
    (``None`` writes nothing). ``as_node`` defaults to the node whose writes
    made ``base``, or ``START`` for a thread's first checkpoint or a thread
    with none; a checkpoint several nodes made needs it said
    (InvalidUpdateError). The new checkpoint's tasks are ``base``'s (the
    ones still to run) and what routing after ``as_node`` triggers; its step
    is ``base``'s plus one (0 on a thread with none), its parent ``base``.
    Questions ``base``'s tasks asked stay open on it, with their ids.
    """
    who = _as_node(base, as_node, nodes)
    schema = run_codec.schema
    before: Values
    old_tasks: list[TaskLike]
    asked: list[Asked] = []
    resumes: dict[tuple[str, int], tuple[Any, ...]] = {}
    if base is None:
        before, step, old_tasks, fanin = schema.initial(), -1, [], {}
    else:
        restored = run_codec.load(base)
        # Open questions stay open across an edit: Command(resume=...) still answers them.
        asked, resumes = restored.asked, restored.resumes
        before = restored.state if run_codec.held == "values" else schema.values_of(restored.state)
        step = base.step
        old_tasks = list(restored.tasks)
        fanin = {k: set(v) for k, v in restored.fanin.items()}
    updates = schema.check_update(who, step, values)
    after = schema.apply(before, [Write(who, -1, updates)], step)
    routed = route([who], after, step, fanin)
    tasks = _union(old_tasks, routed)
    state: Any = after if run_codec.held == "values" else schema.result(after)
    return run_codec.save(
        thread_id=thread_id,
        run_id=run_id,
        step=step + 1,
        state=state,
        tasks=tasks,
        fanin=fanin,
        pending={},
        status="running" if tasks else "done",
        started_at=None,
        source="update",
        parent_id=base.checkpoint_id if base is not None else None,
        metadata=metadata,
        writers=[who],
        asked=asked,
        resumes=resumes,
        paused=bool(asked),
    )


def _as_node(base: Checkpoint | None, as_node: str | None, nodes: Collection[str]) -> str:
    if as_node is not None:
        if as_node != START and as_node not in nodes:
            raise InvalidUpdateError(
                f"update_state(as_node={as_node!r}): the graph has no node {as_node!r} "
                f"(its nodes: {sorted(nodes)}); name one of them, or START for the input"
            )
        return as_node
    if base is None or not base.writers:
        return START
    if len(base.writers) > 1:
        raise InvalidUpdateError(
            f"update_state without as_node is ambiguous here: nodes {base.writers} all wrote "
            f"the checkpoint at step {base.step}; say which one the update comes from, "
            "e.g. as_node=" + repr(base.writers[0])
        )
    return base.writers[0]


def _union(old: Iterable[TaskLike], routed: Iterable[TaskLike]) -> list[TaskLike]:
    """``old`` tasks, plus the routed ones not among them; new Sends numbered after the old."""
    out: list[TaskLike] = list(old)
    seen = {t.node for t in out if not t.has_payload}
    nxt = max((t.index for t in out if t.has_payload), default=-1) + 1
    for task in routed:
        if not task.has_payload:
            if task.node not in seen:
                seen.add(task.node)
                out.append(_Task(task.node))
        else:
            out.append(_Task(task.node, nxt, task.payload, True))
            nxt += 1
    return sorted(out, key=lambda t: (t.node, t.index))

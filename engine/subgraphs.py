"""Subgraphs: a compiled graph run inside a node of another run, attached to that run.

::

    parent arun: sets ParentRun(mode, executor, namespace, emit) as a context variable
      node "team" = a compiled graph (``SubgraphNode``), or a node that calls
      ``grader.invoke(...)`` itself
        -> the child's arun finds the ParentRun: runs in the parent's mode, on its
           executor (its cpu nodes in the same worker pool), under the namespace
           parent.namespace + ("node:task_id",) (the calling task: ``calling_task``)
        -> its chunks, shaped by the child's own app, go to ``emit(ns, mode, chunk)``
           when the root stream asked for ``subgraphs=True``; nowhere otherwise
      SubgraphNode's update: the child's output values for the parent's keys (the
      parent's reducers apply: a list the child returns whole is added again)
    with a checkpointer above: the child saves to the same thread under its namespace
      (``nested_saver``), starts from its namespace's stopped checkpoint when there is
      one (``nested_cursor``), and its questions stop the calling task
      (``SubgraphInterrupt``, with their ids); a resume answers them there
    a child's node returning Command(graph=Command.PARENT): raised out of the child
      (``handing_to_parent``), returned by the SubgraphNode as the parent's Command

A subgraph invoked inside a cpu-lane worker process runs there on its own: the
parent run's context variable does not cross the process boundary.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from .checkpoint.history import StateSnapshot, snapshot
from .checkpoint.history import task_id as checkpoint_task_id
from .context import RunContext, current, node_config
from .interrupts import GraphInterrupt, Interrupt, scope_of
from .saving import RunCursor, RunSaver
from .streaming import NamespacedSink, current_stream, nested_sink, task_id
from .subgraph_node import AsyncToParent, SubgraphNode, ToParent, calling_node
from .threads import Target, answered, input_cursor, named, resumed_cursor

if TYPE_CHECKING:
    from .app import CompiledGraph
    from .plan import Plan


@dataclasses.dataclass(frozen=True)
class ParentRun:
    """What a run inside one of this run's nodes inherits from it.

    ``namespace``: this run's own (``()`` for a root run); ``emit``: where the chunks
    of runs nested in it go (None: nobody streams them).
    """

    mode: str
    executor: Executor | None
    namespace: tuple[str, ...] = ()
    emit: NamespacedSink | None = None
    context: Any = None
    #: The run's saver: a nested run saves its steps to the same thread, under its own
    #: namespace, when the graph it runs has no checkpointer of its own.
    saver: RunSaver | None = None

    @property
    def checkpoint_ns(self) -> str:
        """The namespace this run's checkpoints are saved under (LangGraph's: the
        segments joined by ``|``)."""
        return "|".join(self.namespace)


#: The namespace segment of a call that did not say which task it is.
UNKNOWN_TASK = "subgraph"

_parent: contextvars.ContextVar[ParentRun | None] = contextvars.ContextVar(
    "engine_parent_run", default=None
)


def parent_run() -> ParentRun | None:
    """The run whose node is calling now (None outside any run)."""
    return _parent.get()


def enter(run: ParentRun) -> contextvars.Token[ParentRun | None]:
    """Make ``run`` the one nested runs attach to; give the token to ``leave``."""
    return _parent.set(run)


def leave(token: contextvars.Token[ParentRun | None]) -> None:
    _parent.reset(token)


def calling_task(saver: RunSaver | None = None) -> str:
    """The namespace segment of the node call running now: ``node:task_id``. On a thread
    (``saver`` active) the id is the task's in the state API (``get_state().tasks``): made
    from the checkpoint the step runs from, the same when a resume runs the task again;
    otherwise the id its ``debug`` chunks carry. When the call did not say which task it
    is (an engine run nobody streams), the ``SubgraphNode``'s name stands for its node
    (taken as edge-triggered); ``UNKNOWN_TASK`` for a node that invokes a graph itself
    (its run then saves nothing to the thread: two such calls could not be told apart)."""
    stream = current_stream()
    if stream is not None and stream.node:
        node, index, step = stream.node, stream.index, stream.step
    else:
        node, index, step = calling_node.get(), -1, -1
        if not node:
            return UNKNOWN_TASK
    if saver is not None and saver.active and saver.checkpoint_id:
        return f"{node}:{checkpoint_task_id(saver.checkpoint_id, node, index)}"
    if step < 0:
        return node
    ctx = current()
    run_id = ctx.run_id if ctx is not None else ""
    return f"{node}:{task_id(run_id, step, node, index)}"


def root(mode: str, executor: Executor | None, context: Any = None) -> ParentRun:
    """The ``ParentRun`` of a run that nothing encloses (its nested runs' chunks go to the
    stream's namespaced sink, if it asked for ``subgraphs=True``)."""
    return ParentRun(mode, executor, (), nested_sink(), context)


def child(parent: ParentRun) -> ParentRun:
    """The ``ParentRun`` of a run attached to ``parent`` from the node call running now."""
    segment = calling_task(parent.saver)
    return dataclasses.replace(parent, namespace=(*parent.namespace, segment), saver=None)


def inherited_config(calling: RunContext | None) -> dict[str, Any] | None:
    """The config of a nested run given none: the calling task's (its ``checkpoint_ns``
    the prefix of the nested run's tasks'); None outside a run."""
    if calling is None:
        return None
    config = node_config(calling)
    if not calling.langgraph:
        config.pop("run_name", None)  # the nested run's own
    return config


def inherited_thread(parent: ParentRun, run: ParentRun, own: Any) -> RunSaver | None:
    """The saver of ``parent`` when ``run`` (nested in it; its graph's checkpointer
    ``own``) saves to its thread: it has no checkpointer of its own, the run above saves,
    and its calling task is known. None otherwise."""
    saver = parent.saver
    if own is not None or saver is None or not saver.active or run.namespace[-1] == UNKNOWN_TASK:
        return None
    return saver


def nested_saver(saver: RunSaver, above: RunSaver, run: ParentRun) -> RunSaver:
    """``saver`` (a nested run's) saving under ``run``'s namespace, its parents named."""
    saver.checkpoint_ns = run.checkpoint_ns
    saver.durability = above.durability  # as often as the run above saves
    above_ns = "|".join(run.namespace[:-1])
    saver.parents = {**above.parents, above_ns: above.checkpoint_id or ""}
    return saver


async def nested_cursor(
    saver: RunSaver, state: Any, input: object, answers: tuple[Any, ...]
) -> tuple[RunCursor, bool]:
    """Where a nested run on a thread starts, and whether it resumes: the checkpoint its
    namespace stopped at (questions; ``answers``, the calling task's, answer them), else
    its input, saved first as the namespace's input checkpoint."""
    assert saver.checkpointer is not None and saver.thread_id is not None
    latest = await saver.checkpointer.get(saver.thread_id, checkpoint_ns=saver.checkpoint_ns)
    if latest is not None and latest.paused and latest.status != "done":
        cursor = await resumed_cursor(saver, latest)
        if answers and cursor.asked:
            cursor = answered(cursor, answers[-1], saver.thread_id)
        return cursor, True
    if state is None:
        raise ValueError(
            f"a subgraph run under {saver.checkpoint_ns!r} has no input and nothing to resume"
        )
    return await input_cursor(saver, None, input), False


class SubgraphInterrupt(GraphInterrupt):
    """A nested run stopped on questions: its calling task stops on all of them, each
    with the id the nested run gave it (the scheduler shows ``asked`` as the task's)."""

    def __init__(self, asked: tuple[Interrupt[Any], ...]) -> None:
        super().__init__(asked[0].value, 0)
        self.interrupt_id = asked[0].id
        self.asked = asked

    def __reduce__(self) -> Any:
        return (SubgraphInterrupt, (self.asked,))


def chunk_forwarder(
    run: ParentRun, shape: Callable[[str, Any], Any]
) -> Callable[[str, Any], None] | None:
    """The ``on_chunk`` of a nested run: its chunks, shaped by its own app, to the
    root stream under its namespace (None when nobody streams subgraphs)."""
    emit = run.emit
    if emit is None:
        return None
    namespace = run.namespace

    def forward(mode: str, chunk: Any) -> None:
        emit(namespace, mode, shape(mode, chunk))

    return forward


def handing_to_parent(plan: Plan) -> Plan:
    """``plan`` with every node's ``Command(graph=Command.PARENT)`` raised to reach the
    parent (``ToParent``): the plan of a graph's runs as a subgraph."""
    nodes = {}
    for name, node in plan.nodes.items():
        spec = node.spec
        wrap = AsyncToParent if spec.is_coroutine else ToParent
        nodes[name] = dataclasses.replace(node, spec=dataclasses.replace(spec, fn=wrap(spec.fn)))
    return dataclasses.replace(plan, nodes=nodes)


def _is_compiled(value: Any) -> bool:
    """Whether ``value`` is an ``engine.app.CompiledGraph`` (told by what it has: the app
    module imports this one)."""
    return hasattr(value, "plan") and hasattr(value, "arun") and hasattr(value, "shape_chunk")


# -- the state API --------------------------------------------------------------------


def namespace_of(target: Target) -> str:
    """The checkpoint namespace a config names ("" for a thread id, or the graph itself)."""
    if isinstance(target, str):
        return ""
    configurable = target.get("configurable") or {}
    return str(configurable.get("checkpoint_ns") or "")


def subgraph_of(app: CompiledGraph[Any], node: str) -> CompiledGraph[Any] | None:
    """The compiled graph node ``node`` of ``app`` runs: a subgraph node's, or the one
    graph a node's function refers to (a global or a closed-over name it uses, as
    ``grader.invoke(...)``); None when there is none."""
    spec = app.plan.nodes.get(node)
    fn = spec.spec.fn if spec is not None else None
    if isinstance(fn, SubgraphNode):
        return fn.app
    found = {id(g): g for g in _graphs_used(fn)}
    return next(iter(found.values())) if len(found) == 1 else None


def _graphs_used(fn: Any) -> list[CompiledGraph[Any]]:
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        return []
    scope = scope_of(fn, code)
    out: list[CompiledGraph[Any]] = []
    for name in (*code.co_names, *code.co_freevars):
        value: Any = scope.get(name)
        value = getattr(value, "app", value)  # engine.langgraph's compiled graph wraps one
        if _is_compiled(value):
            out.append(value)
    return out


async def nested_state(
    app: CompiledGraph[Any], target: Target, checkpoint_id: str | None, *, subgraphs: bool
) -> StateSnapshot:
    """The state of the subgraph run a config's ``checkpoint_ns`` names (``node:task_id``
    segments joined by ``|``), at its ``checkpoint_id`` (its latest when None)."""
    thread, checkpoint_id = named(target, checkpoint_id, "get_state")
    ns = namespace_of(target)
    inner: CompiledGraph[Any] | None = app
    for segment in ns.split("|"):
        inner = subgraph_of(inner, segment.split(":", 1)[0]) if inner is not None else None
    if inner is None or app.checkpointer is None:
        raise ValueError(
            f"get_state: checkpoint_ns {ns!r} names no subgraph node of this graph; pass "
            "the config of a subgraph's snapshot (get_state(config, subgraphs=True))"
        )
    cp = await app.checkpointer.get(thread, checkpoint_id, checkpoint_ns=ns)
    if cp is None:
        raise ValueError(f"thread {thread!r} has no checkpoint under namespace {ns!r}")
    codec = RunSaver(inner.plan, app.checkpointer, thread_id=thread, run_id="").codec
    snap = _named(snapshot(codec, cp, latest=checkpoint_id is None), cp)
    return await task_states(inner, app.checkpointer, snap, subgraphs=subgraphs)


def _named(snap: StateSnapshot, cp: Any) -> StateSnapshot:
    """A subgraph's snapshot with LangGraph's configs: each names the checkpoints of the
    graphs above it too (``checkpoint_map``)."""
    ns = cp.checkpoint_ns

    def config(checkpoint_id: str) -> dict[str, Any]:
        return {
            "configurable": {
                "thread_id": cp.thread_id,
                "checkpoint_ns": ns,
                "checkpoint_id": checkpoint_id,
                "checkpoint_map": {**cp.parents, ns: checkpoint_id},
            }
        }

    parent = config(cp.parent_id) if cp.parent_id else None
    return snap._replace(config=config(cp.checkpoint_id), parent_config=parent)


async def task_states(
    app: CompiledGraph[Any], checkpointer: Any, snap: StateSnapshot, *, subgraphs: bool
) -> StateSnapshot:
    """``snap`` with the state of each task that runs a subgraph: the config naming its
    namespace, or with ``subgraphs=True`` the subgraph's own snapshot (its tasks' too)."""
    if not snap.tasks or checkpointer is None:
        return snap
    configurable = snap.config.get("configurable") or {}
    thread = configurable.get("thread_id")
    above = configurable.get("checkpoint_ns") or ""
    tasks = []
    for task in snap.tasks:
        inner = subgraph_of(app, task.name)
        if inner is None:
            tasks.append(task)
            continue
        ns = f"{above}|{task.name}:{task.id}" if above else f"{task.name}:{task.id}"
        state: Any = {"configurable": {"thread_id": thread, "checkpoint_ns": ns}}
        if subgraphs:
            cp = await checkpointer.get(thread, checkpoint_ns=ns)
            if cp is not None:
                codec = RunSaver(inner.plan, checkpointer, thread_id=thread, run_id="").codec
                state = await task_states(
                    inner,
                    checkpointer,
                    _named(snapshot(codec, cp, latest=True), cp),
                    subgraphs=True,
                )
        tasks.append(task._replace(state=state))
    return snap._replace(tasks=tuple(tasks))


__all__ = [
    "UNKNOWN_TASK",
    "ParentRun",
    "SubgraphInterrupt",
    "SubgraphNode",
    "calling_task",
    "child",
    "chunk_forwarder",
    "enter",
    "handing_to_parent",
    "inherited_config",
    "inherited_thread",
    "leave",
    "namespace_of",
    "nested_cursor",
    "nested_saver",
    "nested_state",
    "parent_run",
    "root",
    "subgraph_of",
    "task_states",
]

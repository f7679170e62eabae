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

A subgraph invoked inside a cpu-lane worker process runs there on its own: the
parent run's context variable does not cross the process boundary.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from .context import current
from .streaming import NamespacedSink, current_stream, nested_sink, task_id

if TYPE_CHECKING:
    from .app import CompiledGraph


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


def calling_task() -> str:
    """The namespace segment of the node call running now: ``node:task_id`` (the id its
    ``debug`` chunks and LangGraph's ``checkpoint_ns`` carry); the node's name alone when
    the call did not say which task it is."""
    stream = current_stream()
    ctx = current()
    if stream is None or not stream.node:
        return "subgraph"
    run_id = ctx.run_id if ctx is not None else ""
    return f"{stream.node}:{task_id(run_id, stream.step, stream.node, stream.index)}"


def root(mode: str, executor: Executor | None, context: Any = None) -> ParentRun:
    """The ``ParentRun`` of a run that nothing encloses (its nested runs' chunks go to the
    stream's namespaced sink, if it asked for ``subgraphs=True``)."""
    return ParentRun(mode, executor, (), nested_sink(), context)


def child(parent: ParentRun) -> ParentRun:
    """The ``ParentRun`` of a run attached to ``parent`` from the node call running now."""
    return dataclasses.replace(parent, namespace=(*parent.namespace, calling_task()))


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


class SubgraphNode:
    """A compiled graph as a node of another graph.

    Its input: the parent's state projected onto the subgraph's input keys; its
    update: the subgraph's output values for the keys the parent has.
    """

    def __init__(self, app: CompiledGraph[Any], parent_keys: Collection[str]) -> None:
        self.app = app
        self.parent_keys = frozenset(parent_keys)
        self.__name__ = "subgraph"

    def __repr__(self) -> str:
        return f"<SubgraphNode {self.app!r}>"

    async def __call__(self, state: Any) -> dict[str, Any]:
        schema = self.app.plan.schema
        values = _values(state)
        wanted = set(schema.input_keys)
        result = await self.app.arun({k: v for k, v in values.items() if k in wanted})
        if result.interrupts:
            from .interrupts import GraphInterrupt

            raise GraphInterrupt(result.interrupts[0].value, 0)
        out = result.values if result.values is not None else _values(result.state)
        return {k: v for k, v in schema.output(dict(out)).items() if k in self.parent_keys}


def _values(state: Any) -> Mapping[str, Any]:
    """A state as a node sees it, as a mapping of its fields."""
    if isinstance(state, Mapping):
        return state
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    dump = getattr(state, "model_dump", None)
    if dump is not None:
        return dict(dump())
    raise TypeError(f"a subgraph node got a state of type {type(state).__name__}")


__all__ = [
    "ParentRun",
    "SubgraphNode",
    "calling_task",
    "child",
    "chunk_forwarder",
    "enter",
    "leave",
    "parent_run",
    "root",
]

"""``SubgraphNode``: a compiled graph as a node of another graph (``add_node(name, compiled)``).

Its input: the parent's state projected onto the subgraph's input keys; its
update: the subgraph's output values for the keys the parent has (the
parent's reducers apply: a list the subgraph returns whole is added again, as
under LangGraph). Its run attaches to the parent's (``engine.subgraphs``).
Imports nothing of the engine at module level: the builder (``engine.graph``)
makes one without reaching the running stages.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from .interrupts import GraphBubbleUp
from .spec import Command

if TYPE_CHECKING:
    from .app import CompiledGraph

#: The name of the ``SubgraphNode`` calling now: the namespace's node when the call's own
#: task is not known (an engine run nobody streams).
calling_node: contextvars.ContextVar[str] = contextvars.ContextVar(
    "engine_subgraph_node", default=""
)


class ParentCommand(GraphBubbleUp):
    """A node of a subgraph returned ``Command(graph=Command.PARENT, ...)``: its run stops,
    and the node of the parent that runs the subgraph returns ``command`` (without
    ``graph``) in the parent: its update, its goto routed among the parent's nodes."""

    def __init__(self, command: Command[Any]) -> None:
        super().__init__(command)
        self.command = command

    def __reduce__(self) -> Any:
        return (ParentCommand, (self.command,))


@dataclasses.dataclass(frozen=True)
class ToParent:
    """A node of a graph run as a subgraph: a ``Command(graph=Command.PARENT)`` it returns
    is raised as ``ParentCommand``, to reach the parent. Pickles with its function."""

    fn: Callable[..., Any]

    @property
    def __code__(self) -> Any:
        """The node's own code: what engine.context reads of it (whether it calls
        ``get_config``, or runs a graph)."""
        return getattr(self.fn, "__code__", None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _to_parent(self.fn(*args, **kwargs))


@dataclasses.dataclass(frozen=True)
class AsyncToParent(ToParent):
    """``ToParent`` of an ``async def`` node."""

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _to_parent(await self.fn(*args, **kwargs))


def _to_parent(value: Any) -> Any:
    if isinstance(value, Command) and value.graph == Command.PARENT:
        raise ParentCommand(dataclasses.replace(value, graph=None))
    return value


class SubgraphNode:
    """A compiled graph as a node of another graph.

    Its input: the parent's state projected onto the subgraph's input keys; its
    update: the subgraph's output values for the keys the parent has.
    """

    def __init__(self, app: CompiledGraph[Any], parent_keys: Collection[str], name: str) -> None:
        self.app = app
        self.parent_keys = frozenset(parent_keys)
        self.name = name
        self.__name__ = name

    def __repr__(self) -> str:
        return f"<SubgraphNode {self.app!r}>"

    async def __call__(self, state: Any, config: Any = None) -> dict[str, Any] | Command[Any]:
        # ``config`` is not used: taking it makes an engine.langgraph run tell the call
        # which task it is (engine.context), the subgraph's namespace.
        schema = self.app.plan.schema
        values = _values(state)
        wanted = set(schema.input_keys)
        token = calling_node.set(self.name)
        try:
            result = await self.app.arun({k: v for k, v in values.items() if k in wanted})
        except ParentCommand as handed:  # a node inside routed to this graph's nodes
            return handed.command
        finally:
            calling_node.reset(token)
        out = result.values if result.values is not None else _values(result.state)
        return {k: v for k, v in schema.output(dict(out)).items() if k in self.parent_keys}


def _values(state: Any) -> Mapping[str, Any]:
    """A state as a node sees it, as a mapping of its fields."""
    if isinstance(state, Mapping):
        return state
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    fields = getattr(type(state), "model_fields", None)
    if fields is not None:  # a pydantic model: its fields as they are
        return {name: getattr(state, name) for name in fields}
    raise TypeError(f"a subgraph node got a state of type {type(state).__name__}")


__all__ = ["AsyncToParent", "ParentCommand", "SubgraphNode", "ToParent", "calling_node"]

"""``SubgraphNode``: a compiled graph as a node of another graph (``add_node(name, compiled)``).

Its input: the parent's state projected onto the subgraph's input keys; its
update: the subgraph's output values for the keys the parent has (the
parent's reducers apply: a list the subgraph returns whole is added again, as
under LangGraph). Its run attaches to the parent's (``engine.subgraphs``).
Imports nothing of the engine at module level: the builder (``engine.graph``)
makes one without reaching the running stages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import CompiledGraph


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


__all__ = ["SubgraphNode"]

"""State schema helpers: reducers, copies, and the deterministic merge at the barrier.

The state is a pydantic model. A field annotated ``Annotated[T, reducer]``
merges parallel writes with ``reducer(current, new)``; any other field takes
at most one write per step. Writes are applied in a fixed order (node name,
then ``Send`` index), never in completion order, so every mode and every
interleaving gives the same state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import GraphError, InvalidUpdateError

Reducer = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class Write:
    """The updates one node call returned, with where they came from."""

    node: str
    index: int  # Send index within the step; -1 for an edge-triggered call
    updates: Mapping[str, Any]

    @property
    def order(self) -> tuple[str, int]:
        return (self.node, self.index)


def _reducer_of(metadata: Iterable[object]) -> Reducer | None:
    # pydantic keeps annotations it does not understand in ``metadata``; a
    # plain callable there is our reducer. Pydantic's own constraint objects
    # are not callable, so they are not mistaken for one.
    found = [m for m in metadata if callable(m) and not isinstance(m, type)]
    return found[-1] if found else None


@dataclass(frozen=True)
class StateSchema:
    """A validated view of the user's state model: fields and their reducers."""

    model: type[BaseModel]
    reducers: Mapping[str, Reducer | None]

    @classmethod
    def of(cls, model: object) -> StateSchema:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise GraphError(
                f"Graph(state) needs a pydantic BaseModel subclass, got {model!r}; "
                "define `class State(BaseModel): ...` and pass the class"
            )
        reducers = {name: _reducer_of(info.metadata) for name, info in model.model_fields.items()}
        return cls(model=model, reducers=reducers)

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.reducers)

    def validate_input(self, value: object) -> BaseModel:
        """A state instance from a state or a dict; pydantic's ValidationError if bad."""
        if isinstance(value, self.model):
            return value.model_copy(deep=True)
        if isinstance(value, BaseModel):
            value = value.model_dump()
        return self.model.model_validate(value)

    def copy(self, state: BaseModel) -> BaseModel:
        """A private copy for one node: no node can see or mutate another's view."""
        return state.model_copy(deep=True)

    def check_update(self, node: str, step: int, updates: object) -> Mapping[str, Any]:
        """The node's return value as a mapping of known fields, or an error naming it."""
        if updates is None:
            return {}
        if isinstance(updates, BaseModel) and isinstance(updates, self.model):
            updates = {k: getattr(updates, k) for k in updates.model_fields_set}
        if not isinstance(updates, Mapping):
            raise InvalidUpdateError(
                f"node {node!r} (step {step}) returned {type(updates).__name__}; "
                "a node must return a dict of state updates or None",
                node=node,
                step=step,
            )
        for key in updates:
            if key not in self.reducers:
                raise InvalidUpdateError(
                    f"node {node!r} (step {step}) wrote unknown field {key!r}; "
                    f"the state {self.model.__name__} has fields {sorted(self.reducers)}",
                    node=node,
                    step=step,
                    field=str(key),
                )
        return updates

    def merge(self, state: BaseModel, writes: Iterable[Write], step: int) -> BaseModel:
        """Apply one step's writes to ``state`` deterministically; returns a new state.

        Raises InvalidUpdateError for two writes to a plain field, or a value
        the schema rejects (naming the node(s), the step and the field).
        """
        ordered = sorted(writes, key=lambda w: w.order)
        values: dict[str, Any] = {}
        writers: dict[str, list[str]] = {}
        for write in ordered:
            for key, value in write.updates.items():
                reducer = self.reducers[key]
                who = writers.setdefault(key, [])
                if reducer is None:
                    if who:
                        raise InvalidUpdateError(
                            f"nodes {who[0]!r} and {write.node!r} both wrote field {key!r} "
                            f"in step {step}, which has no reducer; give the field one "
                            f"(Annotated[T, reducer]) or let only one node write it per step",
                            node=write.node,
                            step=step,
                            field=key,
                            nodes=(who[0], write.node),
                        )
                    values[key] = value
                else:
                    current = values[key] if key in values else getattr(state, key)
                    try:
                        values[key] = reducer(current, value)
                    except Exception as exc:
                        raise InvalidUpdateError(
                            f"reducer of field {key!r} failed on the write of node "
                            f"{write.node!r} in step {step}: {type(exc).__name__}: {exc}",
                            node=write.node,
                            step=step,
                            field=key,
                        ) from exc
                who.append(write.node)
        if not values:
            return state
        new = state.model_copy()
        validator = self.model.__pydantic_validator__
        for key, value in values.items():
            try:
                validator.validate_assignment(new, key, value)
            except ValidationError as exc:
                nodes = tuple(writers[key])
                raise InvalidUpdateError(
                    f"node {nodes[-1]!r} (step {step}) wrote a value to field {key!r} "
                    f"that the schema rejects: {exc.errors()[0]['msg']}",
                    node=nodes[-1],
                    step=step,
                    field=key,
                    nodes=nodes,
                ) from exc
        return new

"""The deterministic merge at the barrier: one step's writes folded into the channels.

Writes are applied in a fixed order (node name, then ``Send`` index), never
in completion order, so every mode and every interleaving gives the same
state. A channel with a reducer folds every write in with
``reducer(current, new)`` (a reducer channel that is still absent takes its
first write as it is); any other channel takes at most one write per step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, NamedTuple

from pydantic import BaseModel, ValidationError

from ..errors import InvalidUpdateError
from .channels import Reducer

#: A channel's current value, or ``ABSENT`` when nothing has written it.
ABSENT: Any = type("Absent", (), {"__repr__": lambda self: "ABSENT"})()


class Write(NamedTuple):
    """The updates one node call returned, with where they came from (a step's fan-out
    writes thousands: a named tuple is built twice as fast as a frozen dataclass)."""

    node: str
    #: Send index within the step; -1 for an edge-triggered call. (It shadows
    #: ``tuple.index``, which nothing calls on a write.)
    index: int  # type: ignore[assignment]
    updates: Mapping[str, Any]

    @property
    def order(self) -> tuple[str, int]:
        return (self.node, self.index)

    def describe(self) -> str:
        """The write's author for messages: ``'w'``, or ``'w' (Send 2)`` for a Send."""
        return f"{self.node!r}" + (f" (Send {self.index})" if self.index >= 0 else "")


def writes_of(updates: Mapping[tuple[str, int], Mapping[str, Any]]) -> list[Write]:
    """A step's updates by (node, Send index) as ``Write``s (built by ``tuple.__new__``,
    without the Python-level ``__new__`` of a named tuple: a fan-out's step has thousands)."""
    return [_new(Write, (node, index, upd)) for (node, index), upd in updates.items()]


_new = tuple.__new__


#: A write's place in the merge: node name, then Send index.
_order = itemgetter(0, 1)


@dataclass(frozen=True)
class Combined:
    """A step's writes folded per channel: the new values and who wrote each."""

    values: dict[str, Any]
    writers: dict[str, list[Write]]


def combine(
    current: Callable[[str], Any],
    reducers: Mapping[str, Reducer | None],
    writes: Iterable[Write],
    step: int,
) -> Combined:
    """Fold ``writes`` per channel; ``current(key)`` is its value before the step (or ABSENT).

    Raises InvalidUpdateError for two writes to a channel without reducer,
    and for a reducer that fails (naming node(s), step and field). Every key
    written must be in ``reducers`` (``check_update`` made sure of that).
    """
    values: dict[str, Any] = {}
    writers: dict[str, list[Write]] = {}
    for write in sorted(writes, key=_order):
        for key, value in write.updates.items():
            reducer = reducers[key]
            who = writers.get(key)
            if reducer is None:
                if who is not None:
                    raise InvalidUpdateError(
                        f"nodes {who[0].describe()} and {write.describe()} both wrote field "
                        f"{key!r} in step {step}, which has no reducer; give the field one "
                        f"(Annotated[T, reducer]) or let only one "
                        f"{'Send' if who[0].node == write.node else 'node'} write it per step",
                        node=write.node,
                        step=step,
                        field=key,
                        nodes=(who[0].node, write.node),
                    )
                writers[key] = [write]
                values[key] = value
                continue
            if who is None:  # the step's first write of this channel
                writers[key] = [write]
                before = current(key)
                if before is ABSENT:
                    values[key] = value
                    continue
            else:
                who.append(write)
                before = values[key]
            try:
                values[key] = reducer(before, value)
            except Exception as exc:
                raise InvalidUpdateError(
                    f"reducer of field {key!r} failed on the write of node "
                    f"{write.describe()} in step {step}: {type(exc).__name__}: {exc}",
                    node=write.node,
                    step=step,
                    field=key,
                ) from exc
    return Combined(values, writers)


def assign(model: BaseModel, combined: Combined, step: int, keys: Iterable[str]) -> None:
    """Validate the new values of ``keys`` into ``model`` in place, as pydantic assigns them.

    Field validators, constraints and model validators run as for
    ``validate_assignment``; a value the schema rejects is an
    InvalidUpdateError naming the node(s), the step and the field.
    """
    validator = type(model).__pydantic_validator__
    for key in keys:
        try:
            validator.validate_assignment(model, key, combined.values[key])
        except (ValidationError, AttributeError, TypeError, ValueError) as exc:
            nodes = tuple(w.node for w in combined.writers[key])
            why = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            raise InvalidUpdateError(
                f"node {combined.writers[key][-1].describe()} (step {step}) wrote a value to "
                f"field {key!r} that the schema rejects: {why}",
                node=nodes[-1],
                step=step,
                field=key,
                nodes=nodes,
            ) from exc

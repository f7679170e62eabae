"""State schema helpers: reducers, copies, and the deterministic merge at the barrier.

The state is a pydantic model. A field annotated ``Annotated[T, reducer]``
merges parallel writes with ``reducer(current, new)``; any other field takes
at most one write per step. Writes are applied in a fixed order (node name,
then ``Send`` index), never in completion order, so every mode and every
interleaving gives the same state.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any

from pydantic import BaseModel, TypeAdapter, ValidationError

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

    def describe(self) -> str:
        """The write's author for messages: ``'w'``, or ``'w' (Send 2)`` for a Send."""
        return f"{self.node!r}" + (f" (Send {self.index})" if self.index >= 0 else "")


def _reducer_of(metadata: Iterable[object]) -> Reducer | None:
    # pydantic keeps annotations it does not understand in ``metadata``; a
    # plain callable there is our reducer. Pydantic's own constraint objects
    # are not callable, so they are not mistaken for one.
    found = [m for m in metadata if callable(m) and not isinstance(m, type)]
    return found[-1] if found else None


@dataclass(frozen=True)
class StateSchema:
    """A validated view of the user's state model: fields and their reducers.

    Invariant: ``_adapters`` only grows, one validator per field, built on
    first use (most runs never need one); ``unsure`` is computed once.
    """

    model: type[BaseModel]
    reducers: Mapping[str, Reducer | None]
    _adapters: dict[str, TypeAdapter[Any]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

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

    def field_adapter(self, name: str) -> TypeAdapter[Any]:
        """A validator of one field's values, with the field's type and constraints."""
        adapter = self._adapters.get(name)
        if adapter is None:
            info = self.model.model_fields[name]
            # The FieldInfo carries the field's constraints (ge=, max_length=...).
            annotated: Any = Annotated[info.annotation, info]
            adapter = TypeAdapter(annotated)
            self._adapters[name] = adapter
        return adapter

    @cached_property
    def unsure(self) -> RoundTrip:
        """Where ``model_validate(model_dump(mode="python"))`` may not give the state back."""
        return round_trip(self.model)

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
        writers: dict[str, list[Write]] = {}
        for write in ordered:
            for key, value in write.updates.items():
                reducer = self.reducers[key]
                who = writers.setdefault(key, [])
                if reducer is None:
                    if who:
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
                    values[key] = value
                else:
                    current = values[key] if key in values else getattr(state, key)
                    try:
                        values[key] = reducer(current, value)
                    except Exception as exc:
                        raise InvalidUpdateError(
                            f"reducer of field {key!r} failed on the write of node "
                            f"{write.describe()} in step {step}: {type(exc).__name__}: {exc}",
                            node=write.node,
                            step=step,
                            field=key,
                        ) from exc
                who.append(write)
        if not values:
            return state
        new = state.model_copy()
        validator = self.model.__pydantic_validator__
        for key, value in values.items():
            try:
                validator.validate_assignment(new, key, value)
            except ValidationError as exc:
                nodes = tuple(w.node for w in writers[key])
                raise InvalidUpdateError(
                    f"node {writers[key][-1].describe()} (step {step}) wrote a value to field "
                    f"{key!r} that the schema rejects: {exc.errors()[0]['msg']}",
                    node=nodes[-1],
                    step=step,
                    field=key,
                    nodes=nodes,
                ) from exc
        return new


# -- which fields survive dump -> validate ---------------------------------------


@dataclass(frozen=True)
class RoundTrip:
    """Which parts of a model ``model_validate(model_dump(mode="python"))`` may change.

    ``whole``: the model as a whole (a model validator, extra fields, aliases,
    computed or excluded fields, ``model_post_init``): check every field.
    ``fields``: the fields whose type may not round trip (``Any``, a field
    validator or serializer, a union of models, a type pydantic validates
    with a function, such as ``Path``).
    """

    whole: bool
    fields: frozenset[str]


#: Core-schema leaves whose python values validate back to themselves.
_LEAVES = frozenset(
    {
        "str",
        "int",
        "float",
        "bool",
        "bytes",
        "none",
        "date",
        "datetime",
        "time",
        "timedelta",
        "decimal",
        "uuid",
        "complex",
    }
)


def round_trip(model: type[BaseModel]) -> RoundTrip:
    """What of ``model`` a dump/validate round trip may change, read from its core schema.

    Conservative: anything this does not recognise counts as unsure, so a
    caller checks it rather than trusting it.
    """
    schema: Any = model.__pydantic_core_schema__
    defs: dict[str, Any] = {}
    if schema.get("type") == "definitions":
        defs = {d["ref"]: d for d in schema["definitions"]}
        schema = schema["schema"]
    everything = frozenset(model.model_fields)
    if schema.get("type") != "model" or not _model_itself_sure(schema):
        return RoundTrip(whole=True, fields=everything)
    fields = schema["schema"].get("fields", {})
    walker = _Walker(defs)
    unsure = {name for name, f in fields.items() if not walker.field_sure(f)}
    return RoundTrip(whole=False, fields=frozenset(unsure))


def _model_itself_sure(schema: Any) -> bool:
    """A model schema whose validation builds exactly what its fields hold."""
    inner = schema.get("schema", {})
    config = schema.get("config", {})
    return (
        "serialization" not in schema
        and not schema.get("post_init")
        and not schema.get("custom_init")
        and not schema.get("root_model")
        and config.get("extra_fields_behavior") != "allow"
        and inner.get("type") == "model-fields"
        and not inner.get("computed_fields")
        and "extras_schema" not in inner
    )


class _Walker:
    """One walk over a core schema. Invariant: ``busy`` holds the refs being walked."""

    def __init__(self, defs: Mapping[str, Any]) -> None:
        self.defs = defs
        self.busy: set[str] = set()

    def field_sure(self, f: Any) -> bool:
        aliased = "validation_alias" in f or "serialization_alias" in f
        return (
            not aliased
            and not f.get("serialization_exclude")
            and "serialization" not in f
            and self.sure(f["schema"])
        )

    def sure(self, s: Any) -> bool:
        if "serialization" in s:
            return False
        t = s.get("type")
        if t in _LEAVES:
            return True
        if t in ("nullable", "default"):
            return self.sure(s["schema"])
        if t in ("list", "set", "frozenset"):
            return "items_schema" in s and self.sure(s["items_schema"])
        if t == "tuple":
            return all(self.sure(x) for x in s.get("items_schema", []))
        if t == "dict":
            keys, values = s.get("keys_schema"), s.get("values_schema")
            return keys is not None and values is not None and self.sure(keys) and self.sure(values)
        if t == "literal":
            return all(type(x) in (str, int, type(None)) for x in s.get("expected", []))
        if t == "enum":
            return not s.get("strict") and all(
                isinstance(m, enum.Enum) and type(m.value) in (str, int) for m in s["members"]
            )
        if t == "union":
            return s.get("mode", "smart") == "smart" and all(
                not self._model_like(c) and self.sure(c) for c in self._choices(s)
            )
        if t == "tagged-union":
            return all(self.sure(c) for c in s["choices"].values())
        if t == "definition-ref":
            ref = s["schema_ref"]
            if ref in self.busy:
                return True  # a recursive model: sure if the rest of it is
            target = self.defs.get(ref)
            if target is None:
                return False
            self.busy.add(ref)
            try:
                return self.sure(target)
            finally:
                self.busy.discard(ref)
        if t == "model":
            if not _model_itself_sure(s):
                return False
            return all(self.field_sure(f) for f in s["schema"].get("fields", {}).values())
        return False

    @staticmethod
    def _choices(s: Any) -> list[Any]:
        return [c[0] if isinstance(c, tuple) else c for c in s["choices"]]

    def _model_like(self, s: Any) -> bool:
        """A choice a smart union may confuse with another: models pick on shape, not type."""
        t = s.get("type")
        if t in ("nullable", "default"):
            return self._model_like(s["schema"])
        if t == "definition-ref":
            target = self.defs.get(s["schema_ref"], {})
            return target.get("type") != "enum"
        return t in ("model", "typed-dict", "dataclass", "model-fields")

"""What a state type declares: its keys, their types, reducers and starting values.

Three kinds of class describe a state, and each key of one is a *channel*::

    class S(TypedDict):                 @dataclass                 class S(BaseModel):
        topic: str                      class S:                       topic: str = ""
        notes: Annotated[                   topic: str = ""            notes: Annotated[
            list[str], operator.add]        notes: Annotated[              list[str], add] = []
                                                list[str], add] = ...

A channel holds a value only once something wrote it (the input or a node);
until then it is *absent*, never None. A channel with a reducer
(``Annotated[T, fn]``) that can start empty (``T()`` works: ``[]``, ``0``,
``""``) holds that empty value from the start; its writes are folded in with
``fn(current, new)``. Introspection only: nothing here holds state.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from ..errors import GraphError

Reducer = Callable[[Any, Any], Any]

#: The kinds of class a state (or a node's input, or an input/output schema) can be.
Kind = Literal["typeddict", "dataclass", "pydantic"]

_WRAPPERS = {"Required", "NotRequired", "ReadOnly"}


def kind_of(tp: object) -> Kind | None:
    """The kind of schema class ``tp`` is, or None when it is none of the three."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "pydantic"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return "dataclass"
    if _is_typeddict(tp):
        return "typeddict"
    return None


def _is_typeddict(tp: object) -> bool:
    if typing.is_typeddict(tp):
        return True
    try:
        import typing_extensions
    except ImportError:  # pragma: no cover - pydantic depends on it
        return False
    return bool(typing_extensions.is_typeddict(tp))


def reducer_of(metadata: Iterable[object]) -> Reducer | None:
    """The reducer among an ``Annotated`` type's metadata: its last plain callable.

    Classes are callable but are not reducers; pydantic's constraint objects
    (``Field(ge=0)``, ``Gt``...) are not callable, so they are never mistaken
    for one.
    """
    found = [m for m in metadata if callable(m) and not isinstance(m, type)]
    return found[-1] if found else None


def initial_of(annotation: Any) -> Callable[[], Any] | None:
    """A factory of the empty value a reducer channel of this type starts from, or None.

    ``list[str]`` starts from ``list()``, ``int`` from ``int()``; a type that
    cannot be built without arguments (``Optional[...]``, ``Any``, a model
    with required fields) starts absent, and its first write sets it.
    """
    origin = typing.get_origin(annotation) or annotation
    if not isinstance(origin, type) or inspect.isabstract(origin):
        return None
    try:
        origin()
    except Exception:
        return None
    return origin


@dataclass(frozen=True)
class Key:
    """One key of a schema class: its type (unwrapped) and reducer, as declared."""

    name: str
    annotation: Any
    reducer: Reducer | None


def _unwrap(hint: Any) -> tuple[Any, list[object]]:
    """(the bare type, its Annotated metadata), through Required/NotRequired/ReadOnly."""
    metadata: list[object] = []
    while True:
        origin = typing.get_origin(hint)
        if origin is typing.Annotated:
            metadata.extend(hint.__metadata__)
            hint = hint.__origin__
        elif origin is not None and _wrapper_name(origin) in _WRAPPERS:
            hint = typing.get_args(hint)[0]
        else:
            return hint, metadata


def _wrapper_name(origin: Any) -> str | None:
    # typing's special forms have a _name; typing_extensions' own have a __name__.
    return getattr(origin, "_name", None) or getattr(origin, "__name__", None)


def _hints(cls: type, what: str) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except Exception as exc:
        raise GraphError(
            f"cannot read the annotations of {what} {cls.__qualname__}: {type(exc).__name__}: "
            f"{exc}; define every type it names at module level (or import it there)"
        ) from exc


def keys_of(cls: type, what: str = "state") -> tuple[Key, ...]:
    """The keys of a TypedDict, dataclass or pydantic model, in declaration order."""
    kind = kind_of(cls)
    if kind == "pydantic":
        assert issubclass(cls, BaseModel)
        return tuple(
            Key(name, info.annotation, reducer_of(info.metadata))
            for name, info in cls.model_fields.items()
        )
    if kind == "dataclass":
        hints = _hints(cls, what)
        out = []
        for f in dataclasses.fields(cls):
            bare, metadata = _unwrap(hints.get(f.name, Any))
            out.append(Key(f.name, bare, reducer_of(metadata)))
        return tuple(out)
    if kind == "typeddict":
        out = []
        for name, hint in _hints(cls, what).items():
            bare, metadata = _unwrap(hint)
            out.append(Key(name, bare, reducer_of(metadata)))
        return tuple(out)
    raise GraphError(
        f"the {what} must be a TypedDict, a dataclass or a pydantic BaseModel subclass, got "
        f"{cls!r}; define `class State(TypedDict): ...` (or a dataclass, or a BaseModel) and "
        "pass the class"
    )


@dataclass(frozen=True)
class Channel:
    """One key of the run's state: where values are written and read.

    ``public`` channels are the state type's keys; the others are private:
    keys only some node's input schema declares, passed between nodes and
    never part of the state type (nor of ``invoke``'s result).
    """

    name: str
    annotation: Any
    reducer: Reducer | None
    #: The empty value a reducer channel starts with (None: it starts absent).
    initial: Callable[[], Any] | None
    public: bool


def channels_of(state: type, extra: Iterable[tuple[type, str]] = ()) -> dict[str, Channel]:
    """The channels of ``state``, then the keys of each ``(schema class, what)`` it lacks.

    A key declared by several classes keeps the state's declaration (its
    reducer above all); a key the state lacks is a private channel.
    """
    out: dict[str, Channel] = {}
    for key in keys_of(state):
        out[key.name] = _channel(key, public=True)
    for cls, what in extra:
        for key in keys_of(cls, what):
            if key.name not in out:
                out[key.name] = _channel(key, public=False)
    return out


def _channel(key: Key, *, public: bool) -> Channel:
    initial = initial_of(key.annotation) if key.reducer is not None else None
    return Channel(key.name, key.annotation, key.reducer, initial, public)


def input_type_of(fn: Callable[..., Any]) -> type | None:
    """The schema class annotating ``fn``'s first parameter, if it is one (else None).

    A node annotated ``def research(state: Question)`` reads only
    ``Question``'s keys; ``dict``, ``Any`` or no annotation reads the state.
    """
    try:
        sig = inspect.signature(fn, eval_str=True)
    except (TypeError, ValueError, NameError, SyntaxError):
        return None
    params = [
        p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not params:
        return None
    ann = params[0].annotation
    return ann if kind_of(ann) is not None else None


def field_names(cls: type) -> tuple[str, ...]:
    """The key names of a schema class (see ``keys_of``)."""
    return tuple(k.name for k in keys_of(cls))


def instance_updates(value: object, conventions: str) -> Mapping[str, Any] | None:
    """The keys an instance of a dataclass or pydantic model writes, or None if it is neither.

    A dataclass writes every field. A pydantic model writes, under the engine's
    conventions, the fields it was built with (``model_fields_set``); under
    LangGraph's, also every field whose value is not None.
    """
    if isinstance(value, BaseModel):
        names = type(value).model_fields
        if conventions == "engine":
            return {k: getattr(value, k) for k in names if k in value.model_fields_set}
        return {
            k: v
            for k in names
            if (v := getattr(value, k)) is not None or k in value.model_fields_set
        }
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return None

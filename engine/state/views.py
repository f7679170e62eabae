"""What one node receives: its view of the channels, built as the class it asked for.

::

    channels {topic, notes, scratch}          node                       receives
        |-- state view ------------------->   def n(state: State)        State(...) / {...}
        |-- its input schema's keys ------>   def n(state: Question)     Question(topic=...)
        '-- declared reads=["topic"] ----->   add_node(..., reads=[...]) {"topic": ...} or a view

A view reads only the channels it names that hold a value: a TypedDict view
is a dict of those (an absent key is absent, as in LangGraph), a dataclass
or pydantic view is an instance built from them (defaults fill the rest).
Projecting before dispatch is what keeps a cpu node's payload small (lean
dispatch): only the keys read cross the process boundary.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from ..lean import StateView
from .channels import Kind

#: How a view is built: a dict, an instance of ``cls``, or a read-only attribute view.
Build = Literal["dict", "dataclass", "pydantic", "attrs"]


@dataclass(frozen=True)
class View:
    """How one node's argument is built from the channel values.

    ``construct``: a pydantic view built without validating again, because
    its values were validated as exactly these fields when they were written.
    """

    node: str
    keys: tuple[str, ...]
    build: Build
    cls: type | None = None
    construct: bool = False
    #: Where the keys came from, for ``describe`` and messages.
    source: Literal["state", "schema", "declared"] = "state"
    #: For a read-only view of a dataclass or pydantic state: how to make the default of
    #: a key read that nothing wrote yet (its field's default), as an instance would hold.
    defaults: Mapping[str, Callable[[], Any]] = field(default_factory=dict)

    def __call__(self, values: Mapping[str, Any], *, copy_values: bool = True) -> Any:
        """The node's argument; ``copy_values`` deep-copies the values read (in-process calls).

        A dataclass view missing a required field raises the dataclass's own
        ``TypeError``, and a pydantic view that does not validate pydantic's
        ``ValidationError``, as LangGraph does when it builds the node's input.
        """
        got = {k: values[k] for k in self.keys if k in values}
        if copy_values:
            got = copy.deepcopy(got)
        if self.build == "dict":
            return got
        if self.build == "attrs":
            for key, make in self.defaults.items():
                if key not in got:
                    got[key] = make()
            return StateView(self.node, got)
        if self.build == "dataclass":
            assert self.cls is not None
            init = {f.name for f in dataclasses.fields(self.cls) if f.init}
            obj = self.cls(**{k: v for k, v in got.items() if k in init})
            for k, v in got.items():
                if k not in init:
                    object.__setattr__(obj, k, v)
            return obj
        assert self.cls is not None and issubclass(self.cls, BaseModel)
        if self.construct:
            return self.cls.model_construct(**got)
        return self.cls.model_validate(got)

    @property
    def reads_all(self) -> bool:
        """Whether this is the whole-state view (nothing to project for lean dispatch)."""
        return self.source == "state"

    def describe(self) -> str:
        name = self.cls.__name__ if self.cls is not None else self.build
        how = {
            "dict": "as a dict",
            "attrs": "as a read-only view",
            "dataclass": f"as {name}",
            "pydantic": f"as {name}",
        }[self.build]
        return f"reads {list(self.keys)} ({self.source}, {how})"


def build_of(kind: Kind) -> Build:
    """How a view over a schema class of ``kind`` is built."""
    builds: dict[Kind, Build] = {
        "typeddict": "dict",
        "dataclass": "dataclass",
        "pydantic": "pydantic",
    }
    return builds[kind]


def defaults_of(cls: type, keys: tuple[str, ...]) -> dict[str, Callable[[], Any]]:
    """Factories of the defaults of ``keys`` in a dataclass or pydantic class (those that
    have one): what an instance built without them would hold."""
    out: dict[str, Callable[[], Any]] = {}
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        for key in keys:
            info = cls.model_fields.get(key)
            if info is not None and not info.is_required():
                out[key] = functools.partial(info.get_default, call_default_factory=True)
    elif dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if f.name not in keys:
                continue
            if f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory
            elif f.default is not dataclasses.MISSING:
                out[f.name] = functools.partial(copy.deepcopy, f.default)
    return out


def same_field_types(view: type[BaseModel], state: type[BaseModel]) -> bool:
    """True when ``view`` can be built from ``state``'s validated values without validating."""
    if view is state:
        return True
    decorators = view.__pydantic_decorators__
    if decorators.field_validators or decorators.model_validators or decorators.validators:
        return False
    return all(
        name in state.model_fields
        and view.model_fields[name].annotation == state.model_fields[name].annotation
        for name in view.model_fields
    )

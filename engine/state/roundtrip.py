"""Which fields of a pydantic model survive ``model_validate(model_dump(mode="python"))``.

Read from the model's core schema, conservatively: anything not recognised
counts as unsure, so the checkpoint codec checks it rather than trusting it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel


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
            return bool(target.get("type") != "enum")
        return t in ("model", "typed-dict", "dataclass", "model-fields")

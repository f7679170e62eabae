"""The checkpoint value codec: python values <-> JSON data, exactly, with tags.

Plain JSON holds ``None``, ``bool``, ``int``, ``float``, ``str``, lists and
string-keyed objects. Everything else a state schema accepts is written as a
one-key object whose key is a tag::

    {"$float": "nan"}            NaN, inf, -inf (finite floats, -0.0 too, stay plain)
    {"$int": "-1f..."}           an int of more than 2048 bits, in hex (no digit limit)
    {"$bytes": "<base64>"}       also "$bytearray"
    {"$tuple": [...]}            also "$set", "$frozenset"
    {"$dict": [[k, v], ...]}     a dict with a key that is not a string, or with
                                 one key that looks like a tag
    {"$complex": [re, im]}
    {"$decimal": "1.10"}         str(Decimal): NaN, -0, exponents and trailing zeros kept
    {"$uuid": "..."}
    {"$date": "2024-01-31"}
    {"$datetime": [naive ISO, tz, fold]}   tz: null, {"offset": [d, s, us], "name": ...}
    {"$time": [naive ISO, tz, fold]}           or {"zone": "Europe/Paris"}
    {"$timedelta": [days, seconds, microseconds]}
    {"$str": "<base64>"}         a str holding a surrogate pair as two code points
    {"$message": [name, {...}]}  a chat message: langchain-core's classes
                                 (``"lc:AIMessage"``...) or engine.messages' own
                                 (``"engine:Message"``), its fields encoded

Other strings need no tag: the text form (``dumps``) escapes every non-ASCII
character, so NUL and lone surrogates travel as ``\\u0000``/``\\ud800`` and no
store ever sees them raw. Only a high surrogate followed by a low one cannot
travel so: a JSON reader joins the two escapes into one character. Dict
order is kept (JSON text keeps object order).

Decoding builds only builtin and standard-library values, and chat messages
of a fixed list of classes named in this module (``MESSAGE_CLASSES``): it
never imports a name found in the data and never runs code from it. A value of any other type
(an enum member, a ``Path``, a pydantic model inside ``Any``...) is written in
pydantic's JSON form and marked *inexact*: it comes back as plain data, which
only validation into its declared type can turn back into the value. Callers
check that round trip (:func:`difference`) and refuse what it would change.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import json
import math
import re
import sys
import uuid
import zoneinfo
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

#: Ints wider than this many bits are written in hex: ``str(int)`` refuses
#: more than ``sys.get_int_max_str_digits()`` digits (at least 640), hex never does.
BIG_INT_BITS = 2048


class CodecError(ValueError):
    """A value the codec cannot write, or data it cannot read; ``path`` says where."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(f"{path or 'the value'}: {message}" if path else message)
        self.path = path


@dataclass(frozen=True)
class Encoded:
    """A value as JSON data; ``exact`` when decoding it gives the value back as it was.

    ``exact`` is False when part of the value had no exact form and was written
    as pydantic's JSON form of it (``inexact_at`` names the first such part):
    decoding gives plain data there, which only validation into the value's
    declared type can turn back.
    """

    data: Any
    exact: bool
    #: Where the first part without an exact form is, and its type's name.
    inexact_at: str = ""
    inexact_type: str = ""


def encode(value: Any, path: str = "") -> Encoded:
    """``value`` as JSON data; raises :class:`CodecError` naming the part it cannot write."""
    enc = _Encoder()
    data = enc.value(value, path)
    if enc.inexact is None:
        return Encoded(data, True)
    return Encoded(data, False, *enc.inexact)


def dumps(data: Any) -> str:
    """JSON data (as ``encode`` makes it) as ASCII text; strict: no NaN, no foreign types."""
    return json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def decode(data: Any) -> Any:
    """The python value of JSON data written by :func:`encode`.

    Raises :class:`CodecError` for a tag this engine does not know or a tag
    whose content is malformed (a hostile or corrupt checkpoint).
    """
    return _decode(data, "")


# -- encoding --------------------------------------------------------------------


class _Encoder:
    """One walk over a value. Invariant: ``inexact`` is the first fallback's (path, type)."""

    def __init__(self) -> None:
        self.inexact: tuple[str, str] | None = None

    def value(self, v: Any, path: str) -> Any:
        t = type(v)
        if t is str:
            if _PAIR.search(v) is None:
                return v
            return {"$str": base64.b64encode(v.encode("utf-8", "surrogatepass")).decode()}
        if v is None or t is bool:
            return v
        if t is int:
            if v.bit_length() > BIG_INT_BITS:
                return {"$int": format(v, "x")}
            return v
        if t is float:
            if math.isfinite(v):
                return v
            return {"$float": "nan" if v != v else ("inf" if v > 0 else "-inf")}
        if t is list:
            if _written_as_is(v):
                return list(v)
            return [self.value(x, f"{path}[{i}]") for i, x in enumerate(v)]
        if t is dict:
            return self._dict(v, path)
        if t is tuple:
            return {"$tuple": [self.value(x, f"{path}[{i}]") for i, x in enumerate(v)]}
        if t is set or t is frozenset:
            tag = "$set" if t is set else "$frozenset"
            return {tag: [self.value(x, f"{path}{{}}") for x in v]}
        if t is bytes or t is bytearray:
            tag = "$bytes" if t is bytes else "$bytearray"
            return {tag: base64.b64encode(v).decode("ascii")}
        special = _SPECIAL.get(t)
        if special is not None:
            tag, write = special
            return {tag: write(self, v, path)}
        name = _message_name(t)
        if name is not None:
            fields = {k: self.value(x, f"{path}.{k}") for k, x in _message_fields(v).items()}
            return {"$message": [name, fields]}
        return self._fallback(v, path)

    def _dict(self, v: dict[Any, Any], path: str) -> Any:
        plain = (
            set(map(type, v)) <= _STR
            and not (len(v) == 1 and next(iter(v)).startswith("$"))
            and not any(map(_PAIR.search, v))
        )
        if plain:
            if _written_as_is(v.values()):
                return dict(v)
            return {k: self.value(x, f"{path}[{k!r}]") for k, x in v.items()}
        return {
            "$dict": [
                [self.value(k, f"{path}<key {k!r}>"), self.value(x, f"{path}[{k!r}]")]
                for k, x in v.items()
            ]
        }

    def _fallback(self, v: Any, path: str) -> Any:
        """A type without an exact form: pydantic's dump of it, marked inexact."""
        if self.inexact is None:
            self.inexact = (path or "the value", type(v).__name__)
        try:
            if isinstance(v, BaseModel):
                # Its python-mode dump keeps the field values' own types exact.
                plain = v.model_dump(mode="python")
            else:
                from pydantic_core import to_jsonable_python

                plain = to_jsonable_python(v)
        except Exception as exc:
            raise CodecError(
                f"a {type(v).__name__} has no JSON form ({type(exc).__name__}: {exc})", path
            ) from exc
        return self.value(plain, path)


_STR = frozenset({str})
_AS_IS = frozenset({bool, type(None)})

#: A surrogate pair held as two code points: JSON text cannot keep it apart.
_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")


def _written_as_is(items: Iterable[Any]) -> bool:
    """Whether every item is JSON that needs no tag: a fast path, at C speed, for the
    long lists of strings, ints or floats (token ids, scores) states are made of."""
    kinds = set(map(type, items))
    if kinds <= _AS_IS:
        return True
    if kinds == _STR:
        return not any(map(_PAIR.search, items))
    if kinds == {int}:
        numbers: Any = items
        return bool(max(max(numbers), -min(numbers)).bit_length() <= BIG_INT_BITS)
    if kinds == {float}:
        return all(map(math.isfinite, items))
    return False


def _tz(tz: dt.tzinfo | None, path: str) -> Any:
    if tz is None:
        return None
    if type(tz) is dt.timezone:
        offset = tz.utcoffset(None)
        assert offset is not None  # a timezone always has one
        days, seconds, micro = offset.days, offset.seconds, offset.microseconds
        return {"offset": [days, seconds, micro], "name": tz.tzname(None)}
    if type(tz) is zoneinfo.ZoneInfo and tz.key is not None:
        return {"zone": tz.key}
    raise CodecError(
        f"time zone {tz!r} ({type(tz).__name__}) has no exact form; use datetime.timezone "
        "or zoneinfo.ZoneInfo",
        path,
    )


def _datetime(enc: _Encoder, v: dt.datetime, path: str) -> Any:
    return [v.replace(tzinfo=None, fold=0).isoformat(), _tz(v.tzinfo, path), v.fold]


def _time(enc: _Encoder, v: dt.time, path: str) -> Any:
    return [v.replace(tzinfo=None, fold=0).isoformat(), _tz(v.tzinfo, path), v.fold]


#: Exact types (not subclasses) with a tag of their own, and how each is written.
_SPECIAL: dict[type, tuple[str, Callable[[_Encoder, Any, str], Any]]] = {
    complex: ("$complex", lambda enc, v, path: [enc.value(v.real, path), enc.value(v.imag, path)]),
    decimal.Decimal: ("$decimal", lambda enc, v, path: str(v)),
    uuid.UUID: ("$uuid", lambda enc, v, path: str(v)),
    dt.date: ("$date", lambda enc, v, path: v.isoformat()),
    dt.datetime: ("$datetime", _datetime),
    dt.time: ("$time", _time),
    dt.timedelta: ("$timedelta", lambda enc, v, path: [v.days, v.seconds, v.microseconds]),
}


# -- chat messages ----------------------------------------------------------------

#: langchain-core's message classes a checkpoint keeps exactly, by name. A fixed list:
#: decoding looks a stored name up here and nowhere else.
LANGCHAIN_MESSAGES = (
    "AIMessage",
    "AIMessageChunk",
    "ChatMessage",
    "ChatMessageChunk",
    "FunctionMessage",
    "FunctionMessageChunk",
    "HumanMessage",
    "HumanMessageChunk",
    "RemoveMessage",
    "SystemMessage",
    "SystemMessageChunk",
    "ToolMessage",
    "ToolMessageChunk",
)

#: engine.messages' own classes (dataclasses), by name.
ENGINE_MESSAGES = ("Message", "RemoveMessage")

#: Every name a ``$message`` tag may carry.
MESSAGE_CLASSES = tuple(f"lc:{n}" for n in LANGCHAIN_MESSAGES) + tuple(
    f"engine:{n}" for n in ENGINE_MESSAGES
)


def _message_name(t: type) -> str | None:
    """The ``$message`` name of exactly this class, or None (subclasses are not kept exactly).

    Only modules already imported are looked at: a value of a message class
    means its module is loaded, and nothing is imported to find out.
    """
    module = getattr(t, "__module__", "")
    name = t.__name__
    if module.startswith("langchain_core.messages") and name in LANGCHAIN_MESSAGES:
        lc = sys.modules.get("langchain_core.messages")
        if lc is not None and getattr(lc, name, None) is t:
            return f"lc:{name}"
    if module == "engine.messages" and name in ENGINE_MESSAGES:
        return f"engine:{name}"
    return None


def _message_fields(v: Any) -> dict[str, Any]:
    if isinstance(v, BaseModel):
        return {k: getattr(v, k) for k in type(v).model_fields}
    return {f.name: getattr(v, f.name) for f in dataclasses.fields(v)}


def _read_message(body: Any, path: str) -> Any:
    if type(body) is not list or len(body) != 2 or type(body[1]) is not dict:
        raise ValueError("expected [class name, {fields}]")
    name = _text(body[0])
    if name not in MESSAGE_CLASSES:
        raise ValueError(f"{name[:40]!r} is not a message class a checkpoint keeps")
    fields = {k: _decode(x, f"{path}.{k}") for k, x in body[1].items()}
    family, cls_name = name.split(":")
    if family == "engine":
        from ..messages import Message, RemoveMessage

        native: dict[str, Any] = {"Message": Message, "RemoveMessage": RemoveMessage}
        return native[cls_name](**fields)
    try:
        import langchain_core.messages as lc
    except ImportError as exc:
        raise CodecError(
            f"the checkpoint holds a langchain-core {cls_name}, but langchain-core is not "
            "installed: pip install 'engine[langgraph]'",
            path,
        ) from exc
    return getattr(lc, cls_name).model_validate(fields)


# -- decoding --------------------------------------------------------------------


def _decode(data: Any, path: str) -> Any:
    t = type(data)
    if t is list:
        return [_decode(x, f"{path}[{i}]") for i, x in enumerate(data)]
    if t is dict:
        if len(data) == 1:
            ((key, body),) = data.items()
            if type(key) is str and key.startswith("$"):
                return _untag(key, body, path)
        return {k: _decode(x, f"{path}[{k!r}]") for k, x in data.items()}
    if t in (str, int, float, bool) or data is None:
        return data
    raise CodecError(f"{t.__name__} is not JSON data", path)


def _untag(tag: str, body: Any, path: str) -> Any:
    read = _READERS.get(tag)
    if read is None:
        raise CodecError(
            f"unknown tag {tag[:40]!r} (written by a newer engine?); known: {sorted(_READERS)}",
            path,
        )
    try:
        return read(body, path)
    except CodecError:
        raise
    except Exception as exc:
        raise CodecError(f"malformed {tag} ({type(exc).__name__}: {exc})", path) from exc


def _items(body: Any, path: str) -> list[Any]:
    if type(body) is not list:
        raise TypeError(f"expected a list, got {type(body).__name__}")
    return [_decode(x, path) for x in body]


def _text(body: Any) -> str:
    if type(body) is not str:
        raise TypeError(f"expected a string, got {type(body).__name__}")
    return body


def _float(body: Any, path: str) -> float:
    names = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
    if body not in names:
        raise ValueError(f"expected one of {sorted(names)}, got {body!r}")
    return names[body]


def _dict_pairs(body: Any, path: str) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for pair in _items(body, path):
        if type(pair) is not list or len(pair) != 2:
            raise TypeError("expected [key, value] pairs")
        out[pair[0]] = pair[1]
    return out


def _read_tz(body: Any) -> dt.tzinfo | None:
    if body is None:
        return None
    if type(body) is dict and set(body) == {"offset", "name"}:
        days, seconds, micro = body["offset"]
        offset = dt.timedelta(days=days, seconds=seconds, microseconds=micro)
        name = body["name"]
        return dt.timezone(offset) if name is None else dt.timezone(offset, _text(name))
    if type(body) is dict and set(body) == {"zone"}:
        return zoneinfo.ZoneInfo(_text(body["zone"]))
    raise ValueError(f"unknown time zone form {body!r:.80}")


def _moment(body: Any) -> tuple[str, dt.tzinfo | None, int]:
    if type(body) is not list or len(body) != 3 or body[2] not in (0, 1):
        raise ValueError("expected [ISO text, time zone, fold]")
    return _text(body[0]), _read_tz(body[1]), body[2]


def _read_datetime(body: Any, path: str) -> dt.datetime:
    text, tz, fold = _moment(body)
    return dt.datetime.fromisoformat(text).replace(tzinfo=tz, fold=fold)


def _read_time(body: Any, path: str) -> dt.time:
    text, tz, fold = _moment(body)
    return dt.time.fromisoformat(text).replace(tzinfo=tz, fold=fold)


def _read_timedelta(body: Any, path: str) -> dt.timedelta:
    days, seconds, micro = body
    if not all(type(x) is int for x in (days, seconds, micro)):
        raise TypeError("expected three ints")
    return dt.timedelta(days=days, seconds=seconds, microseconds=micro)


def _read_complex(body: Any, path: str) -> complex:
    real, imag = _items(body, path)
    if type(real) is not float or type(imag) is not float:
        raise TypeError("expected two floats")
    return complex(real, imag)


def _read_int(body: Any, path: str) -> int:
    text = _text(body)
    if len(text) > 1_000_000:
        raise ValueError("more than a million hex digits")
    return int(text, 16)


_READERS: dict[str, Callable[[Any, str], Any]] = {
    "$str": lambda body, path: base64.b64decode(_text(body), validate=True).decode(
        "utf-8", "surrogatepass"
    ),
    "$float": _float,
    "$int": _read_int,
    "$bytes": lambda body, path: base64.b64decode(_text(body), validate=True),
    "$bytearray": lambda body, path: bytearray(base64.b64decode(_text(body), validate=True)),
    "$tuple": lambda body, path: tuple(_items(body, path)),
    "$set": lambda body, path: set(_items(body, path)),
    "$frozenset": lambda body, path: frozenset(_items(body, path)),
    "$dict": _dict_pairs,
    "$complex": _read_complex,
    "$decimal": lambda body, path: decimal.Decimal(_text(body)),
    "$uuid": lambda body, path: uuid.UUID(_text(body)),
    "$date": lambda body, path: dt.date.fromisoformat(_text(body)),
    "$datetime": _read_datetime,
    "$time": _read_time,
    "$timedelta": _read_timedelta,
    "$message": _read_message,
}


# -- comparing -------------------------------------------------------------------


def difference(a: Any, b: Any, path: str = "") -> str | None:
    """Where ``b`` differs from ``a``, strictly (types, dict order, NaN, -0.0), or None.

    ``==`` is not enough to tell a checkpoint's round trip from the value
    saved: ``1 == 1.0 == True``, ``-0.0 == 0.0``, a NaN is unequal to itself,
    dicts compare without order, and a model compares equal to no dict.
    """
    here = path or "the value"
    if type(a) is not type(b):
        return f"{here} is a {type(b).__name__}, not a {type(a).__name__}"
    t = type(a)
    if t is float:
        if a == b and math.copysign(1.0, a) == math.copysign(1.0, b):
            return None
        return None if a != a and b != b else f"{here} is {b!r}, not {a!r}"
    if t is complex:
        return difference(a.real, b.real, f"{path}.real") or difference(
            a.imag, b.imag, f"{path}.imag"
        )
    if t is list or t is tuple:
        if len(a) != len(b):
            return f"{here} has {len(b)} items, not {len(a)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    if t is dict:
        if list(map(_key, a)) != list(map(_key, b)):
            return f"{here} has keys {_short(list(b))}, not {_short(list(a))}"
        for (k, x), (k2, y) in zip(a.items(), b.items(), strict=True):
            found = difference(k, k2, f"{path}<key {k!r}>") or difference(x, y, f"{path}[{k!r}]")
            if found:
                return found
        return None
    if t is set or t is frozenset:
        return None if _same_members(a, b) else f"{here} is {_short(b)}, not {_short(a)}"
    if isinstance(a, BaseModel):
        return _model_difference(a, b, path)
    if isinstance(a, dt.datetime | dt.time):
        same = a == b and a.fold == b.fold and _tz_key(a.tzinfo) == _tz_key(b.tzinfo)
        if t is dt.datetime:
            same = same and a.replace(tzinfo=None) == b.replace(tzinfo=None)
        return None if same else f"{here} is {b!r}, not {a!r}"
    if isinstance(a, decimal.Decimal):
        # Decimal('1.0') == Decimal('1.00'); NaN != NaN: compare their text.
        return None if str(a) == str(b) else f"{here} is {b!r}, not {a!r}"
    try:
        same = bool(a == b)
    except Exception:
        same = False
    return None if same else f"{here} is {_short(b)}, not {_short(a)}"


def _key(k: Any) -> Any:
    """A dict key's identity for order comparison (NaN keys compare by position)."""
    return (type(k), k) if not (type(k) is float and k != k) else (float, "nan")


def _same_members(a: Any, b: Any) -> bool:
    if len(a) != len(b):
        return False
    if a == b:
        return True
    # NaN members are unequal to themselves: match every member strictly.
    rest = list(b)
    for x in a:
        for i, y in enumerate(rest):
            if difference(x, y) is None:
                del rest[i]
                break
        else:
            return False
    return True


def _model_difference(a: BaseModel, b: BaseModel, path: str) -> str | None:
    prefix = f"{path}." if path else ""
    for name in type(a).model_fields:
        found = difference(getattr(a, name), getattr(b, name), f"{prefix}{name}")
        if found:
            return found
    extra_a, extra_b = a.__pydantic_extra__ or {}, b.__pydantic_extra__ or {}
    return difference(extra_a, extra_b, f"{prefix}<extra fields>")


def _tz_key(tz: dt.tzinfo | None) -> Any:
    if tz is None:
        return None
    if type(tz) is dt.timezone:
        return ("timezone", tz.utcoffset(None), tz.tzname(None))
    if type(tz) is zoneinfo.ZoneInfo:
        return ("zone", tz.key)
    return (type(tz), id(tz))


def _short(v: Any, limit: int = 80) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."

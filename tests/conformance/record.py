"""The record a conformance program leaves: what a user could observe, in a comparable form.

A program's ``scenario(rec)`` drives its graph and hands every observable
result to the :class:`Recorder`: return values, stream chunks, snapshots,
exceptions. The record is built in two stages:

1. **encode** (:func:`encode`), as each value is recorded: turn it into plain
   JSON data that says what the value *is*, structurally, independent of which
   library built it. Class names are kept, module names are not (a LangGraph
   ``StateSnapshot`` and an engine one with the same fields encode alike).

   ================================  ==========================================
   value                             encoded as
   ================================  ==========================================
   None, bool, int, float, str       itself
   list                              list
   tuple (``next``, ``(mode, c)``)   ``{"<tuple>": [...]}`` (a tuple is not a
                                     list: ``("a",) != ["a"]`` in user code)
   set, frozenset                    ``{"<set>": [...]}`` sorted
   dict with str keys                object; key order is not compared (dict
                                     equality ignores it in Python too)
   dict with other keys              ``{"<dict>": [[k, v], ...]}`` sorted
   NamedTuple, dataclass, pydantic   ``{"<object>": ClassName, "fields": {...}}``
   model, ``__slots__`` object       every field, recursively
   exception                         ``{"<error>": ClassName, "bases": [...],
                                     "message": str}``; ``bases`` are the
                                     builtin classes it derives from (so
                                     ``except RecursionError`` keeps working);
                                     ``message`` only for errors that are not
                                     the library's own (a node's ``KeyError``
                                     keeps its text; LangGraph's prose is not
                                     something to copy)
   enum member                       ``{"<enum>": "Class.NAME"}``
   class / function                  ``{"<class>": name}`` / ``{"<function>": name}``
   datetime                          ISO string (then masked, below)
   ================================  ==========================================

   Anything else is refused (``TypeError``), so a new kind of value gets a
   rule here rather than a silent ``repr``.

2. **normalise** (:func:`normalise`), once the whole record is in (across
   processes for the programs that resume in a new one): volatile values are
   masked in every string, dict keys included, in a fixed traversal order
   (record order, dict keys sorted):

   - identifiers (UUIDs such as checkpoint ids, task ids, run ids; 32-hex
     digests such as interrupt ids) become ``<id:N>``, numbered by first
     appearance. Identity is still compared: the same id in two places gets
     the same number, so "the fork starts from the checkpoint the history
     listed" or "the interrupt id in ``__interrupt__`` is the one
     ``get_state`` lists" must hold on both sides.
   - ISO-8601 timestamps (``created_at``, debug ``timestamp``) become ``<ts>``.

   And keys that name LangGraph's internal channels, which no user acts on,
   are dropped wherever they appear as dict keys: ``langgraph_triggers`` and
   ``langgraph_path`` (messages-mode metadata) and ``triggers`` (debug task
   payloads). See
   :data:`DROPPED_KEYS`; likewise a task's ``path`` (stage 1,
   :data:`DROPPED_FIELDS`).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import inspect
import json
import re
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

#: Dict keys removed from records: LangGraph's internal channel names
#: (``branch:to:agent``, ``__start__``...) and task paths
#: (``("__pregel_pull", "agent")``) that reach users only as bookkeeping in
#: metadata. The engine need not reproduce its channel naming.
DROPPED_KEYS = frozenset({"langgraph_triggers", "triggers", "langgraph_path"})

#: Fields of encoded objects removed from records, by class name. A task's
#: ``path`` spells LangGraph's internal pull/push task kinds
#: (``("__pregel_pull", "review")``); its ``name`` says which node it runs.
DROPPED_FIELDS = {"PregelTask": frozenset({"path"})}

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX32 = re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")
_ISO_TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(\+00:00|Z)?")

Encoded = Any  # JSON data: None | bool | int | float | str | list | dict


def _is_library_error(exc: BaseException) -> bool:
    """LangGraph's or the engine's own exception (its message is their prose)."""
    module = type(exc).__module__ or ""
    return module.split(".")[0] in {"langgraph", "engine"}


def encode_error(exc: BaseException, message: bool | None = None) -> dict[str, Encoded]:
    """An exception as its type, its builtin bases and (for user errors) its message.

    ``message=None`` keeps the message unless the class is LangGraph's or the
    engine's; ``False`` drops it (a builtin error raised with the library's
    own words, e.g. a ``RuntimeError`` about misuse).
    """
    bases = [
        cls.__name__
        for cls in type(exc).__mro__[1:]
        if cls.__module__ == "builtins" and cls not in (object, BaseException, Exception)
    ]
    out: dict[str, Encoded] = {"<error>": type(exc).__name__, "bases": bases}
    keep_message = not _is_library_error(exc) if message is None else message
    if keep_message:
        out["message"] = str(exc)
    return out


def _fields(obj: Any) -> dict[str, Any] | None:
    """The named fields of a structured object, or None if it is not one."""
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return {name: getattr(obj, name) for name in obj._fields}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    model_fields = getattr(type(obj), "model_fields", None)
    if isinstance(model_fields, dict):  # pydantic v2 model (langchain messages too)
        return {name: getattr(obj, name) for name in model_fields}
    slots = [s for cls in type(obj).__mro__ for s in getattr(cls, "__slots__", ())]
    if slots and not isinstance(obj, (str, bytes, int, float)):
        return {name: getattr(obj, name) for name in slots if not name.startswith("_")}
    return None


def encode(value: Any) -> Encoded:
    """Stage 1: a value as plain, library-neutral JSON data (see the module docstring)."""
    if value is None or (
        isinstance(value, (bool, int, float, str)) and not isinstance(value, enum.Enum)
    ):
        return value
    if isinstance(value, enum.Enum):
        return {"<enum>": f"{type(value).__name__}.{value.name}"}
    if isinstance(value, BaseException):
        return encode_error(value)
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, type):
        return {"<class>": value.__name__}
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return {"<tuple>": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return {"<set>": sorted((encode(v) for v in value), key=_sort_key)}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: encode(v) for k, v in value.items()}
        pairs = [[encode(k), encode(v)] for k, v in value.items()]
        return {"<dict>": sorted(pairs, key=_sort_key)}
    fields = _fields(value)
    if fields is not None:
        name = type(value).__name__
        dropped = DROPPED_FIELDS.get(name, frozenset())
        return {
            "<object>": name,
            "fields": {k: encode(v) for k, v in fields.items() if k not in dropped},
        }
    if inspect.isroutine(value):
        return {"<function>": getattr(value, "__name__", "?")}
    raise TypeError(
        f"conformance record: no encoding rule for {type(value).__module__}."
        f"{type(value).__qualname__} ({value!r:.80}); add one to tests/conformance/record.py"
    )


def _sort_key(encoded: Encoded) -> str:
    return json.dumps(encoded, sort_keys=True)


class _Masker:
    """Stage 2 state: ids numbered by first appearance in one record.

    # Invariant: ``ids`` maps each raw identifier seen so far to its number;
    # the traversal order (record order, sorted dict keys) is fixed, so equal
    # records get equal numbers.
    """

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def _id(self, match: re.Match[str]) -> str:
        raw = match.group(0)
        number = self.ids.setdefault(raw, len(self.ids) + 1)
        return f"<id:{number}>"

    def text(self, s: str) -> str:
        s = _UUID.sub(self._id, s)
        s = _HEX32.sub(self._id, s)
        return _ISO_TS.sub("<ts>", s)

    def walk(self, value: Encoded) -> Encoded:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.walk(v) for v in value]
        if isinstance(value, dict):
            out = {}
            for key in sorted(value):
                if key in DROPPED_KEYS:
                    continue
                out[self.text(key)] = self.walk(value[key])
            return out
        return value


def normalise(entries: list[list[Encoded]]) -> list[list[Encoded]]:
    """Stage 2: mask ids and timestamps, drop internal keys (see the module docstring)."""
    masker = _Masker()
    return [[label, masker.walk(value)] for label, value in entries]


def _masked_key(encoded: Encoded) -> str:
    """Sort key of an unordered collection: its text with every id alike."""
    text = json.dumps(encoded, sort_keys=True)
    return _HEX32.sub("<id>", _UUID.sub("<id>", text))


#: How much of a list's order to compare: all of it (False), none (True), or
#: the order between runs of consecutive items with equal ``key(item)``.
Unordered = bool | Callable[[Any], Any]


def _order(items: list[Any], unordered: Unordered) -> list[Encoded]:
    """Encode ``items``, sorting away the order LangGraph leaves undefined.

    ``True``: the whole list is sorted. A function ``key``: each run of
    consecutive items with equal ``key(item)`` (say, the super-step a node
    ran in) is sorted, and the runs stay in the order they came, so a chunk
    from a later step arriving early still shows up as a difference.
    """
    encoded = [encode(item) for item in items]
    if unordered is True:
        return sorted(encoded, key=_masked_key)
    if unordered is False:
        return encoded
    out: list[Encoded] = []
    run: list[Encoded] = []
    previous: Any = object()
    for item, enc in zip(items, encoded, strict=True):
        key = unordered(item)
        if run and key != previous:
            out.extend(sorted(run, key=_masked_key))
            run = []
        run.append(enc)
        previous = key
    out.extend(sorted(run, key=_masked_key))
    return out


class Recorder:
    """Collects a program's observable results, in order, as ``[label, encoded]`` entries.

    # Invariant: ``entries`` holds stage-1 encodings only (ids and timestamps
    # raw), so the records of several processes can be joined before
    # :func:`normalise` numbers the ids.
    """

    def __init__(self) -> None:
        self.entries: list[list[Encoded]] = []

    def __call__(self, label: str, value: Any, *, unordered: Unordered = False) -> None:
        """Record ``value`` (an iterator is drained into a list).

        ``unordered`` is for a list whose order LangGraph does not define (the
        chunks of nodes that ran in parallel in one step arrive in completion
        order): see :func:`_order`.
        """
        if isinstance(value, Iterator):
            value = list(value)
        if unordered:
            if not isinstance(value, list):
                raise TypeError(f"unordered needs a list, got {type(value).__name__}")
            self._add(label, _order(value, unordered))
        else:
            self._add(label, encode(value))

    def _add(self, label: str, encoded: Encoded) -> None:
        if any(existing == label for existing, _ in self.entries):
            raise ValueError(f"conformance record: label {label!r} used twice")
        self.entries.append([label, encoded])

    def call(
        self,
        label: str,
        fn: Callable[..., Any],
        *args: Any,
        message: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Call ``fn`` and record what it returned or raised; return the result (or None).

        ``message`` is :func:`encode_error`'s, for the exception if one is raised.
        """
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self._add(label, {"raised": encode_error(exc, message)})
            return None
        self._add(label, {"returned": encode(result)})
        return result

    async def acall(
        self,
        label: str,
        fn: Callable[..., Any],
        *args: Any,
        message: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Await ``fn(*args, **kwargs)`` and record what it returned or raised."""
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            self._add(label, {"raised": encode_error(exc, message)})
            return None
        self._add(label, {"returned": encode(result)})
        return result

    def stream(
        self,
        label: str,
        chunks: Iterable[Any],
        *,
        unordered: Unordered = False,
        message: bool | None = None,
    ) -> None:
        """Drain a stream, recording its chunks and the exception that ended it, if any."""
        seen: list[Any] = []
        raised: BaseException | None = None
        try:
            for chunk in chunks:
                seen.append(chunk)
        except Exception as exc:
            raised = exc
        self._add_stream(label, seen, raised, unordered, message)

    async def astream(
        self,
        label: str,
        chunks: AsyncIterable[Any],
        *,
        unordered: Unordered = False,
        message: bool | None = None,
    ) -> None:
        """The async twin of :meth:`stream`."""
        seen: list[Any] = []
        raised: BaseException | None = None
        try:
            async for chunk in chunks:
                seen.append(chunk)
        except Exception as exc:
            raised = exc
        self._add_stream(label, seen, raised, unordered, message)

    def _add_stream(
        self,
        label: str,
        seen: list[Any],
        raised: BaseException | None,
        unordered: Unordered,
        message: bool | None,
    ) -> None:
        encoded = _order(seen, unordered)
        self._add(
            label,
            {
                "chunks": encoded,
                "raised": None if raised is None else encode_error(raised, message),
            },
        )

    @contextmanager
    def raises(self, label: str, *, message: bool | None = None) -> Iterator[None]:
        """Record the exception the block raises (or that it raised none); never re-raise."""
        try:
            yield
        except Exception as exc:
            self._add(label, {"raised": encode_error(exc, message)})
        else:
            self._add(label, {"raised": None})

"""The cpu lane's wire format: arguments to a worker, measured results back.

Imported inside worker processes: standard library, cloudpickle and ``engine.otel``.

::

    driver: dumps_for_worker(arg) -> blob           (one per call: a bad one fails alone)
            request(fn_bytes, init, [blob, ...])    --bytes-->  worker (worker.run_calls)
    worker: one Measured per call -> encode(...)    --frame-->  driver: decode(frame)
              FRAME | len(meta) | meta | plain | blobs            -> one Decoded per call
            or, every call plain data: encode_columns(...)        decode_chunk(frame)
              FRAME | len(meta) | meta (columns) | plain          -> Columns

A frame carries the results of any number of calls (one for a lone call, a
chunk's worth for a batch). Its meta, pickled once, holds each call's head
(``Measured`` but the value and the exception) and the layout of its blobs.
The values that are plain data (a str, a number, None, or a dict of those
by str keys: what most cpu nodes return) travel together in one blob
(``plain``): such a value cannot fail to pickle or to unpickle, so nothing
is lost by not isolating it, and a chunk of thousands of calls costs one
pickle instead of one per field. Every other value (or exception) is a blob
of its own, one per field when it is a dict of updates, each with its
type's name. So whatever fails to cross, in either direction, fails only its
own call and is named down to the field; the driver unpickles each blob
straight out of the frame (a view, never a copy), so a 200 MB result costs
it the frame and the value, not a third copy in between.
"""

from __future__ import annotations

import io
import mmap
import pickle
import traceback
import types
from collections import ChainMap
from collections.abc import Iterator
from typing import Any, NamedTuple

import cloudpickle

from ..context import current
from ..otel import carrier
from .measure import HEAD, OK, PAYLOAD, Measured

#: What every frame starts with (a version: the driver refuses another).
FRAME = b"EF4"
#: What a result moved to a file starts with; the file's path follows (``worker.run_marked``).
SPILLED = b"ES1"

#: A list longer than this, of plain items only, travels in slices of this many items.
SLICE_ITEMS = 50_000
_PLAIN = frozenset({str, bytes, int, float, bool, type(None)})

#: Where a frame's blobs are: (type name, part lengths), one (field, ...) per field, or
#: None: the value is the next one of the frame's plain blob.
Layout = tuple[str, tuple[int, ...]] | list[tuple[str, str, tuple[int, ...]]] | None


def dumps_for_worker(obj: Any) -> bytes:
    """``obj`` pickled to travel to a worker: by the stdlib when that is safe, else cloudpickle.

    The stdlib pickler is 3-5x faster, but pickles every class and function
    by reference, which is wrong for what cloudpickle sends by value: what
    lives in ``__main__`` and in modules registered with
    ``cloudpickle.register_pickle_by_value`` (a worker cannot import those),
    and what cannot be imported at all (the stdlib refuses that). A class
    pickled by reference leaves its module's name in the bytes, so bytes
    naming ``__main__`` or a by-value module are made again by cloudpickle;
    a false alarm (the name inside the data) only costs that.
    """
    try:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return _cloud(obj)
    if b"__main__" in data:
        return _cloud(obj)
    by_value = getattr(cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", None)
    if by_value is None or any(name.encode() in data for name in by_value):
        return _cloud(obj)  # (without cloudpickle's list, trust only it)
    return data


def _cloud(obj: Any) -> bytes:
    """``cloudpickle.dumps``, but code sent by value keeps its file's name (``dumps_by_value``)."""
    return dumps_by_value(obj)


def dumps_by_value(obj: Any) -> bytes:
    """``obj`` pickled by cloudpickle, keeping the file name of every function it sends by
    value (the user's ``__main__``, a notebook, a by-value module).

    cloudpickle writes ``<dynamic-code>`` for the file of such code, so a worker's
    traceback would show ``File "<dynamic-code>", line 186`` instead of the user's
    file: the name travels too, and the worker puts it back (``_named_code``); where
    the file exists there, its lines show as well.
    """
    buffer = io.BytesIO()
    _KeepFileNames(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def _reduce_code(code: types.CodeType) -> tuple[Any, ...]:
    rebuild, args = _CODE_REDUCE(code)
    return _named_code, (rebuild, args, code.co_filename)


def _named_code(rebuild: Any, args: tuple[Any, ...], filename: str) -> types.CodeType:
    """A code object rebuilt by cloudpickle, with the file name it had where it was defined."""
    code: types.CodeType = rebuild(*args)
    return code.replace(co_filename=filename)


#: cloudpickle's reducer for code (a private name: without it, plain cloudpickle is used).
_CODE_REDUCE: Any = getattr(cloudpickle.cloudpickle, "_code_reduce", None)


class _KeepFileNames(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle's pickler with ``_reduce_code`` for code objects."""

    dispatch_table = (
        ChainMap({types.CodeType: _reduce_code}, cloudpickle.Pickler.dispatch_table)
        if _CODE_REDUCE is not None
        else cloudpickle.Pickler.dispatch_table
    )


def request(fn_bytes: bytes, init: Any, blobs: list[bytes] | bytes, stream: Any = None) -> bytes:
    """What ``worker.run_calls`` takes: parts pickled already, so this cannot fail.

    ``blobs``: each call's argument pickled on its own, or the list of every
    call's argument in one pickle (plain data only: ``cpu.pickled_together``).

    ``init`` is None or a ``WorkerInit`` (``engine.warm``) whose resource the
    node receives as its second argument; ``stream`` None or the run's chunk
    channel (``channel.StreamInfo``) when the run streams. The run's
    ``config``/``context`` (``engine.context``, current in the caller) travel
    along, pickled once per run (``CompiledGraph.arun`` checked that they pickle),
    and the current OpenTelemetry span's context (``engine.otel.carrier``: the
    node's span), so the worker's spans nest under it.
    """
    ctx = current()
    wire = ctx.wire() if ctx is not None else None
    return pickle.dumps(
        (fn_bytes, init, blobs, stream, wire, carrier()), protocol=pickle.HIGHEST_PROTOCOL
    )


# -- the worker's side --------------------------------------------------------------


def encode(results: list[tuple[Measured, int]], *, queued: float = 0.0) -> bytes:
    """Measured calls (each with the size of its input) as one frame.

    ``queued``: seconds the calls' thread waited on a run queue while they
    ran, all together (``decode`` shares it out by wall time; a call's own
    ``queued_s`` is added to its share). Plain values (``is_plain``) go into
    the frame's one plain blob. A value that cannot be pickled turns its
    call into a ``payload`` failure whose message names the field and its
    type; an exception that cannot be pickled travels as its text (the
    head) alone.
    """
    metas: list[tuple[tuple[Any, ...], Layout, int]] = []
    blobs: list[bytes] = []
    plain: list[Any] = []
    seen: set[int] = set()  # dicts in ``plain``: one returned twice comes back twice, unshared
    for m, bytes_in in results:
        value = m.value
        if m.kind == OK and is_plain(value) and id(value) not in seen:
            if type(value) is dict:
                seen.add(id(value))
            plain.append(value)
            metas.append((m[:HEAD], None, bytes_in))
            continue
        obj = m.value if m.kind == OK else m.error
        try:
            layout = _dump(obj, blobs)
        except _Unpicklable as bad:
            if m.kind == OK:
                m = m._replace(
                    kind=PAYLOAD,
                    error_type=type(bad.error).__qualname__,
                    error_message=(
                        f"{bad.what} cannot be pickled to return from the worker: "
                        f"{type(bad.error).__name__}: {bad.error}; return plain data (dicts, "
                        "lists, str, numbers, pydantic models)"
                    ),
                    traceback_text="".join(traceback.format_exception(bad.error)),
                )
            layout = _dump(None, blobs)
        metas.append((m[:HEAD], layout, bytes_in))
    together = pickle.dumps(plain, protocol=pickle.HIGHEST_PROTOCOL) if plain else b""
    meta = pickle.dumps((queued, metas, len(together)), protocol=pickle.HIGHEST_PROTOCOL)
    return b"".join([FRAME, len(meta).to_bytes(8, "little"), meta, together, *blobs])


def encode_columns(
    where: tuple[int, int, str],
    starts: list[float],
    ends: list[float],
    cpus: list[float],
    values: list[Any],
    sizes: list[int],
    *,
    queued: float = 0.0,
) -> bytes:
    """Calls that all returned plain data (``is_plain``, each dict a distinct object), run
    one after another in one thread (``where``), as one frame: what ``encode`` makes of
    them, but their heads as columns (a list per field), a few pickles for a whole chunk
    where ``encode`` builds and pickles a row per call. ``decode`` reads either."""
    together = pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)
    columns = (where, starts, ends, cpus, sizes)
    meta = pickle.dumps((queued, columns, len(together)), protocol=pickle.HIGHEST_PROTOCOL)
    return b"".join([FRAME, len(meta).to_bytes(8, "little"), meta, together])


def is_plain(value: Any) -> bool:
    """True for a value that pickles and unpickles anywhere: a str, bytes, a number, a bool,
    None, or a dict of those by str keys (a typical update)."""
    cls = type(value)
    if cls in _PLAIN:
        return True
    if cls is not dict:
        return False
    for key, item in value.items():
        if type(key) is not str or type(item) not in _PLAIN:
            return False
    return True


def _dump(obj: Any, blobs: list[bytes]) -> Layout:
    """Append ``obj``'s parts to ``blobs``; their layout. Nothing is appended if it raises.

    A dict of updates is pickled field by field (so what fails to cross is
    named down to the field); a field of a plain type (str, int, ...) cannot
    fail, so it takes the short way (one call per field: chunks have thousands).
    """
    if type(obj) is dict and all(type(k) is str for k in obj):
        layout: list[tuple[str, str, tuple[int, ...]]] = []
        parts: list[bytes] = []
        for key, value in obj.items():
            cls = type(value)
            if cls in _PLAIN:
                blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
                parts.append(blob)
                layout.append((key, cls.__name__, (len(blob),)))
                continue
            name = _type_name(value)
            more = _parts(value, key, name)
            parts += more
            layout.append((key, name, tuple(map(len, more))))
        blobs += parts
        return layout
    name = _type_name(obj)
    more = _parts(obj, None, name)
    blobs += more
    return (name, tuple(map(len, more)))


class _Unpicklable(Exception):
    def __init__(self, what: str, error: BaseException) -> None:
        super().__init__(what)
        self.what = what
        self.error = error


def _field_what(key: str, type_name: str) -> str:
    return f"its result's field {key!r} (type {type_name})"


def _value_what(type_name: str) -> str:
    return f"its result of type {type_name}"


def _parts(obj: Any, key: str | None, type_name: str) -> list[bytes]:
    """``obj`` pickled: one part; a long list of plain items, one part per ``SLICE_ITEMS``.

    The driver builds a value with the GIL held for as long as unpickling
    it takes: half a second for a list of millions of strings, all that
    time a stalled event loop. Slices let it build the list a slice at a
    time, letting the loop run in between (``decode``). Only lists of
    plain items (str, bytes, numbers, None): slicing would copy an object
    that several items share, and those have no identity to keep.
    """
    if type(obj) is list and len(obj) > SLICE_ITEMS and all(type(x) in _PLAIN for x in obj):
        n = SLICE_ITEMS
        return [_dumps(obj[i : i + n], key, type_name) for i in range(0, len(obj), n)]
    return [_dumps(obj, key, type_name)]


def _dumps(obj: Any, key: str | None, type_name: str) -> bytes:
    """``obj`` pickled: by the stdlib where it can (3-5x faster), else by cloudpickle.

    The stdlib pickles a class or function by reference only when importing
    its name here yields that very object (else it raises), so whatever it
    accepts loads in the driver the same way; what it refuses (classes and
    functions that came by value, lambdas) goes through cloudpickle.
    """
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException:  # __reduce__ may raise anything; cloudpickle has the last word
        pass
    try:
        return _cloud(obj)
    except BaseException as exc:
        what = _field_what(key, type_name) if key is not None else _value_what(type_name)
        raise _Unpicklable(what, exc) from exc


def _type_name(obj: object) -> str:
    cls = type(obj)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


# -- the driver's side --------------------------------------------------------------


class Decoded(NamedTuple):
    """One call of a frame, as the driver rebuilt it: its head (``Measured`` but the
    value and the exception), and its value, or its exception when it failed."""

    head: tuple[Any, ...]
    obj: Any
    bytes_in: int
    bytes_out: int
    #: Seconds the call waited on a run queue: its own, or its share of its chunk's.
    queued_s: float = 0.0
    #: What came back but cannot be unpickled here (a value's field, named), with why.
    unloadable: tuple[str, BaseException] | None = None

    @property
    def measured(self) -> Measured:
        """The call as measured where it ran (its value or its exception included)."""
        m = Measured(*self.head)._replace(queued_s=self.queued_s)
        if self.unloadable is not None:
            return m
        if m.kind == OK:
            return m._replace(value=self.obj)
        return m._replace(error=self.obj if isinstance(self.obj, BaseException) else None)


def decode(data: bytes | memoryview | mmap.mmap) -> list[Decoded]:
    """The calls of a frame (``encode``), as bytes or a view of a mapped file.

    Each blob is unpickled from a view of the frame, never copied out first.
    A call's ``bytes_out`` is its share of the frame: its blobs and its part
    of the meta (a lone call's is the whole frame). A value that fails to
    unpickle here fails only its call and leaves the pool untouched: the
    bytes came back whole, only this driver cannot rebuild the object.
    """
    with memoryview(data) as view:
        at, queued, metas, together = _meta(view)
        if type(metas) is tuple:
            return _decode_columns(view, at, metas, queued, together)
        return _decode_rows(view, at, metas, queued, together)


def decode_chunk(data: bytes) -> Columns | list[Decoded]:
    """``decode``, but the calls of a frame ``encode_columns`` made come back as its
    ``Columns`` (the driver builds their outcomes in one loop: ``calls.decoded_columns``)."""
    with memoryview(data) as view:
        at, queued, metas, together = _meta(view)
        if type(metas) is tuple:
            return _columns(view, at, metas, queued, together)
        return _decode_rows(view, at, metas, queued, together)


def _meta(view: memoryview) -> tuple[int, float, Any, int]:
    """Where a frame's blobs start, and its meta: the run-queue wait of its calls, their
    heads (rows, or ``encode_columns``' columns), the size of its plain blob."""
    if view[: len(FRAME)] != FRAME:
        raise ValueError(f"not a cpu-lane result frame (starts {bytes(view[:8])!r})")
    at = len(FRAME) + 8
    size = int.from_bytes(view[len(FRAME) : at], "little")
    queued, metas, together = pickle.loads(view[at : at + size])
    return at + size, queued, metas, together


def _decode_rows(
    view: memoryview, at: int, metas: Any, queued: float, together: int
) -> list[Decoded]:
    """``decode``'s part for a frame of rows (``encode``)."""
    count = len(metas)
    overhead = at / count  # the frame's header and meta, shared; the rest is blobs
    # The chunk's run-queue wait, shared out by the calls' wall times.
    total = sum(max(0.0, head[5] - head[4]) for head, _, _ in metas)
    share = queued / total if total > 0 else 0.0
    even = 0.0 if total > 0 else queued / count
    plain, plain_error, plain_share = _load_plain(view, at, together)
    at += together
    loads = pickle.loads
    out: list[Decoded] = []
    for head, layout, bytes_in in metas:
        wall = head[5] - head[4]
        waited = head[7] + (wall * share if wall > 0 else 0.0) + even
        if layout is None:  # the next value of the plain blob
            obj = next(plain, None)
            out.append(
                Decoded(head, obj, bytes_in, int(plain_share + overhead), waited, plain_error)
            )
            continue
        start = at
        key: str | None = None
        type_name = ""
        problem: tuple[str, BaseException] | None = None
        obj = None
        try:
            if type(layout) is list:
                obj = {}
                for key, type_name, sizes in layout:  # noqa: B007 (named if loads() fails)
                    if len(sizes) == 1:
                        end = at + sizes[0]
                        obj[key] = loads(view[at:end])
                        at = end
                    else:
                        obj[key], at = _load_parts(view, at, sizes)
            else:
                type_name, sizes = layout
                obj, at = _load_parts(view, at, sizes)
        except Exception as exc:
            what = _field_what(key, type_name) if key is not None else _value_what(type_name)
            problem = (what, exc)
            at = start + _blob_bytes(layout)
            obj = None
        out.append(Decoded(head, obj, bytes_in, int(at - start + overhead), waited, problem))
    return out


class Columns(NamedTuple):
    """The calls of a frame ``encode_columns`` made, as the driver reads them: where they
    ran, each one's times, run-queue wait (``queued_s``), input and output bytes, value;
    ``problem``: why the values could not be had (plain data always unpickles, short of
    memory), else None."""

    where: tuple[int, int, str]
    starts: list[float]
    ends: list[float]
    cpus: list[float]
    waits: list[float]
    sizes: list[int]
    bytes_out: int
    values: list[Any]
    problem: tuple[str, BaseException] | None


def _columns(view: memoryview, at: int, columns: Any, queued: float, together: int) -> Columns:
    where, starts, ends, cpus, sizes = columns
    count = max(1, len(starts))
    walls = [max(0.0, e - s) for s, e in zip(starts, ends, strict=True)]
    total = sum(walls)
    # The chunk's run-queue wait, shared out by the calls' wall times.
    share = queued / total if total > 0 else 0.0
    even = 0.0 if total > 0 else queued / count
    plain, problem, plain_share = _load_plain(view, at, together)
    values = list(plain) if problem is None else [None] * len(starts)
    waits = [w * share + even for w in walls]
    return Columns(
        where, starts, ends, cpus, waits, sizes, int(plain_share + at / count), values, problem
    )


def _decode_columns(
    view: memoryview, at: int, columns: Any, queued: float, together: int
) -> list[Decoded]:
    """``decode``'s part for a frame ``encode_columns`` made."""
    c = _columns(view, at, columns, queued, together)
    pid, tid, host = c.where
    return [
        Decoded((OK, pid, tid, host, s, e, cpu, 0.0, None, "", "", ""), v, n, c.bytes_out, w,
                c.problem)
        for s, e, cpu, w, v, n in zip(c.starts, c.ends, c.cpus, c.waits, c.values, c.sizes,
                                      strict=True)
    ]  # fmt: skip


def _load_plain(
    view: memoryview, at: int, size: int
) -> tuple[Iterator[Any], tuple[str, BaseException] | None, float]:
    """The values of a frame's plain blob, in order; why they cannot be had (plain data
    always unpickles, short of memory); each value's share of the blob's bytes."""
    if not size:
        return iter(()), None, 0.0
    try:
        values: list[Any] = pickle.loads(view[at : at + size])
    except Exception as exc:
        return iter(()), (_value_what("dict"), exc), 0.0
    return iter(values), None, size / max(1, len(values))


def _blob_bytes(layout: Layout) -> int:
    if layout is None:
        return 0
    if isinstance(layout, list):
        return sum(sum(sizes) for _, _, sizes in layout)
    return sum(layout[1])


def _load_parts(view: memoryview, at: int, sizes: tuple[int, ...]) -> tuple[Any, int]:
    """The value whose parts start at ``at`` (a list rebuilt slice by slice), and where it ends."""
    if len(sizes) == 1:
        return pickle.loads(view[at : at + sizes[0]]), at + sizes[0]
    value: list[Any] = []
    for n in sizes:
        value.extend(pickle.loads(view[at : at + n]))
        at += n
    return value, at


__all__ = [
    "FRAME",
    "SLICE_ITEMS",
    "SPILLED",
    "Columns",
    "Decoded",
    "decode",
    "decode_chunk",
    "dumps_for_worker",
    "encode",
    "encode_columns",
    "is_plain",
    "request",
]

"""What runs where the node runs: one timed call, measured on that side.

This module is imported inside worker processes, so it stays small and
imports nothing heavy. Data flow of a cpu-lane call (``process.py`` has the
driver's side)::

    driver: cloudpickle.dumps((fn_bytes, arg))  --bytes-->  worker: run_marked(run_call, ...)
                                                            marker file <- pid (O_EXCL)
            loads -> timed_call(fn, arg) -> CallOutcome -> (head, type, body) bytes
    driver: load_outcome(bytes) -> CallOutcome   <--bytes--  marker file removed

Pickling happens in our code, not the executor's, so (a) any
``concurrent.futures.Executor`` works (loky, stdlib, Dask), (b) functions and
state classes from the user's ``__main__`` travel by value, (c) a payload
that cannot be pickled fails in the driver before anything is submitted, and
(d) the bytes in and out are measured exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import mmap
import operator
import os
import pickle
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any

import cloudpickle

from ..procs import become_group_leader, kill_group, kill_own_tree


@dataclass(frozen=True)
class CallOutcome:
    """The result of one node call and how it was measured."""

    ok: bool
    value: Any
    pid: int
    thread: int
    host: str
    start: float
    end: float
    cpu_s: float
    bytes_in: int = 0
    bytes_out: int = 0
    queued_s: float = 0.0  # runnable but not running: preempted (Linux), not the call's doing
    # A per-worker resource built for this call (``worker_init``), timed apart
    # from it: what was built and when. Empty when the call reused one.
    load_name: str = ""
    load_start: float = 0.0
    load_end: float = 0.0
    load_thread: int = 0  # the thread that built it, when not the call's own (0: the call's)
    error: BaseException | None = None
    error_type: str = ""
    error_message: str = ""
    traceback_text: str = ""


#: Every CallOutcome field with its default (None where it has none).
_DEFAULTS = {f.name: (None if f.default is MISSING else f.default) for f in fields(CallOutcome)}


def _outcome(values: dict[str, Any]) -> CallOutcome:
    """``CallOutcome(**values)`` (missing fields at their defaults), 5-10x faster.

    A frozen dataclass's ``__init__`` sets each of its 18 fields through
    ``object.__setattr__``; on the cpu lane's path (twice per call) that is
    a measurable part of the dispatch. The instance is the same: equal,
    frozen, with the same ``__dict__``.
    """
    outcome = object.__new__(CallOutcome)
    outcome.__dict__.update(_DEFAULTS)
    outcome.__dict__.update(values)
    return outcome


def hostname() -> str:
    """Where a call runs: the Dask worker's address inside a Dask task, else the machine.

    A worker address (``tcp://10.0.0.7:38211``) names one worker process, so
    the trace shows one row per Dask worker. Dask is never imported here: a
    process that is running a Dask task has imported ``distributed`` already,
    so any other process pays one dict lookup. The address is looked up per
    call, not cached per process: it is a context-variable read, and one
    process may host several in-process workers (``LocalCluster(processes=False)``).
    """
    dask_worker = sys.modules.get("distributed.worker")
    if dask_worker is not None:
        try:
            return str(dask_worker.get_worker().address)
        except Exception:  # not inside a Dask task (ValueError), or an older API
            pass
    return _machine_name()


@functools.cache
def _machine_name() -> str:
    return socket.gethostname()


def timed_call(fn: Callable[..., Any], arg: Any, *, in_driver: bool = False) -> CallOutcome:
    """Call ``fn(arg)`` here, timing it with this process's clocks.

    A coroutine function is run to completion on a fresh event loop (used when
    an ``async def`` node is sent whole to a worker). Every exception,
    ``SystemExit`` included, becomes a failed outcome: a node calling
    ``sys.exit`` is a node error, not a crashed worker. ``in_driver`` (the
    inline and thread lanes, sequential mode): a ``KeyboardInterrupt`` is the
    user's Ctrl-C, not the node's failure, so it propagates (in a worker it
    can only be the node's own, and a failed outcome keeps the pool whole).
    """
    pid = os.getpid()
    tid = threading.get_native_id()
    start = time.time()
    cpu0 = time.thread_time()
    queued0 = _queued_s()
    try:
        value = fn(arg)
        if type(value) is not dict and value is not None and inspect.isawaitable(value):
            value = asyncio.run(_await(value))
    except BaseException as exc:
        if in_driver and isinstance(exc, KeyboardInterrupt):
            raise
        end = time.time()
        return CallOutcome(
            ok=False,
            value=None,
            pid=pid,
            thread=tid,
            host=hostname(),
            start=start,
            end=end,
            cpu_s=time.thread_time() - cpu0,
            queued_s=max(0.0, _queued_s() - queued0),
            error=exc,
            error_type=type(exc).__qualname__,
            error_message=str(exc),
            traceback_text="".join(traceback.format_exception(exc)),
        )
    end = time.time()
    return _outcome(
        {
            "ok": True,
            "value": value,
            "pid": pid,
            "thread": tid,
            "host": hostname(),
            "start": start,
            "end": end,
            "cpu_s": time.thread_time() - cpu0,
            "queued_s": max(0.0, _queued_s() - queued0),
        }
    )


# Per-thread: this thread's /proc schedstat file, opened once (an open and a
# close per call cost more than the rest of the timing together). Closed
# when the thread ends and its locals go; ``False`` where there is none.
_schedstat = threading.local()


def _queued_s() -> float:
    """Seconds this thread has waited on a run queue so far (Linux schedstat), else 0.

    The difference across a call is time the call was ready to run but the
    machine ran something else: wall time that says nothing about the call.
    """
    f: Any = getattr(_schedstat, "file", None)
    if f is None:
        try:
            f = open("/proc/thread-self/schedstat", "rb", buffering=0)  # noqa: SIM115
        except OSError:
            f = False
        _schedstat.file = f
    if f is False:
        return 0.0
    try:
        return int(os.pread(f.fileno(), 64, 0).split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


async def _await(awaitable: Any) -> Any:
    return await awaitable


# A per-process cache of unpickled node functions, keyed by their pickled
# bytes: a node's function is unpickled once per worker, not once per call.
@functools.lru_cache(maxsize=128)
def _load_fn(fn_bytes: bytes) -> Callable[..., Any]:
    fn: Callable[..., Any] = cloudpickle.loads(fn_bytes)
    return fn


def failed_outcome(exc: BaseException, start: float, message: str | None = None) -> CallOutcome:
    """A failed outcome for ``exc`` raised here, outside the node (e.g. unpickling)."""
    return CallOutcome(
        ok=False,
        value=None,
        pid=os.getpid(),
        thread=threading.get_native_id(),
        host=hostname(),
        start=start,
        end=time.time(),
        cpu_s=0.0,
        error=exc,
        error_type=type(exc).__qualname__,
        error_message=message if message is not None else str(exc),
        traceback_text="".join(traceback.format_exception(exc)),
    )


# -- the cpu lane's entry points -------------------------------------------------
#
# One wire format, ``run_call``'s (``run_chunk`` returns a list of them): the
# value is pickled apart from the rest, so a value the driver cannot unpickle
# costs only the value (the outcome's head always loads) and the message can
# name the value's type. ``load_outcome`` is the driver's side.

#: What ``run_marked`` returns for a call the driver took back before it started.
NOT_RUN = b""


def run_call(payload: bytes) -> bytes:
    """Worker entry point of the process lane: the outcome as a frame (``_encode``).

    ``payload`` is ``(fn_bytes, arg_blob, init)``: the node's function and
    its argument, each pickled on its own (``dumps_for_worker``), and None or
    a ``WorkerInit`` (``engine.warm``) whose resource the node receives as
    its second argument. The frame's head is the outcome's fields but the
    value and error (``_HEAD``); its blobs are the value (or the node's
    exception) pickled on its own, one pickle per field when it is a dict
    of updates, each with its type's name: what fails to cross, in either
    direction, is named down to the field.
    """
    start = time.time()
    try:
        fn_bytes, arg_blob, init = pickle.loads(payload)
        fn = _load_fn(fn_bytes)
        arg = pickle.loads(arg_blob)
    except BaseException as exc:
        outcome = failed_outcome(
            exc, start, f"could not unpickle the node's function or input: {exc}"
        )
    else:
        outcome = call_with_init(fn, arg, init)
    return _encode(outcome, len(payload))


def call_payload(fn_bytes: bytes, arg_blob: bytes, init: Any = None) -> bytes:
    """The payload ``run_call`` takes: parts pickled already, so this cannot fail."""
    return pickle.dumps((fn_bytes, arg_blob, init), protocol=pickle.HIGHEST_PROTOCOL)


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
        return cloudpickle.dumps(obj)
    if b"__main__" in data:
        return cloudpickle.dumps(obj)
    by_value = getattr(cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", None)
    if by_value is None or any(name.encode() in data for name in by_value):
        return cloudpickle.dumps(obj)  # (without cloudpickle's list, trust only it)
    return data


def run_chunk(payload: bytes) -> bytes:
    """Worker entry point of a batch: ``(fn_bytes, init, [arg_blob, ...])``.

    Runs the calls one after another in this worker and returns one
    ``run_call``-format result per call (a list, pickled), so each call keeps
    its own value, error, timing and byte counts: a call that fails, or whose
    result cannot travel, fails alone.
    """
    fn_bytes, init, blobs = cloudpickle.loads(payload)
    start = time.time()
    try:
        fn = _load_fn(fn_bytes)
    except BaseException as exc:
        # As run_call says it: every call of the chunk fails the same way, alone.
        failed = failed_outcome(exc, start, f"could not unpickle the node's function: {exc}")
        return pickle.dumps(
            [_encode(failed, len(blob)) for blob in blobs], protocol=pickle.HIGHEST_PROTOCOL
        )
    results: list[bytes] = []
    for blob in blobs:
        start = time.time()
        try:
            arg = cloudpickle.loads(blob)
        except BaseException as exc:
            outcome = failed_outcome(exc, start, f"could not unpickle this call's input: {exc}")
        else:
            outcome = call_with_init(fn, arg, init)
        results.append(_encode(outcome, len(blob)))
    return pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL)


#: The fields of a CallOutcome that travel in ``run_call``'s head, in order:
#: all but the value and the error, which travel in the body.
_HEAD = tuple(f.name for f in fields(CallOutcome) if f.name not in ("value", "error"))
_head_of = operator.attrgetter(*_HEAD)
_BYTES_IN = _HEAD.index("bytes_in")


def _encode(outcome: CallOutcome, bytes_in: int) -> bytes:
    """One outcome as a frame (see ``run_call``): ``FRAME``, the head's length, the head, the blobs.

    The head is the outcome's fields but the value and error, and the
    layout of the blobs (one per field of a dict of updates, else one),
    each with its type's name and length; the blobs follow, raw. The
    driver unpickles each blob in place (``load_outcome``), never copying
    it out of the frame first: a 200 MB result costs the driver the frame
    and the value, not a third copy in between.
    """
    try:
        body = _dump_body(outcome.value if outcome.ok else outcome.error)
    except _Unpicklable as bad:
        if outcome.ok:
            msg = (
                f"{bad.what} cannot be pickled to return from the worker: "
                f"{type(bad.error).__name__}: {bad.error}; return plain data (dicts, lists, "
                "str, numbers, pydantic models)"
            )
            outcome = replace(
                outcome,
                ok=False,
                error_type=type(bad.error).__qualname__,
                error_message=msg,
                traceback_text="".join(traceback.format_exception(bad.error)),
            )
        body = _dump_body(None)  # an unpicklable exception: its text travels in the head
    head = _head_of(outcome)
    head = (*head[:_BYTES_IN], bytes_in, *head[_BYTES_IN + 1 :])
    if isinstance(body, list):
        layout: Layout = [(key, name, tuple(map(len, parts))) for key, name, parts in body]
        blobs = [blob for _, _, parts in body for blob in parts]
    else:
        layout = (body[0], tuple(map(len, body[1])))
        blobs = body[1]
    meta = pickle.dumps((head, layout), protocol=pickle.HIGHEST_PROTOCOL)
    return b"".join([FRAME, len(meta).to_bytes(8, "little"), meta, *blobs])


# -- per-worker resources (``worker_init``) ----------------------------------------


class Resources:
    """Resources built by ``worker_init`` functions, by the init's key, in one process.

    Invariant: a key is built at most once while it is kept and its build
    succeeds (a failed build is not kept, so the next call tries again);
    at most ``keep`` are kept, the least recently used dropped first, so a
    long-lived worker serving app after app does not hold every model it
    ever loaded; ``_lock`` makes concurrent first calls on threads build once.
    """

    def __init__(self, keep: int = 8) -> None:
        self._lock = threading.Lock()
        self._built: OrderedDict[str, Any] = OrderedDict()
        self.keep = keep

    def __repr__(self) -> str:
        return f"<Resources built={len(self._built)} keep={self.keep} pid={os.getpid()}>"

    def __len__(self) -> int:
        return len(self._built)

    def get(self, init: Any) -> tuple[Any, tuple[float, float] | None]:
        """(resource, (start, end) of its build now, or None when it was built before)."""
        with self._lock:
            if init.key in self._built:
                self._built.move_to_end(init.key)
                return self._built[init.key], None
            start = time.time()
            build: Callable[[], Any] = _load_fn(init.data)
            value = build()
            self._built[init.key] = value
            while len(self._built) > self.keep:
                self._built.popitem(last=False)
            return value, (start, time.time())


# Worker-process state, like ``_load_fn``'s cache: the resources a worker
# built, kept for the calls it runs later. Created on first use in a worker;
# the driver never uses it (its in-process lanes keep theirs per app).
@functools.cache
def worker_resources() -> Resources:
    return Resources()


def call_with_init(
    fn: Callable[..., Any],
    arg: Any,
    init: Any,
    resources: Resources | None = None,
    *,
    in_driver: bool = False,
) -> CallOutcome:
    """``fn(arg)``, or ``fn(arg, resource)`` when ``init`` is given, timed apart from the build.

    ``resources`` is where the resource is kept: this worker's own by default.
    A failing build fails the call (nothing is kept, the next call retries it).
    ``in_driver``: see ``timed_call`` (a ``KeyboardInterrupt`` propagates).
    """
    if init is None:
        return timed_call(fn, arg, in_driver=in_driver)
    start = time.time()
    try:
        resource, built = (resources or worker_resources()).get(init)
    except BaseException as exc:
        if in_driver and isinstance(exc, KeyboardInterrupt):
            raise
        return failed_outcome(exc, start, f"worker_init {init.name} failed: {exc}")
    outcome = timed_call(functools.partial(_with_resource, fn, resource), arg, in_driver=in_driver)
    if built is None:
        return outcome
    return replace(outcome, load_name=init.name, load_start=built[0], load_end=built[1])


def _with_resource(fn: Callable[..., Any], resource: Any, arg: Any) -> Any:
    return fn(arg, resource)


class _Unpicklable(Exception):
    def __init__(self, what: str, error: BaseException) -> None:
        super().__init__(what)
        self.what = what
        self.error = error


#: A pickled value: (type name, parts), or one (field, type name, parts) per field. A
#: value is one part, but a long list of plain items, which is pickled in slices.
Body = tuple[str, list[bytes]] | list[tuple[str, str, list[bytes]]]
#: Where a frame's blobs are: (type name, part lengths), or one (field, ...) per field.
Layout = tuple[str, tuple[int, ...]] | list[tuple[str, str, tuple[int, ...]]]

#: A list longer than this, of plain items only, travels in slices of this many items.
SLICE_ITEMS = 50_000
_PLAIN = frozenset({str, bytes, int, float, bool, type(None)})

#: What every ``run_call`` result starts with (a version: the driver refuses another).
FRAME = b"EF1"
#: What a result moved to a file starts with; the file's path follows (``run_marked``).
SPILLED = b"ES1"


def _field_what(key: str, type_name: str) -> str:
    return f"its result's field {key!r} (type {type_name})"


def _value_what(type_name: str) -> str:
    return f"its result of type {type_name}"


def _dump_body(obj: Any) -> Body:
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        out = []
        for key, value in obj.items():
            name = _type_name(value)
            out.append((key, name, _parts(value, key, name)))
        return out
    name = _type_name(obj)
    return (name, _parts(obj, None, name))


def _parts(obj: Any, key: str | None, type_name: str) -> list[bytes]:
    """``obj`` pickled: one part; a long list of plain items, one part per ``SLICE_ITEMS``.

    The driver builds a value with the GIL held for as long as unpickling
    it takes: half a second for a list of millions of strings, all that
    time a stalled event loop. Slices let it build the list a slice at a
    time, letting the loop run in between (``_load_frame``). Only lists of
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
        return cloudpickle.dumps(obj)
    except BaseException as exc:
        what = _field_what(key, type_name) if key is not None else _value_what(type_name)
        raise _Unpicklable(what, exc) from exc


def load_outcome(
    data: bytes | memoryview | mmap.mmap,
) -> tuple[CallOutcome, str, BaseException | None]:
    """The driver's side of ``run_call``: (outcome, what failed, unpickling error or None).

    ``data`` is a frame (``_encode``), as bytes or a view of a mapped file;
    each blob is unpickled from a view of it, never copied out first. The
    outcome's ``bytes_out`` is ``len(data)``. A value that fails to
    unpickle here leaves the pool untouched: the bytes came back whole, only
    this driver cannot rebuild the object.
    """
    with memoryview(data) as view:
        return _load_frame(view)


def _load_frame(view: memoryview) -> tuple[CallOutcome, str, BaseException | None]:
    if view[: len(FRAME)] != FRAME:
        raise ValueError(f"not a cpu-lane result frame (starts {bytes(view[:8])!r})")
    at = len(FRAME) + 8
    size = int.from_bytes(view[len(FRAME) : at], "little")
    head, layout = pickle.loads(view[at : at + size])
    at += size
    meta = dict(zip(_HEAD, head, strict=True))
    meta["bytes_out"] = len(view)
    meta["value"] = meta["error"] = None
    key: str | None = None
    type_name = ""
    try:
        if isinstance(layout, list):
            obj: Any = {}
            for key, type_name, sizes in layout:  # noqa: B007 (named below if loads() fails)
                obj[key], at = _load_parts(view, at, sizes)
        else:
            type_name, sizes = layout
            obj, at = _load_parts(view, at, sizes)
    except Exception as exc:
        what = _field_what(key, type_name) if key is not None else _value_what(type_name)
        return _outcome(meta), what, exc
    if meta["ok"]:
        meta["value"] = obj
    elif isinstance(obj, BaseException):
        meta["error"] = obj
    return _outcome(meta), "", None


def _load_parts(view: memoryview, at: int, sizes: tuple[int, ...]) -> tuple[Any, int]:
    """The value whose parts start at ``at`` (a list rebuilt slice by slice), and where it ends."""
    if len(sizes) == 1:
        return pickle.loads(view[at : at + sizes[0]]), at + sizes[0]
    value: list[Any] = []
    for n in sizes:
        value.extend(pickle.loads(view[at : at + n]))
        at += n
    return value, at


def _type_name(obj: object) -> str:
    cls = type(obj)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def run_marked(entry: Callable[[bytes], bytes] | str, payload: bytes, marker: str | None) -> bytes:
    """Run ``entry(payload)`` with the worker's pid in the marker ``marker`` meanwhile.

    ``entry`` is a function, or the name of one of this module's entry
    points (``ENTRY_NAMES``): a name costs the pool's pickler less than a
    function, and every cpu-lane call pays for it.

    The marker says to the driver which worker process runs which call, which
    is how it blames a crash on the right call and kills the right worker on
    a timeout. Both sides create it exclusively (``make_mark``): whoever
    creates it first owns the call, so a call the driver took back while it
    waited in the executor's queue is never started (``NOT_RUN``). A missing
    directory means the run that sent the call has ended: nothing to run either.
    """
    fn = _ENTRIES[entry] if isinstance(entry, str) else entry
    if marker is None:
        return fn(payload)
    become_worker()  # a local pool's worker: once per process
    try:
        make_mark(marker, str(os.getpid()))
    except (FileExistsError, FileNotFoundError):
        return NOT_RUN
    try:
        result = fn(payload)
        if len(result) >= LARGE_RESULT_BYTES and marker.startswith(_TMPFS):
            result = _spill(result, marker)
        return result
    finally:
        # Gone once the call is over: a marker left behind belongs to a call
        # whose worker died while running it.
        with contextlib.suppress(OSError):
            os.unlink(marker)


#: Results at least this large travel through a file on tmpfs, not the pool's pipe.
LARGE_RESULT_BYTES = 4 * 1024 * 1024
_TMPFS = "/dev/shm" + os.sep


def _spill(result: bytes, marker: str) -> bytes:
    """``result`` written to a file beside ``marker``: ``SPILLED`` + the file's path.

    Through the pool's pipe, a large result is read and unpickled by the
    pool's thread in the driver, holding the GIL (so stalling the event
    loop) for as long as the copy takes, and is held twice meanwhile. From
    a file on tmpfs the driver maps it (``results.opened``) and unpickles
    the value straight out of the mapping. Where tmpfs is full (a container's
    small ``/dev/shm``) the result takes the pipe after all.
    """
    path = marker + ".out"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return result
    try:
        with memoryview(result) as view:
            done = 0
            while done < len(view):
                done += os.write(fd, view[done:])
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        return result
    os.close(fd)
    return SPILLED + os.fsencode(path)


#: The entry points ``run_marked`` knows by name, and their names.
_ENTRIES: dict[str, Callable[[bytes], bytes]] = {"call": run_call, "chunk": run_chunk}
ENTRY_NAMES: dict[Callable[[bytes], bytes], str] = {fn: name for name, fn in _ENTRIES.items()}


def make_mark(marker: str, text: str) -> None:
    """Create ``marker`` holding ``text``, atomically; FileExistsError if it exists.

    A symbolic link whose target is the text: one system call that creates
    the marker with its content (a file takes an open, a write and a close,
    and is empty for a moment in between). Windows, where links need a
    privilege, gets an ``O_EXCL`` file.
    """
    if sys.platform != "win32":
        os.symlink(text, marker)
        return
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def read_mark(marker: str) -> str | None:
    """What ``marker`` holds ("" while a Windows file is being written); None if absent."""
    try:
        if sys.platform != "win32":
            return os.readlink(marker)
        with open(marker, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


#: Marker directories are named this, then the driver's pid and a dash (``markers.py``).
MARKER_PREFIX = "engine-cpu-"


def marker_base() -> str:
    """Where marker directories live: tmpfs (``/dev/shm``) where there is one."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()


def bury_dead_workers(driver_pid: int) -> None:
    """Kill what is left of the process groups of ``driver_pid``'s workers that died mid-call.

    Scenario: a worker dies while it runs a call (the OOM killer, a SIGKILL
    from outside) and its driver is SIGKILLed before it judged that break,
    which is when it kills what the dead worker's node started: that group
    has no guard left and lives on, re-parented to init. The call's marker,
    never removed, still names its worker, whose pid is the group's id. Run
    by the guard of every worker of that driver (which outlives it by up to
    ``GUARD_INTERVAL_S``) and by the next driver's sweep; ``kill_group``
    leaves a live worker alone (its own guard takes its tree).
    """
    for pid in marked_pids(driver_pid):
        if pid != os.getpid():
            kill_group(pid)


def marked_pids(driver_pid: int) -> list[int]:
    """The worker pids in the markers of ``driver_pid``'s calls.

    A marker is removed when its call ends, so one that holds a dead worker's
    pid belongs to a call that was running when that worker died.
    """
    base = marker_base()
    mine = f"{MARKER_PREFIX}{driver_pid}-"
    try:
        dirs = [os.path.join(base, n) for n in os.listdir(base) if n.startswith(mine)]
    except OSError:
        return []
    found = []
    for d in dirs:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            text = read_mark(os.path.join(d, name))
            if text is not None and text.isdigit():
                found.append(int(text))
    return found


#: How often a worker's guard looks for its driver (seconds): the longest an
#: orphan computes on after its driver died.
GUARD_INTERVAL_S = 0.1


def guard_parent(parent_pid: int) -> None:
    """Worker initializer: die with the driver *process*, whichever thread started us.

    A SIGKILLed driver runs no cleanup, so without this its busy workers
    would compute on as orphans. A daemon thread looks at ``os.getppid()``
    every ``GUARD_INTERVAL_S`` and, once the driver is gone (the worker was
    re-parented), kills what the worker started and ends the worker (see
    ``become_worker``). Not ``PR_SET_PDEATHSIG``: that fires when the
    *thread* that spawned the worker exits, so workers started from a
    short-lived thread (``app.invoke()`` there) would die under the next
    run's calls. The cost is one ``getppid`` ten times a second. A call
    stuck in native code that holds the GIL keeps the watcher from running
    until it lets go. If the driver died before this ran, exit now (after
    burying what its workers that died mid-call left: ``bury_dead_workers``).
    """
    if os.getppid() != parent_pid:
        bury_dead_workers(parent_pid)
        os._exit(0)
    become_worker()


@functools.cache
def become_worker() -> None:
    """Once per worker process: a process group of its own, and the parent guard.

    Run by the default pool's initializer, and by ``run_marked`` before the
    first call a local pool's worker runs (a user's pool has no initializer
    of ours). The group makes everything a node starts (a ``Popen``, a
    nested pool) killable with its worker in one signal (``kill_tree``);
    the guard takes that tree down when the driver dies. The parent watched
    is the one this process has now: the driver, or for a ``forkserver``
    pool the fork server, which exits with the driver.
    """
    become_group_leader()
    if sys.platform == "win32":  # getppid never changes there; loky's pipes end idle workers
        return
    watcher = threading.Thread(
        target=_watch_parent, args=(os.getppid(),), name="engine-parent-guard", daemon=True
    )
    watcher.start()


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(GUARD_INTERVAL_S)
        if os.getppid() != parent_pid:
            # Everything this worker started goes with it: Popen'ed
            # programs, nested pools' workers (and this process, by its group);
            # so does what is left of the groups of its siblings that died
            # mid-call just before the driver.
            try:
                bury_dead_workers(parent_pid)
                kill_own_tree()
            finally:
                os._exit(0)


def report_initializer(
    initializer: Callable[..., Any], initargs: tuple[Any, ...], path: str
) -> None:
    """Run a pool's ``initializer``; if it raises, write its traceback to ``path`` and re-raise.

    What ``pool.probe_initializer`` runs in a throwaway worker: a pool whose
    workers die in their initializer only logs the error in the worker.
    """
    try:
        initializer(*initargs)
    except BaseException as exc:
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(traceback.format_exception(exc)))
        raise


def pid_after(seconds: float) -> int:
    """This worker's pid, after ``seconds``: ``warm`` uses it to reach every worker."""
    time.sleep(seconds)
    return os.getpid()

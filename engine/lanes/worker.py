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
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import cloudpickle


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
    error: BaseException | None = None
    error_type: str = ""
    error_message: str = ""
    traceback_text: str = ""


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
        if inspect.isawaitable(value):
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
    return CallOutcome(
        ok=True,
        value=value,
        pid=pid,
        thread=tid,
        host=hostname(),
        start=start,
        end=end,
        cpu_s=time.thread_time() - cpu0,
        queued_s=max(0.0, _queued_s() - queued0),
    )


def _queued_s() -> float:
    """Seconds this thread has waited on a run queue so far (Linux schedstat), else 0.

    The difference across a call is time the call was ready to run but the
    machine ran something else: wall time that says nothing about the call.
    """
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
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


def run_pickled(payload: bytes) -> bytes:
    """Worker entry point: unpickle a call, run it, pickle the outcome."""
    start = time.time()
    try:
        fn_bytes, arg = cloudpickle.loads(payload)
        fn = _load_fn(fn_bytes)
    except BaseException as exc:
        outcome = failed_outcome(
            exc, start, f"could not unpickle the node's function or input: {exc}"
        )
    else:
        outcome = timed_call(fn, arg)
    outcome = replace(outcome, bytes_in=len(payload))
    return dump_outcome(outcome)


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


def dump_outcome(outcome: CallOutcome) -> bytes:
    """Pickle one outcome; a value or error that cannot travel fails only its call."""
    try:
        return cloudpickle.dumps(outcome)
    except BaseException as exc:
        if outcome.ok:
            # The node's result cannot travel back: say which type, keep the pool usable.
            msg = (
                f"the node's result of type {type(outcome.value).__name__} cannot be "
                f"pickled to return from the worker: {type(exc).__name__}: {exc}"
            )
        else:
            msg = f"{outcome.error_type}: {outcome.error_message} (exception not picklable)"
        failed = replace(
            outcome,
            ok=False,
            value=None,
            error=None,
            error_type=outcome.error_type or type(exc).__qualname__,
            error_message=msg,
            traceback_text=outcome.traceback_text or "".join(traceback.format_exception(exc)),
        )
        return cloudpickle.dumps(failed)


# -- the cpu lane's entry points -------------------------------------------------
#
# ``run_pickled`` above returns one pickled CallOutcome (the format other
# modules and tests read). The process lane uses ``run_call``, which pickles
# the value apart from the rest, so a value the driver cannot unpickle costs
# only the value (the outcome's head always loads) and the message can name
# the value's type.

#: What ``run_marked`` returns for a call the driver took back before it started.
NOT_RUN = b""


def run_call(payload: bytes) -> bytes:
    """Worker entry point of the process lane: ``(head, body)`` pickled.

    ``payload`` is ``(fn_bytes, arg)`` or ``(fn_bytes, arg, init)`` where
    ``init`` is a ``WorkerInit`` (``engine.warm``) whose resource the node
    receives as its second argument. ``body`` is the value (or the node's
    exception) pickled on its own, one pickle per field when it is a dict of
    updates, each with its type's name: what fails to cross, in either
    direction, is named down to the field.
    """
    start = time.time()
    try:
        fn_bytes, arg, *rest = cloudpickle.loads(payload)
        fn = _load_fn(fn_bytes)
    except BaseException as exc:
        outcome = failed_outcome(
            exc, start, f"could not unpickle the node's function or input: {exc}"
        )
    else:
        outcome = call_with_init(fn, arg, rest[0] if rest else None)
    return _encode(replace(outcome, bytes_in=len(payload)))


def run_chunk(payload: bytes) -> bytes:
    """Worker entry point of a batch: ``(fn_bytes, init, [arg_blob, ...])``.

    Runs the calls one after another in this worker and returns one
    ``run_call``-format result per call (a list, pickled), so each call keeps
    its own value, error, timing and byte counts: a call that fails, or whose
    result cannot travel, fails alone.
    """
    fn_bytes, init, blobs = cloudpickle.loads(payload)
    fn = _load_fn(fn_bytes)
    results: list[bytes] = []
    for blob in blobs:
        start = time.time()
        try:
            arg = cloudpickle.loads(blob)
        except BaseException as exc:
            outcome = failed_outcome(exc, start, f"could not unpickle this call's input: {exc}")
        else:
            outcome = call_with_init(fn, arg, init)
        results.append(_encode(replace(outcome, bytes_in=len(blob))))
    return cloudpickle.dumps(results)


def _encode(outcome: CallOutcome) -> bytes:
    """One outcome as ``(head, body)`` bytes (see ``run_call``)."""
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
    head = replace(outcome, value=None, error=None)
    return cloudpickle.dumps((head, body))


# -- per-worker resources (``worker_init``) ----------------------------------------


class Resources:
    """Resources built by ``worker_init`` functions, by the init's key, in one process.

    Invariant: a key is built at most once while its build succeeds (a failed
    build is not kept, so the next call tries again); ``_lock`` makes
    concurrent first calls on threads build it once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._built: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<Resources built={len(self._built)} pid={os.getpid()}>"

    def __len__(self) -> int:
        return len(self._built)

    def get(self, init: Any) -> tuple[Any, tuple[float, float] | None]:
        """(resource, (start, end) of its build now, or None when it was built before)."""
        with self._lock:
            if init.key in self._built:
                return self._built[init.key], None
            start = time.time()
            build: Callable[[], Any] = _load_fn(init.data)
            value = build()
            self._built[init.key] = value
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


#: A pickled value: (description, bytes), or one (field, description, bytes) per field.
Body = tuple[str, bytes] | list[tuple[str, str, bytes]]


def _dump_body(obj: Any) -> Body:
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        fields = []
        for key, value in obj.items():
            what = f"its result's field {key!r} (type {_type_name(value)})"
            fields.append((key, what, _dumps(value, what)))
        return fields
    what = f"its result of type {_type_name(obj)}"
    return (what, _dumps(obj, what))


def _dumps(obj: Any, what: str) -> bytes:
    try:
        return cloudpickle.dumps(obj)
    except BaseException as exc:  # __reduce__ may raise anything
        raise _Unpicklable(what, exc) from exc


def load_outcome(data: bytes) -> tuple[CallOutcome, str, BaseException | None]:
    """The driver's side of ``run_call``: (outcome, what failed, unpickling error or None).

    The outcome's ``bytes_out`` is ``len(data)``. A value that fails to
    unpickle here leaves the pool untouched: the bytes came back whole, only
    this driver cannot rebuild the object.
    """
    head, body = cloudpickle.loads(data)
    outcome: CallOutcome = head
    what = ""
    try:
        if isinstance(body, list):
            obj: Any = {}
            for field in body:
                key, what, blob = field  # ``what`` names the field if loads() fails
                obj[key] = cloudpickle.loads(blob)
        else:
            what, blob = body
            obj = cloudpickle.loads(blob)
    except Exception as exc:
        return replace(outcome, bytes_out=len(data)), what, exc
    if outcome.ok:
        return replace(outcome, value=obj, bytes_out=len(data)), "", None
    error = obj if isinstance(obj, BaseException) else None
    return replace(outcome, error=error, bytes_out=len(data)), "", None


def _type_name(obj: object) -> str:
    cls = type(obj)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def run_marked(entry: Callable[[bytes], bytes], payload: bytes, marker: str | None) -> bytes:
    """Run ``entry(payload)`` with the worker's pid in the file ``marker`` meanwhile.

    The marker says to the driver which worker process runs which call, which
    is how it blames a crash on the right call and kills the right worker on
    a timeout. Both sides create it with ``O_EXCL``: whoever creates it first
    owns the call, so a call the driver took back while it waited in the
    executor's queue is never started (``NOT_RUN``). A missing directory
    means the run that sent the call has ended: nothing to run either.
    """
    if marker is None:
        return entry(payload)
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except (FileExistsError, FileNotFoundError):
        return NOT_RUN
    try:
        os.write(fd, str(os.getpid()).encode())
    finally:
        os.close(fd)
    try:
        return entry(payload)
    finally:
        # Gone once the call is over: a marker left behind belongs to a call
        # whose worker died while running it.
        with contextlib.suppress(OSError):
            os.unlink(marker)


#: How often a worker's guard looks for its driver (seconds): the longest an
#: orphan computes on after its driver died.
GUARD_INTERVAL_S = 0.1


def guard_parent(parent_pid: int) -> None:
    """Worker initializer: die with the driver *process*, whichever thread started us.

    A SIGKILLed driver runs no cleanup, so without this its busy workers
    would compute on as orphans. A daemon thread looks at ``os.getppid()``
    every ``GUARD_INTERVAL_S`` and ends the worker (``os._exit``) once the
    driver is gone (the worker was re-parented). Not ``PR_SET_PDEATHSIG``:
    that fires when the *thread* that spawned the worker exits, so workers
    started from a short-lived thread (``app.invoke()`` there) would die
    under the next run's calls. The cost is one ``getppid`` ten times a
    second. A call stuck in native code that holds the GIL keeps the watcher
    from running until it lets go. If the driver died before this ran, exit now.
    """
    if os.getppid() != parent_pid:
        os._exit(0)
    if sys.platform == "win32":  # getppid never changes there; loky's pipes end idle workers
        return
    watcher = threading.Thread(
        target=_watch_parent, args=(parent_pid,), name="engine-parent-guard", daemon=True
    )
    watcher.start()


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(GUARD_INTERVAL_S)
        if os.getppid() != parent_pid:
            os._exit(0)


def pid_after(seconds: float) -> int:
    """This worker's pid, after ``seconds``: ``warm`` uses it to reach every worker."""
    time.sleep(seconds)
    return os.getpid()

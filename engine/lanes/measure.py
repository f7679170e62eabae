"""One node call, made and measured where it runs: the driver's thread or loop, or a worker.

Imported inside worker processes: it stays small and imports nothing of the
engine but ``engine.procs`` and ``engine.interrupts`` (standard library
only). What a call leaves is a ``Measured``: how it ended (``kind``),
where and when it ran (this process's clocks), the ``worker_init`` build
it paid for, and its value or its exception. The driver turns it into the
run's records in one place (``lanes.calls``); from a worker it travels in a
frame (``lanes.frames``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import cloudpickle

from ..interrupts import is_interrupt
from ..procs import hostname

#: How a call ended. ``raised``: the node's own code raised (``SystemExit``
#: included); ``payload``: what it was given or what it returned cannot cross
#: the process boundary (never worth running again); ``interrupted``: the node
#: asked a person (``engine.interrupts``): its exception carries the question.
OK, RAISED, PAYLOAD, INTERRUPTED = "ok", "raised", "payload", "interrupted"


def raised_kind(exc: BaseException) -> str:
    """How a call that raised ``exc`` ended: ``interrupted`` for a question, else ``raised``."""
    return INTERRUPTED if is_interrupt(exc) else RAISED


class Load(NamedTuple):
    """A ``worker_init`` resource built for a call, timed apart from it."""

    name: str
    start: float
    end: float
    thread: int  # the thread that built it (the call's own, or a helper thread)


class Measured(NamedTuple):
    """One call as measured where it ran (``time.time()``, so processes line up).

    The fields before ``value`` are the *head*: what always travels back from
    a worker, even when the value or the exception cannot.
    """

    kind: str
    pid: int
    thread: int
    host: str
    start: float
    end: float
    cpu_s: float
    queued_s: float = 0.0  # runnable but not running: preempted (Linux), not the call's doing
    load: Load | None = None
    error_type: str = ""
    error_message: str = ""
    traceback_text: str = ""
    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.kind == OK


#: How many fields of a ``Measured`` make its head.
HEAD = len(Measured._fields) - 2


def timed_call(
    fn: Callable[..., Any],
    arg: Any,
    *,
    in_driver: bool = False,
    where: tuple[int, int, str] | None = None,
) -> Measured:
    """Call ``fn(arg)`` here, timing it with this process's clocks.

    A coroutine function is run to completion on a fresh event loop (an
    ``async def`` node sent whole to a worker). Every exception,
    ``SystemExit`` included, becomes a ``raised`` measurement: a node calling
    ``sys.exit`` is a node error, not a crashed worker. ``in_driver`` (the
    inline and thread lanes, sequential mode): a ``KeyboardInterrupt`` is the
    user's Ctrl-C, not the node's failure, so it propagates (in a worker it
    can only be the node's own, and a failed call keeps the pool whole).

    ``where`` (pid, thread, host), given by a worker that runs a chunk of
    calls, is where every call of it runs: looked up once per chunk, and
    the run-queue wait is then measured for the whole chunk (``worker``),
    not per call (two reads of /proc per call cost more than a short call).
    """
    if where is None:
        where = (os.getpid(), threading.get_native_id(), hostname())
        queued0: float | None = queued_s()
    else:
        queued0 = None
    start = time.time()
    cpu0 = time.thread_time()
    try:
        value = fn(arg)
    except BaseException as exc:
        if in_driver and isinstance(exc, KeyboardInterrupt):
            raise
        return raised(exc, where, start, cpu0, queued0)
    return returned(value, where, start, cpu0, queued0, in_driver=in_driver)


def returned(
    value: Any,
    where: tuple[int, int, str],
    start: float,
    cpu0: float,
    queued0: float | None = None,
    *,
    in_driver: bool = False,
) -> Measured:
    """The measurement of a call started at ``start`` (``cpu0`` its thread's CPU clock then)
    that returned ``value``: an awaitable returned to a thread that runs no loop is a
    missing await (``attempts``), run to completion here first."""
    awaits = type(value) is not dict and value is not None and inspect.isawaitable(value)
    if awaits and not (in_driver and _loop_here()):
        try:
            value = asyncio.run(_await(value))
        except BaseException as exc:
            if in_driver and isinstance(exc, KeyboardInterrupt):
                raise
            return raised(exc, where, start, cpu0, queued0)
    cpu = time.thread_time() - cpu0
    end = time.time()
    queued = 0.0 if queued0 is None else max(0.0, queued_s() - queued0)
    pid, tid, host = where
    return Measured(OK, pid, tid, host, start, end, cpu, queued, None, "", "", "", value)


def raised(
    exc: BaseException,
    where: tuple[int, int, str],
    start: float,
    cpu0: float,
    queued0: float | None = None,
) -> Measured:
    """The measurement of a call started at ``start`` that raised ``exc``."""
    cpu = time.thread_time() - cpu0
    end = time.time()
    pid, tid, host = where
    return Measured(
        raised_kind(exc),
        pid,
        tid,
        host,
        start,
        end,
        cpu,
        0.0 if queued0 is None else max(0.0, queued_s() - queued0),
        None,
        type(exc).__qualname__,
        str(exc),
        "".join(traceback.format_exception(exc)),
        None,
        exc,
    )


def failed(exc: BaseException, start: float, message: str, kind: str = RAISED) -> Measured:
    """A failed measurement for ``exc`` raised here outside the node (unpickling, a build),
    or by an ``async def`` node on the loop (a question it asked is ``interrupted``)."""
    return Measured(
        raised_kind(exc) if kind == RAISED else kind,
        os.getpid(),
        threading.get_native_id(),
        hostname(),
        start,
        time.time(),
        0.0,
        error_type=type(exc).__qualname__,
        error_message=message,
        traceback_text="".join(traceback.format_exception(exc)),
        error=exc,
    )


# Per-thread: this thread's /proc schedstat file, opened once (an open and a
# close per call cost more than the rest of the timing together). Closed
# when the thread ends and its locals go; ``False`` where there is none.
_schedstat = threading.local()


def queued_s() -> float:
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


def _loop_here() -> bool:
    """Whether an event loop runs in this thread (where ``asyncio.run`` cannot)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _await(awaitable: Any) -> Any:
    return await awaitable


# A per-process cache of unpickled node functions, keyed by their pickled
# bytes: a node's function is unpickled once per worker, not once per call.
@functools.lru_cache(maxsize=128)
def load_fn(fn_bytes: bytes) -> Callable[..., Any]:
    """A node's (or a build's) function from its pickle, unpickled once per worker process:
    every call of a node carries the same bytes. One that fails to unpickle is not kept."""
    fn: Callable[..., Any] = cloudpickle.loads(fn_bytes)
    return fn


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
            build: Callable[[], Any] = load_fn(init.data)
            value = build()
            self._built[init.key] = value
            while len(self._built) > self.keep:
                self._built.popitem(last=False)
            return value, (start, time.time())


# Worker-process state, like ``load_fn``'s cache: the resources a worker
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
    where: tuple[int, int, str] | None = None,
) -> Measured:
    """``fn(arg)``, or ``fn(arg, resource)`` when ``init`` is given, timed apart from the build.

    ``resources`` is where the resource is kept: this worker's own by default.
    A failing build fails the call (nothing is kept, the next call retries it).
    ``in_driver``: see ``timed_call`` (a ``KeyboardInterrupt`` propagates).
    """
    if init is None:
        return timed_call(fn, arg, in_driver=in_driver, where=where)
    start = time.time()
    try:
        resource, built = (resources or worker_resources()).get(init)
    except BaseException as exc:
        if in_driver and isinstance(exc, KeyboardInterrupt):
            raise
        return failed(exc, start, f"worker_init {init.name} failed: {exc}")
    measured = timed_call(
        functools.partial(with_resource, fn, resource), arg, in_driver=in_driver, where=where
    )
    if built is None:
        return measured
    return measured._replace(load=Load(init.name, built[0], built[1], measured.thread))


def with_resource(fn: Callable[..., Any], resource: Any, arg: Any) -> Any:
    """``fn(arg, resource)``: how a node with a ``worker_init`` is called."""
    return fn(arg, resource)


__all__ = [
    "HEAD",
    "INTERRUPTED",
    "OK",
    "PAYLOAD",
    "RAISED",
    "Load",
    "Measured",
    "Resources",
    "call_with_init",
    "failed",
    "load_fn",
    "queued_s",
    "raised",
    "raised_kind",
    "returned",
    "timed_call",
    "with_resource",
    "worker_resources",
]

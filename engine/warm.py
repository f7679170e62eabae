"""Warm workers: per-worker resources built once, and pool size capped by memory.

::

    add_node("tokenize", tokenize, worker_init=load_tokenizer)
    driver: pack_warm(fn_bytes, init, arg) --bytes--> worker: run_warm(payload)
                                                  resource = cache.get(init)  (built once per
                                                      process; the first call pays load_s)
                                                  timed_call(fn(arg, resource))
    driver: unpack_warm(data) -> WarmOutcome(outcome, load)  <--bytes--

The node receives the resource as its second positional argument:
``def tokenize(state, tokenizer) -> dict``. Load time is reported apart
from call time (``WarmOutcome.load``, a ``WorkerLoad`` with its own
interval), so the trace can draw it as its own slice. In-process lanes use
the same cache in the driver (``call_warm``).

``workers_for_memory`` caps a pool's size so that ``memory_per_worker``
times the workers fits in the memory available now.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import cloudpickle

from .errors import GraphError
from .lanes.worker import CallOutcome, _hostname, failed_outcome, timed_call
from .marks import Mark


@dataclass(frozen=True)
class WorkerInit:
    """A zero-argument function that builds a per-worker resource, pickled once."""

    name: str
    data: bytes
    key: str

    @classmethod
    def of(cls, fn: Callable[[], Any], *, node: str = "?") -> WorkerInit:
        if not callable(fn):
            raise GraphError(f"node {node!r}: worker_init={fn!r} is not callable")
        try:
            data = cloudpickle.dumps(fn)
        except Exception as exc:
            raise GraphError(
                f"node {node!r}: worker_init {fn!r} cannot be pickled to reach the workers "
                f"({type(exc).__name__}: {exc}); build what it needs inside the function"
            ) from exc
        name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
        return cls(name=str(name), data=data, key=hashlib.sha1(data).hexdigest())


@dataclass(frozen=True)
class WorkerLoad:
    """One build of a per-worker resource (None on calls that reused it)."""

    name: str
    pid: int
    thread: int
    host: str
    start: float
    end: float

    @property
    def load_s(self) -> float:
        return max(0.0, self.end - self.start)

    def mark(self) -> Mark:
        """A slice on the worker's thread row, before the call that waited for it."""
        return Mark(
            "span",
            f"load {self.name}",
            self.start,
            self.pid,
            self.host,
            end=self.end,
            thread=self.thread,
            cat="worker_init",
            args={"load_s": round(self.load_s, 6)},
        )


@dataclass(frozen=True)
class WarmOutcome:
    """A call with a per-worker resource: the call's outcome and, if built now, the load."""

    outcome: CallOutcome
    load: WorkerLoad | None


class _Resources:
    """This process's per-worker resources, by ``WorkerInit.key``.

    Invariant: each key is built at most once per process while it succeeds
    (a failed build is not cached, so the next call tries again); ``_lock``
    makes concurrent first calls on threads build it once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._built: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<_Resources built={len(self._built)} pid={os.getpid()}>"

    def get(self, init: WorkerInit) -> tuple[Any, WorkerLoad | None]:
        with self._lock:
            if init.key in self._built:
                return self._built[init.key], None
            start = time.time()
            fn: Callable[[], Any] = cloudpickle.loads(init.data)
            value = fn()
            load = WorkerLoad(
                init.name, os.getpid(), threading.get_native_id(), _hostname(), start, time.time()
            )
            self._built[init.key] = value
            return value, load


# The one per-process cache of built resources: it lives in each worker (and
# in the driver for in-process lanes), like the worker's cache of node functions.
@functools.cache
def _resources() -> _Resources:
    return _Resources()


def call_warm(fn: Callable[..., Any], init: WorkerInit, arg: Any) -> WarmOutcome:
    """``fn(arg, resource)`` with this process's resource for ``init``, timed apart."""
    start = time.time()
    try:
        resource, load = _resources().get(init)
    except BaseException as exc:
        return WarmOutcome(_init_failure(exc, init, start), None)
    return WarmOutcome(timed_call(functools.partial(_with_resource, fn, resource), arg), load)


def _with_resource(fn: Callable[..., Any], resource: Any, arg: Any) -> Any:
    return fn(arg, resource)


def pack_warm(fn_bytes: bytes, init: WorkerInit, arg: Any) -> bytes:
    return cloudpickle.dumps((fn_bytes, init, arg))


def run_warm(payload: bytes) -> bytes:
    """Worker entry point for a node with ``worker_init``."""
    start = time.time()
    try:
        fn_bytes, init, arg = cloudpickle.loads(payload)
        fn = cloudpickle.loads(fn_bytes)
    except BaseException as exc:
        failed = _init_failure(exc, None, start)
        result = WarmOutcome(failed, None)
    else:
        result = call_warm(fn, init, arg)
    result = replace(result, outcome=replace(result.outcome, bytes_in=len(payload)))
    try:
        return cloudpickle.dumps(result)
    except BaseException as exc:
        msg = f"the node's result cannot be pickled to return from the worker: {exc}"
        bad = replace(
            result.outcome,
            ok=False,
            value=None,
            error=None,
            error_type=type(exc).__qualname__,
            error_message=msg,
            traceback_text="".join(traceback.format_exception(exc)),
        )
        return cloudpickle.dumps(WarmOutcome(bad, result.load))


def unpack_warm(data: bytes) -> WarmOutcome:
    result: WarmOutcome = cloudpickle.loads(data)
    return replace(result, outcome=replace(result.outcome, bytes_out=len(data)))


def _init_failure(exc: BaseException, init: WorkerInit | None, start: float) -> CallOutcome:
    what = f"worker_init {init.name} failed" if init else "could not unpickle the call"
    return failed_outcome(exc, start, f"{what}: {exc}")


# -- memory -------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>[kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_FACTORS: Mapping[str, int] = MappingProxyType(
    {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}
)


def parse_size(value: int | str, *, name: str = "memory_per_worker") -> int:
    """``2_000_000_000``, ``"512MB"``, ``"2GiB"``, ``"1.5G"`` -> bytes; strict."""
    if isinstance(value, bool):
        raise GraphError(f"{name} must be a size like '2GB' or a number of bytes, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise GraphError(f"{name} must be > 0 bytes, got {value}")
        return value
    if not isinstance(value, str):
        raise GraphError(f"{name} must be a size like '2GB' or bytes, got {type(value).__name__}")
    m = _SIZE.match(value)
    if m is None:
        raise GraphError(
            f"{name}: cannot read size {value!r}; write e.g. '512MB', '2GiB' or 1500000000"
        )
    unit = (m["unit"] or "").lower()
    binary = "i" in unit
    letter = unit[:1] if unit not in ("b", "") else unit
    factor = 1024 ** " kmgt".index(letter) if binary else _FACTORS[letter]
    n = int(float(m["n"]) * factor)
    if n < 1:
        raise GraphError(f"{name} must be > 0 bytes, got {value!r}")
    return n


def available_memory() -> int | None:
    """Bytes of memory available to start new processes now, or None if unknown.

    psutil's ``available`` when installed; else Linux ``MemAvailable``; else
    ``os.sysconf`` free pages. A cgroup limit (containers) caps the result.
    """
    found: int | None = None
    try:
        import psutil

        found = int(psutil.virtual_memory().available)
    except Exception:
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        found = int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
        if found is None:
            try:
                found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (ValueError, OSError, AttributeError):
                found = None
    cap = _cgroup_room()
    if cap is not None:
        found = cap if found is None else min(found, cap)
    return found


def _cgroup_room() -> int | None:
    """Room left under a cgroup v2 memory limit, when there is one."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            raw = f.read().strip()
        if raw == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        return max(0, int(raw) - used)
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class WorkerCap:
    workers: int
    reason: str


def workers_for_memory(
    memory_per_worker: int | str,
    *,
    max_workers: int,
    available: int | None = None,
    reserve: float = 0.1,
) -> WorkerCap:
    """How many workers fit: ``min(max_workers, usable memory // memory_per_worker)``, >= 1.

    ``reserve`` keeps a share of the available memory for the driver and the
    rest of the machine. Unknown available memory leaves ``max_workers``.
    """
    per = parse_size(memory_per_worker)
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    if not 0 <= reserve < 1:
        raise ValueError(f"reserve must be in [0, 1), got {reserve}")
    avail = available_memory() if available is None else available
    if avail is None:
        return WorkerCap(max_workers, "available memory unknown: pool size unchanged")
    usable = int(avail * (1 - reserve))
    fit = usable // per
    workers = max(1, min(max_workers, fit))
    gib = 1024**3
    reason = (
        f"{usable / gib:.1f} GiB usable / {per / gib:.2f} GiB per worker = {fit} -> "
        f"{workers} worker(s) (of {max_workers})"
    )
    if fit < 1:
        reason += "; not even one worker fits: running one anyway, expect memory pressure"
    return WorkerCap(workers, reason)


__all__ = [
    "WarmOutcome",
    "WorkerCap",
    "WorkerInit",
    "WorkerLoad",
    "available_memory",
    "call_warm",
    "pack_warm",
    "parse_size",
    "run_warm",
    "unpack_warm",
    "workers_for_memory",
]

"""Warm workers: per-worker resources built once, and the pool size capped by memory.

::

    add_node("tokenize", tokenize, worker_init=load_tokenizer)
    driver: frames.request(fn_bytes, WorkerInit, [arg]) --bytes--> worker:
              resource = worker_resources().get(init)   built once per process;
                                                        the first call pays the load
              fn(arg, resource), timed apart from the load
    driver: the call's Outcome, with its Load (name, start, end) <--frame--

The node receives the resource as its second positional argument:
``def tokenize(state, tokenizer) -> dict``. Its build is timed apart from
the call (a ``load`` span on the worker's row of the trace, and
``NodeCall.load_s``), so a call's wall time stays the node's own. Lanes in
the driver (thread, inline, and every lane in sequential or concurrent
mode) keep their resources per compiled graph, built once there.

``workers_for_memory`` caps a pool's size so that ``memory_per_worker``
times the workers fits in the memory available now; ``lanes.memory``
enforces it, ending a worker that grows past its call's limit.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import cloudpickle

from .errors import GraphError
from .marks import Mark


@dataclass(frozen=True)
class WorkerInit:
    """A zero-argument function that builds a per-worker resource, pickled once.

    ``key`` identifies the build: two nodes with the same ``worker_init``
    share one resource per worker.
    """

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


def load_mark(
    name: str, start: float, end: float, *, pid: int, thread: int, host: str, node: str
) -> Mark:
    """A ``worker_init`` build as a slice on the worker's thread row, before its call."""
    return Mark(
        "span",
        f"load {name}",
        start,
        pid,
        host,
        end=end,
        thread=thread,
        cat="worker_init",
        args={"load_s": round(max(0.0, end - start), 6), "node": node},
    )


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
    "WorkerCap",
    "WorkerInit",
    "available_memory",
    "load_mark",
    "parse_size",
    "workers_for_memory",
]

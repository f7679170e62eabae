"""What runs where the node runs: one timed call, measured on that side.

This module is imported inside worker processes, so it stays small and
imports nothing heavy. Data flow of a cpu-lane call::

    driver: cloudpickle.dumps((fn_bytes, arg))  --bytes-->  worker: run_pickled()
            loads -> timed_call(fn, arg) -> CallOutcome -> cloudpickle.dumps
    driver: loads(result bytes) -> CallOutcome   <--bytes--

Pickling happens in our code, not the executor's, so (a) any
``concurrent.futures.Executor`` works (loky, stdlib, Dask), (b) functions and
state classes from the user's ``__main__`` travel by value, (c) a payload
that cannot be pickled fails in the driver before anything is submitted, and
(d) the bytes in and out are measured exactly.
"""

from __future__ import annotations

import asyncio
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
    error: BaseException | None = None
    error_type: str = ""
    error_message: str = ""
    traceback_text: str = ""


def _hostname() -> str:
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


def timed_call(fn: Callable[..., Any], arg: Any) -> CallOutcome:
    """Call ``fn(arg)`` here, timing it with this process's clocks.

    A coroutine function is run to completion on a fresh event loop (used when
    an ``async def`` node is sent whole to a worker). Every exception,
    ``SystemExit`` included, becomes a failed outcome: a node calling
    ``sys.exit`` is a node error, not a crashed worker.
    """
    pid = os.getpid()
    tid = threading.get_native_id()
    start = time.time()
    cpu0 = time.thread_time()
    try:
        value = fn(arg)
        if inspect.isawaitable(value):
            value = asyncio.run(_await(value))
    except BaseException as exc:
        end = time.time()
        return CallOutcome(
            ok=False,
            value=None,
            pid=pid,
            thread=tid,
            host=_hostname(),
            start=start,
            end=end,
            cpu_s=time.thread_time() - cpu0,
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
        host=_hostname(),
        start=start,
        end=end,
        cpu_s=time.thread_time() - cpu0,
    )


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
        outcome = _failure(exc, start, "could not unpickle the node's function or input")
    else:
        outcome = timed_call(fn, arg)
    outcome = replace(outcome, bytes_in=len(payload))
    return _dump_outcome(outcome)


def _failure(exc: BaseException, start: float, context: str) -> CallOutcome:
    return CallOutcome(
        ok=False,
        value=None,
        pid=os.getpid(),
        thread=threading.get_native_id(),
        host=_hostname(),
        start=start,
        end=time.time(),
        cpu_s=0.0,
        error=exc,
        error_type=type(exc).__qualname__,
        error_message=f"{context}: {exc}",
        traceback_text="".join(traceback.format_exception(exc)),
    )


def _dump_outcome(outcome: CallOutcome) -> bytes:
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

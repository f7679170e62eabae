"""The lanes inside the driver: a coroutine on the event loop, a plain call on the loop's
thread, a call on a thread of the loop's pool.

Each runs one call, measures it where it runs and returns its ``Outcome``
(``lanes.calls``). A timeout is a ``TimeoutError`` for the dispatcher to
turn into the call's ``TimedOut``: a coroutine is cancelled at its deadline;
a thread cannot be stopped, so its call runs on in the background, its
result discarded; a plain call on the loop's thread is never timed out (it
holds the loop until it returns).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .calls import Call, Cancelled, Outcome, lost, outcome, returned
from .measure import Load, Measured, Resources, call_with_init, failed, with_resource
from .threads import LoopThreads

if TYPE_CHECKING:
    from ..warm import WorkerInit


async def run_coroutine(
    call: Call,
    lane: str,
    fn: Callable[..., Any],
    arg: Any,
    timeout: float | None,
    init: WorkerInit | None,
    resources: Resources,
) -> Outcome:
    """Await ``fn(arg)`` on the loop; ``TimeoutError`` past ``timeout`` (it was cancelled).

    The node's own ``TimeoutError`` (its ``wait_for``) is its failure, not
    the engine's timeout; its own ``CancelledError``, when nobody cancelled
    the run, is a ``Cancelled`` failure. A cancelled run propagates.
    """
    load: Load | None = None
    if init is not None:
        t = time.time()
        try:
            # A build may be slow (it loads something): never on the loop's thread.
            resource, built, builder = await asyncio.to_thread(_build_here, resources, init)
        except Exception as exc:
            return outcome(call, lane, failed(exc, t, f"worker_init {init.name} failed: {exc}"))
        if built is not None:
            load = Load(init.name, built[0], built[1], builder)
        fn = functools.partial(with_resource, fn, resource)
    start = time.time()
    deadline = asyncio.timeout(timeout) if timeout is not None else None
    try:
        if deadline is None:
            value = await fn(arg)
        else:
            async with deadline:
                value = await fn(arg)
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise  # the run (or the step) is being cancelled: never swallowed
        return lost(call, lane, start, Cancelled(f"its code was cancelled: {exc!r}", exc))
    except TimeoutError as exc:
        if deadline is not None and deadline.expired():
            raise  # the engine's timeout: the dispatcher's TimedOut
        return outcome(call, lane, failed(exc, start, str(exc)))  # the node's own wait_for
    except Exception as exc:
        return outcome(call, lane, failed(exc, start, str(exc)))
    # No CPU time is attributable: other tasks interleave on this thread.
    return returned(call, lane, start, time.time(), value, load)


def run_here(
    call: Call, lane: str, fn: Callable[..., Any], arg: Any, init: Any, resources: Resources
) -> Outcome:
    """Call ``fn(arg)`` on this thread (the loop's); a Ctrl-C propagates (it is the user's)."""
    return outcome(call, lane, call_with_init(fn, arg, init, resources, in_driver=True))


async def run_on_thread(
    pool: LoopThreads,
    call: Call,
    lane: str,
    fn: Callable[..., Any],
    arg: Any,
    timeout: float | None,
    init: Any,
    resources: Resources,
) -> Outcome:
    """``fn(arg)`` on a thread of the loop's pool; past ``timeout`` it is abandoned."""
    # The call sees the caller's context variables (a node's stream writer), as
    # ``asyncio.to_thread`` would give it.
    job = functools.partial(
        contextvars.copy_context().run, call_with_init, fn, arg, init, resources, in_driver=True
    )
    measured: Measured = await pool.run(job, timeout)
    return outcome(call, lane, measured)


def _build_here(resources: Resources, init: WorkerInit) -> tuple[Any, Any, int]:
    """``resources.get(init)`` and the thread it ran on (the trace draws the build there)."""
    resource, built = resources.get(init)
    return resource, built, threading.get_native_id()


__all__ = ["run_coroutine", "run_here", "run_on_thread"]

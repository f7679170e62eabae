"""Running a coroutine from synchronous code: ``run_sync``, behind ``invoke``, ``run`` and
``stream``.

A fresh event loop (uvloop's when it is installed) per call; SIGINT and SIGTERM
cancel the run cleanly; inside a running event loop (Jupyter, sync code called
from an async handler) the loop runs in a helper thread instead.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a new loop: uvloop's when it is installed.

    SIGINT and SIGTERM (in the main thread) cancel the coroutine instead of
    killing the process where it stands: a run stops dispatching, cancels its
    io calls and kills its cpu calls' workers, and saves the writes of the
    nodes that finished as pending writes. Then SIGINT raises
    ``KeyboardInterrupt`` (asyncio's own behaviour) and SIGTERM raises
    ``SystemExit(128 + SIGTERM)``, the exit status a shell expects.

    Called where an event loop is running already (a Jupyter cell, sync code
    called from an async handler), it runs the coroutine on a loop of its own
    in a helper thread and waits for it there.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="engine-sync") as one:
            # In the caller's context: a graph invoked inside a node finds the run it
            # belongs to (engine.subgraphs), and the run's config.
            context = contextvars.copy_context()
            done: concurrent.futures.Future[T] = one.submit(context.run, run_sync, coro)  # type: ignore[arg-type]
            return done.result()
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:  # uvloop is optional (e.g. on Windows)
        factory = None
    terminated: list[int] = []
    with asyncio.Runner(loop_factory=factory) as runner:
        # asyncio.Runner turns SIGINT into a cancellation of the main task
        # already; SIGTERM gets the same treatment here.
        try:
            return runner.run(_cancel_on_sigterm(coro, terminated))
        except asyncio.CancelledError:
            if not terminated:
                raise
    raise SystemExit(128 + terminated[0])


async def _cancel_on_sigterm(coro: Coroutine[Any, Any, T], terminated: list[int]) -> T:
    import signal
    import threading

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def on_sigterm() -> None:
        terminated.append(int(signal.SIGTERM))
        task.cancel()

    installed = False
    if threading.current_thread() is threading.main_thread():
        try:
            loop.add_signal_handler(signal.SIGTERM, on_sigterm)
            installed = True
        except (NotImplementedError, RuntimeError, ValueError):  # e.g. Windows
            pass
    try:
        return await coro
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGTERM)


__all__ = ["run_sync"]

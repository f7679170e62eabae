"""An event loop of its own, in a daemon thread, for a checkpointer used from many loops.

``PostgresCheckpointer``'s pool belongs to the loop that opened it, while
``app.invoke`` starts a new loop on every call. A checkpointer that runs
every storage call on its home loop (``await home.call(coro)`` from any
loop, ``home.block(coro)`` from code without one) serves them all.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class HomeLoop:
    """One event loop in one daemon thread, started on first use; ``stop`` ends both.

    Invariant: ``_loop`` is running in ``_thread`` whenever both are set.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<HomeLoop {self.name} running={self._loop is not None}>"

    def _running(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def here(self) -> bool:
        """Whether the caller runs on the home loop itself."""
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """``coro``'s result, run on the home loop (directly when already there)."""
        if self.here():
            return await coro
        future = asyncio.run_coroutine_threadsafe(coro, self._running())
        return await asyncio.wrap_future(future)

    def block(self, coro: Coroutine[Any, Any, T]) -> T:
        """``coro``'s result, run on the home loop, waited for in this thread (never call
        it from the home loop)."""
        if self.here():
            coro.close()
            raise RuntimeError(f"{self!r}: block() called from its own loop; await call()")
        return asyncio.run_coroutine_threadsafe(coro, self._running()).result()

    def stop(self) -> None:
        """Stop the loop and join its thread (idempotent)."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


__all__ = ["HomeLoop"]

"""One shared object per running event loop: what the runs on a loop share.

Concurrent runs on one loop share its loop guard (``engine.loopguard``) and
its thread-lane pool (``engine.lanes.threads``): hundreds of runs each
starting a sampler thread and a pool of their own would spend the loop's
time on threads instead of calls. Each of those modules holds one
``PerLoop`` registry. Like the default process pool, a registry is
process-wide mutable state, and documented as such: lazily filled (an
object is created by the first run on a loop that asks for it),
lock-guarded (runs on loops in different threads ask at once), and emptied
as runs end. The object is closed by the last run that releases it, or by
its owner when the loop closes under it; keys are weak, so a loop that is
collected takes its entry along.

Scenario handled: the last run on a loop releases the object and awaits its
close while a new run on the same loop starts. The entry left the registry
under the lock, before the close began, so the new run creates a fresh
object instead of joining one that is closing.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Closable(Protocol):
    async def aclose(self) -> None: ...


T = TypeVar("T", bound=Closable)


class _Slot(Generic[T]):
    __slots__ = ("item", "users")

    def __init__(self, item: T) -> None:
        self.item = item
        self.users = 0


class PerLoop(Generic[T]):
    """A registry of one ``T`` per event loop, counted by the runs using it.

    Invariant: an entry exists exactly while at least one user holds its
    item (or until ``discard``); ``_lock`` guards ``_slots`` and every
    count. Items are created and counted under the lock, never closed under
    it: the last user's ``release`` closes its item after the entry left.
    """

    def __init__(self, create: Callable[[asyncio.AbstractEventLoop], T]) -> None:
        self._create = create
        self._lock = threading.Lock()
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Slot[T]] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        with self._lock:
            users = [s.users for s in self._slots.values()]
        return f"<PerLoop loops={len(users)} users={sum(users)}>"

    def acquire(self, loop: asyncio.AbstractEventLoop) -> T:
        """The loop's shared object, created on first use; pair with ``release``."""
        with self._lock:
            slot = self._slots.get(loop)
            if slot is None:
                slot = self._slots[loop] = _Slot(self._create(loop))
            slot.users += 1
            return slot.item

    async def release(self, loop: asyncio.AbstractEventLoop, item: T) -> None:
        """Give ``item`` back; the last user closes it.

        An item that already left the registry (``discard``) is its
        discarder's to close.
        """
        with self._lock:
            slot = self._slots.get(loop)
            if slot is None or slot.item is not item:
                return
            slot.users -= 1
            if slot.users > 0:
                return
            del self._slots[loop]
        await item.aclose()

    def discard(self, loop: asyncio.AbstractEventLoop, item: T) -> bool:
        """Drop ``item`` whatever its users (its loop closed); True if it was registered.

        The caller closes it (or it dies with its loop).
        """
        with self._lock:
            slot = self._slots.get(loop)
            if slot is None or slot.item is not item:
                return False
            del self._slots[loop]
            return True

    def peek(self, loop: asyncio.AbstractEventLoop) -> T | None:
        """The loop's object if one exists now; creates none."""
        with self._lock:
            slot = self._slots.get(loop)
            return slot.item if slot is not None else None


__all__ = ["Closable", "PerLoop"]

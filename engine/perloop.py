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

A registry may let an object linger (``linger_s``): when its last run
releases it, it stays registered, idle, for that long, and a run that starts
meanwhile takes it over. Runs one after another on one loop then share one
loop guard instead of each starting (and joining) a sampler thread, which
costs a run of a few nodes more than its nodes do.

Scenario handled: the last run on a loop releases the object and awaits its
close while a new run on the same loop starts. The entry left the registry
under the lock, before the close began, so the new run creates a fresh
object instead of joining one that is closing. With a linger, the entry
leaves the registry under the lock when the linger expires, and only if no
run took the object meanwhile.
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
    __slots__ = ("expiry", "item", "users")

    def __init__(self, item: T) -> None:
        self.item = item
        self.users = 0
        self.expiry: asyncio.TimerHandle | None = None  # set while it lingers unused


class PerLoop(Generic[T]):
    """A registry of one ``T`` per event loop, counted by the runs using it.

    Invariant: an entry exists while at least one user holds its item, and
    for ``linger_s`` after the last one released it (its ``expiry`` is then
    set), or until ``discard``; ``_lock`` guards ``_slots``, every count and
    every expiry. Items are created and counted under the lock, never closed
    under it: the last user's ``release`` (or the linger's end) closes its
    item after the entry left. ``_closing`` holds the closes a linger's end
    started, until they finish.
    """

    def __init__(
        self, create: Callable[[asyncio.AbstractEventLoop], T], *, linger_s: float = 0.0
    ) -> None:
        self._create = create
        self.linger_s = linger_s
        self._lock = threading.Lock()
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Slot[T]] = (
            weakref.WeakKeyDictionary()
        )
        self._closing: set[asyncio.Task[None]] = set()

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
            if slot.expiry is not None:  # it lingered: this run takes it over
                slot.expiry.cancel()
                slot.expiry = None
            slot.users += 1
            return slot.item

    async def release(self, loop: asyncio.AbstractEventLoop, item: T) -> None:
        """Give ``item`` back; the last user closes it, now or once it lingered unused.

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
            if self.linger_s > 0:
                slot.expiry = loop.call_later(self.linger_s, self._expire, loop, slot)
                return
            del self._slots[loop]
        await item.aclose()

    def _expire(self, loop: asyncio.AbstractEventLoop, slot: _Slot[T]) -> None:
        """The linger of an unused item ended (on its loop): close it, unless a run took it."""
        with self._lock:
            if self._slots.get(loop) is not slot or slot.users > 0 or slot.expiry is None:
                return
            slot.expiry = None
            del self._slots[loop]
        task = loop.create_task(slot.item.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def discard(self, loop: asyncio.AbstractEventLoop, item: T) -> bool:
        """Drop ``item`` whatever its users (its loop closed); True if it was registered.

        The caller closes it (or it dies with its loop).
        """
        with self._lock:
            slot = self._slots.get(loop)
            if slot is None or slot.item is not item:
                return False
            # A pending expiry is left to find the entry gone (``discard`` may be
            # called from another thread, where the loop's timers are not ours).
            del self._slots[loop]
            return True

    def peek(self, loop: asyncio.AbstractEventLoop) -> T | None:
        """The loop's object if one exists now; creates none."""
        with self._lock:
            slot = self._slots.get(loop)
            return slot.item if slot is not None else None


__all__ = ["Closable", "PerLoop"]

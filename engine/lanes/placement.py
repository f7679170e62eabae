"""Where one node call executes, per lane and mode: the one answer, asked once.

The dispatcher asks ``place`` once per node and run, and everything that
depends on where a call runs follows from its answer: which lane runs it,
whether its input is copied (a worker gets its own by unpickling), whether
it is registered with the loop guard (it can block the loop), what a
timeout does to it.
"""

from __future__ import annotations

import enum


class Placement(enum.Enum):
    """Where a call executes in the driver or beyond it."""

    LOOP_TASK = "loop_task"  # a coroutine awaited on the event loop
    LOOP_CALL = "loop_call"  # a plain call made on the event loop's thread
    THREAD = "thread"  # the loop's shared thread pool
    PROCESS = "process"  # a worker process of the cpu lane's pool

    @property
    def on_loop(self) -> bool:
        """True when the call executes on the event loop's thread (and can block it)."""
        return self in (Placement.LOOP_TASK, Placement.LOOP_CALL)


def place(lane: str, mode: str, *, is_coroutine: bool) -> Placement:
    """Where a call on ``lane`` in ``mode`` executes.

    Coroutines of the io lane are tasks on the loop; cpu calls in
    ``parallel`` mode go to a worker process (a coroutine runs whole on the
    worker's own loop); the inline lane, and plain functions in
    ``sequential`` mode, are called on the loop's thread; everything else
    (the thread lane, sync io, cpu in ``concurrent``, a coroutine off the io
    lane) runs on a thread of the pool.
    """
    if lane == "io" and is_coroutine:
        return Placement.LOOP_TASK
    if lane == "cpu" and mode == "parallel":
        return Placement.PROCESS
    if lane == "inline" or (mode == "sequential" and not is_coroutine):
        return Placement.LOOP_CALL
    return Placement.THREAD


__all__ = ["Placement", "place"]

"""Where one node call executes, per lane and mode: the one answer everyone asks.

``LaneRunner.call`` dispatches on it, and the loop guard asks it which calls
can block the event loop (``runs_on_loop``); a dispatcher in front of the
lanes can call ``place`` alone.
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


def runs_on_loop(lane: str, mode: str, *, is_coroutine: bool) -> bool:
    """True when a call on ``lane`` in ``mode`` executes on the event loop's thread."""
    return place(lane, mode, is_coroutine=is_coroutine).on_loop


__all__ = ["Placement", "place", "runs_on_loop"]

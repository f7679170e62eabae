"""A blocked event loop as records: what one episode was made of, and for which run.

The loop guard (``engine.loopguard``) samples who runs on a blocked loop
into an ``Episode``: seconds, loop CPU and place per culprit, a culprit
being the node calls (each tagged with the run that owns it) found on the
loop, or nobody ("other code"). When the loop wakes, ``build_report`` turns
the episode into one run's ``BlockReport``: that run's shares and the
unattributed ones, scaled to the measured lag. Also here: reading a
thread's stack for node code and for the place it is stuck.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Any, Literal

Culprit = Literal["task", "frame", "on_loop", "none"]
#: Node calls seen on the loop at once: (owner, node) pairs, the owner a run's key.
Who = tuple[tuple[int, str], ...]


@dataclass(frozen=True)
class Share:
    """The part of one block spent in one culprit: a node, or other code (``node`` None)."""

    node: str | None
    blocked_s: float
    cpu_s: float | None  # the loop thread's CPU meanwhile; None where it cannot be read
    where: str
    queued_s: float = 0.0  # the loop thread was runnable but preempted (Linux schedstat)

    def describe(self) -> str:
        who = repr(self.node) if self.node is not None else "other code"
        kind = ""
        ran = self.blocked_s - self.queued_s  # preempted time is neither work nor waiting
        if self.cpu_s is not None and ran > 0:
            kind = "CPU work, " if self.cpu_s >= 0.5 * ran else "a blocking wait, "
        return f"{who} {self.blocked_s * 1e3:.0f} ms ({kind}at {self.where or 'unknown'})"


@dataclass(frozen=True)
class BlockReport:
    """One episode of a blocked loop, as one run sees it.

    ``nodes`` are the run's culprits, most time first; ``culprit`` says how
    they were found: ``task`` (the task executing on the loop was a
    registered node call), ``frame`` (a registered node's code was on the
    loop thread's stack), ``on_loop`` (fallback: every node call of the run
    on the loop during the window), or ``none``. ``shares`` split the lag
    between what the sampler saw of this run and of no run (other runs'
    shares go to their own reports). ``cpu_s`` is the CPU the loop thread
    used in the window: near ``lag_s`` means CPU work, near zero a blocking
    wait (sleep, sync I/O).
    """

    start: float  # time.time() when the loop stopped responding (estimated)
    lag_s: float
    cpu_s: float
    nodes: tuple[str, ...]
    culprit: Culprit
    where: str
    shares: tuple[Share, ...] = ()

    @property
    def end(self) -> float:
        return self.start + self.lag_s

    @property
    def pinned(self) -> bool:
        """True when a node was caught running (not just on the loop during the window)."""
        return self.culprit in ("task", "frame")

    def message(self) -> str:
        if self.shares:
            parts = "; ".join(s.describe() for s in self.shares)
        else:
            who = ", ".join(repr(n) for n in self.nodes) or "no registered node"
            kind = "CPU work" if self.cpu_s >= 0.5 * self.lag_s else "a blocking wait"
            parts = f"{who} ({kind}, at {self.where or 'unknown'})"
        return (
            f"the event loop was blocked for {self.lag_s * 1e3:.0f} ms: {parts}; move CPU "
            "work to lane='cpu' and blocking calls to lane='thread' (or await them)"
        )


@dataclass(frozen=True)
class LagSample:
    """A point of the loop-lag counter track (``lag_s`` holds until the next point)."""

    time: float
    lag_s: float


class Episode:
    """What the sampler saw while one beat was stale: time and CPU per culprit.

    Invariant: only touched under the loop guard's lock; ``beat`` ties it to
    the one heartbeat whose late wake-up (or a run's end) will report it.
    """

    def __init__(self, beat: float, t: float, cpu: float | None, queued: float) -> None:
        self.beat = beat
        self._t = t
        self._cpu = cpu
        self._queued = queued
        # (who, how) -> [seconds, loop CPU seconds (None when unknown), where, queued]
        self.parts: dict[tuple[Who, Culprit], list[Any]] = {}

    def add(
        self, who: Who, how: Culprit, where: str, t: float, cpu: float | None, queued: float
    ) -> None:
        """Charge the time (and loop CPU) since the previous sample to what runs now."""
        part = self.parts.setdefault((who, how), [0.0, 0.0, where, 0.0])
        part[0] += max(0.0, t - self._t)
        if cpu is None or self._cpu is None or part[1] is None:
            part[1] = None
        else:
            part[1] += max(0.0, cpu - self._cpu)
        part[3] += max(0.0, queued - self._queued)
        self._t, self._cpu, self._queued = t, cpu, queued


Parts = dict[tuple[Who, Culprit], list[Any]]


def owners(parts: Parts) -> set[int]:
    """The runs whose node calls the sampler caught on the loop in an episode."""
    return {owner for who, _ in parts for owner, _node in who}


def build_report(
    owner: int,
    start: float,
    lag: float,
    cpu: float,
    parts: Parts,
    fallback: tuple[str, ...],
) -> BlockReport:
    """``owner``'s report of an episode: its shares and other code's, most time first.

    The sampled parts are scaled to the measured lag over *all* parts, so a
    run's share is the time its own nodes held the loop, whatever other runs
    did in the same block. A part holding several node calls at once is split
    evenly between them. With none of the run's nodes sampled, the report
    names ``fallback`` (the run's calls on the loop during the window).
    """
    sampled = sum(p[0] for p in parts.values())
    scale = lag / sampled if sampled > 0 else 0.0
    shares: list[Share] = []
    how: Culprit = "none"
    for (who, kind), (seconds, cpu_s, where, queued) in sorted(
        parts.items(), key=lambda kv: -kv[1][0]
    ):
        k = len(who) or 1
        blocked = seconds * scale / k
        c = None if cpu_s is None else min(cpu_s / k, blocked)
        q = min(queued / k, blocked)
        if not who:
            shares.append(Share(None, blocked, c, where, q))
            continue
        mine = [node for o, node in who if o == owner]
        shares += [Share(node, blocked, c, where, q) for node in mine]
        if mine and how == "none":
            how = kind
    named = tuple(dict.fromkeys(s.node for s in shares if s.node is not None))
    where = shares[0].where if shares else ""
    if not named:
        named, how = fallback, ("on_loop" if fallback else "none")
        shares = []
    return BlockReport(start, lag, cpu, named, how, where, tuple(shares))


# -- reading the loop thread ---------------------------------------------------


def codes_of(fn: Callable[..., Any] | None) -> frozenset[CodeType]:
    """The code objects a node's call executes first (unwrapping partials and methods)."""
    codes: set[CodeType] = set()
    seen = 0
    while fn is not None and seen < 8:
        seen += 1
        if isinstance(fn, functools.partial):
            fn = fn.func
            continue
        fn = inspect.unwrap(fn) if callable(fn) else fn
        code = getattr(fn, "__code__", None) or getattr(
            getattr(fn, "__func__", None), "__code__", None
        )
        if code is None and not inspect.isroutine(fn):
            code = getattr(getattr(type(fn), "__call__", None), "__code__", None)  # noqa: B004
        if isinstance(code, CodeType):
            codes.add(code)
        break
    return frozenset(codes)


def current_task_of(loop: asyncio.AbstractEventLoop | None) -> asyncio.Task[Any] | None:
    """The task executing on ``loop`` (asked from another thread; None if unknown).

    ``asyncio.current_task(loop)`` reads the loop's current-task slot; from a
    thread that does not run the loop this is a read only, and any failure
    just means the frame evidence has to do.
    """
    if loop is None:
        return None
    try:
        return asyncio.current_task(loop)
    except Exception:
        return None


def codes_on_stack(frame: FrameType | None, limit: int = 200) -> frozenset[CodeType]:
    codes: set[CodeType] = set()
    while frame is not None and limit > 0:
        codes.add(frame.f_code)
        frame = frame.f_back
        limit -= 1
    return frozenset(codes)


_SKIPPED = (os.path.dirname(asyncio.__file__),)


def where(frame: FrameType | None, *also_skip: str) -> str:
    """The innermost frame of a stack outside asyncio and the files in ``also_skip``."""
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(_SKIPPED) and path not in also_skip:
            return f"{frame.f_code.co_name} ({os.path.basename(path)}:{frame.f_lineno})"
        frame = frame.f_back
    return ""


__all__ = [
    "BlockReport",
    "Culprit",
    "Episode",
    "LagSample",
    "Share",
    "Who",
    "build_report",
    "codes_of",
    "codes_on_stack",
    "current_task_of",
    "owners",
    "where",
]

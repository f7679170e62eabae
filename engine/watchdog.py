"""The event-loop guard, as one run sees it: lag reports naming the run's blocking node.

A ``LoopWatchdog`` watches the loop for one run. It does not watch by
itself: it attaches to the loop's shared ``LoopGuard`` (``engine.loopguard``:
one monitor task and one sampler thread per event loop, however many runs
share the loop), registers the run's calls that execute on the loop, and
receives the reports that concern its run. Each report becomes, on the loop
thread,

- a ``LoopBlocked`` event through the run's event sink,
- a ``loop_blocked`` log line (a warning when a node was caught, or the
  loop thread was computing) with a hint that names the culprit,
- trace marks: a ``loop lag (ms)`` counter track and an instant,
- evidence for the profile (``blamed()``).

A run's end flushes a block the monitor has not measured yet (``flush``):
the recorder calls it before ``RunFinished``, so a block in the last step
is reported like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
from collections.abc import Callable
from types import CodeType
from typing import Any

from .blocks import BlockReport, LagSample, Share, codes_of
from .events import LoopBlocked
from .logs import get_logger
from .loopguard import GUARDS, LoopGuard, _Entry
from .marks import Mark
from .measured import Blame
from .procs import hostname
from .resources import Clock, SystemClock

log = get_logger("engine.watchdog")

Emit = Callable[[Any], None]

DEFAULT_THRESHOLD_S = 0.05
DEFAULT_INTERVAL_S = 0.01
LAG_TRACK = "loop lag (ms)"

_NOT_WATCHING = contextlib.nullcontext()


class _State(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    CLOSED = "closed"


class LoopWatchdog:
    """Watches the event loop for one run.

    Use as ``async with LoopWatchdog(emit=...) as wd:``; the dispatcher
    registers every call that runs on the loop (``enter``/``leave``, or
    ``with wd.running(node, fn=fn):``) and the recorder calls ``wd.flush()``
    as the run ends. ``guard`` attaches to that guard instead of the loop's
    shared one (a test's, with its clock: the watchdog's times are its
    guard's clock's).
    ``sampler=False`` starts no sampler thread for this run (a shared
    guard's sampler, started for another run, still serves it).

    Invariant: attached to ``_guard`` under ``_key`` exactly while RUNNING;
    ``reports`` and ``samples`` only grow and are only appended on the loop
    thread; ``_codes`` caches each node function's code objects for the run (from
    the guard's cache for the loop's runs, ``LoopGuard.codes``).
    """

    def __init__(
        self,
        *,
        threshold_s: float = DEFAULT_THRESHOLD_S,
        interval_s: float = DEFAULT_INTERVAL_S,
        run_id: str = "",
        emit: Emit | None = None,
        sampler: bool = True,
        guard: LoopGuard | None = None,
    ) -> None:
        if threshold_s <= 0:
            raise ValueError(f"threshold_s must be > 0, got {threshold_s}")
        if not 0 < interval_s <= threshold_s / 2:
            raise ValueError(
                f"interval_s must be in (0, threshold_s / 2], got {interval_s} with "
                f"threshold_s={threshold_s}; sample at least twice per threshold"
            )
        self.threshold_s = threshold_s
        self.interval_s = interval_s
        self.run_id = run_id
        self._emit = emit or (lambda event: None)
        self._use_sampler = sampler
        self._given_guard = guard
        self._guard: LoopGuard | None = None
        self._clock: Clock = SystemClock()  # the guard's, once attached
        self._loop: asyncio.AbstractEventLoop | None = None
        self._key = -1
        self._state = _State.CREATED
        self._codes: dict[Any, frozenset[CodeType]] = {}  # per node function, for the run
        self.reports: list[BlockReport] = []
        self.samples: list[LagSample] = []
        self._emit_failed = False

    def __repr__(self) -> str:
        return (
            f"<LoopWatchdog {self._state.value} threshold={self.threshold_s * 1e3:.0f}ms "
            f"reports={len(self.reports)}>"
        )

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> LoopWatchdog:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start(self) -> None:
        """Start watching the running loop (call from a coroutine on it)."""
        if self._state is not _State.CREATED:
            raise RuntimeError(f"{self!r} was already started; create one watchdog per run")
        loop = asyncio.get_running_loop()
        guard = self._given_guard or GUARDS.acquire(loop)
        self._loop, self._guard = loop, guard
        self._clock = guard.clock
        self.samples.append(LagSample(self._clock.time(), 0.0))
        # A registered guard is open (a closing one left the registry first).
        self._key = guard.attach(self, sampler=self._use_sampler)
        self._state = _State.RUNNING

    async def aclose(self) -> None:
        """Stop watching; idempotent. The loop's last run closes the shared guard,
        and never swallows a cancellation of its caller doing so."""
        if self._state is not _State.RUNNING:
            self._state = _State.CLOSED
            return
        self._state = _State.CLOSED
        guard, loop = self._guard, self._loop
        assert guard is not None and loop is not None
        guard.detach(self._key)
        if self.samples and self.samples[-1].lag_s != 0.0:
            self.samples.append(LagSample(self._clock.time(), 0.0))
        if self._given_guard is None:
            await GUARDS.release(loop, guard)

    # -- the registry the dispatcher updates ---------------------------------

    def running(
        self, node: str, *, index: int = -1, fn: Callable[..., Any] | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """Mark a node call as running on the loop for the duration of the block.

        Outside the watch (before ``start``, after ``aclose``) nothing is watched.
        """
        guard = self._guard
        if self._state is not _State.RUNNING or guard is None:
            return _NOT_WATCHING
        return guard.running(self._key, node, index=index, task=_task(), codes=self._codes_of(fn))

    def enter(self, node: str, index: int, fn: Callable[..., Any] | None) -> int:
        """``running`` without the context manager: a key for ``leave`` (-1: not watching).

        The dispatcher's path, once per call that runs on the loop's thread.
        """
        guard = self._guard
        if guard is None or self._state is not _State.RUNNING:
            return -1
        try:
            codes = self._codes[fn]
        except (KeyError, TypeError):
            codes = self._codes_of(fn)
        return guard.enter(_Entry(self._key, node, index, asyncio.current_task(), codes))

    def leave(self, key: int) -> None:
        """The call ``enter`` registered under ``key`` left the loop."""
        if key >= 0 and self._guard is not None:
            self._guard.leave(key)

    def _codes_of(self, fn: Callable[..., Any] | None) -> frozenset[CodeType]:
        try:
            codes = self._codes[fn]
        except KeyError:
            codes = self._codes[fn] = self._shared_codes(fn)
        except TypeError:  # an unhashable callable: not cached
            codes = codes_of(fn)
        return codes

    def _shared_codes(self, fn: Callable[..., Any] | None) -> frozenset[CodeType]:
        """``codes_of(fn)``, kept by the loop's guard for the runs after this one."""
        shared = self._guard.codes if self._guard is not None else None
        if shared is None:
            return codes_of(fn)
        try:
            return shared[fn]
        except KeyError:
            codes = shared[fn] = codes_of(fn)
            return codes
        except TypeError:  # not weakly referenceable (None, some callables): not kept
            return codes_of(fn)

    def on_loop(self) -> list[str]:
        """Names of this run's node calls registered as running on the loop now."""
        if self._guard is None or self._state is not _State.RUNNING:
            return []
        return self._guard.on_loop(self._key)

    def flush(self) -> None:
        """Report a block of the loop the monitor has not measured yet (at the run's end).

        The last step's node may have blocked the loop just now: the shared
        monitor wakes only after this run is gone. Called on the loop before
        ``RunFinished``; never raises (observers cannot break a run).
        """
        if self._guard is None or self._state is not _State.RUNNING:
            return
        try:
            self._guard.flush(self._key)
        except Exception:
            log.exception("loop_guard_flush_failed", run_id=self.run_id)

    # -- what the guard hands this run -----------------------------------------

    def deliver(self, report: BlockReport, *, runs_told: int = 1, lead: bool = True) -> None:
        """Record one report of this run and tell the run (on the loop thread).

        ``runs_told``: how many runs on the loop hear of this block; ``lead``:
        this run announces a block no node was caught in, for all of them.
        """
        lag = report.lag_s
        self.reports.append(report)
        self.samples.append(LagSample(report.start, lag))
        self.samples.append(LagSample(report.end, 0.0))
        # Warn when the run's node is pinned down as the culprit, or (once for
        # all the runs told) when the loop thread was busy computing in no
        # node's code; a lag with neither is most often the machine running
        # something else (a preempted loop), which is no bug of the user's.
        warn = report.pinned or (lead and report.cpu_s >= 0.5 * lag)
        (log.warning if warn else log.debug)(
            "loop_blocked",
            run_id=self.run_id,
            runs_told=runs_told,
            lag_ms=round(lag * 1e3, 1),
            cpu_ms=round(report.cpu_s * 1e3, 1),
            nodes=list(report.nodes),
            culprit=report.culprit,
            where=report.where,
            hint=report.message(),
        )
        try:
            self._emit(
                LoopBlocked(
                    run_id=self.run_id,
                    time=self._clock.time(),
                    lag_s=lag,
                    nodes=list(report.nodes),
                )
            )
        except Exception:
            # Observers cannot break a run.
            if not self._emit_failed:
                self._emit_failed = True
                log.exception("loop_blocked_sink_failed", run_id=self.run_id)

    # -- evidence ------------------------------------------------------------

    def blamed(self) -> dict[str, Blame]:
        """Blocked seconds (and the loop's CPU meanwhile) per node, for the profile.

        Only precise evidence counts: shares the sampler tied to a node. The
        CPU of a share whose CPU is unknown is estimated from the whole block.
        """
        out: dict[str, list[float]] = {}
        for r in self.reports:
            if not r.pinned:
                continue
            for sh in r.shares:
                if sh.node is None:
                    continue
                cpu = sh.cpu_s if sh.cpu_s is not None else sh.blocked_s * r.cpu_s / r.lag_s
                acc = out.setdefault(sh.node, [0.0, 0.0, 0.0, 0.0])
                acc[0] += sh.blocked_s
                acc[1] += cpu
                acc[2] += 1
                acc[3] += sh.queued_s
        return {
            n: Blame(blocked_s=a[0], cpu_s=a[1], reports=int(a[2]), queued_s=a[3])
            for n, a in out.items()
        }

    def marks(self) -> list[Mark]:
        """Trace marks: the loop-lag counter track and one instant per report.

        A run whose loop was never blocked past the threshold leaves no marks
        (a flat line would prove no more than the absence of reports).
        """
        if not self.reports:
            return []
        pid, host = os.getpid(), hostname()
        out = [
            Mark(
                "counter", LAG_TRACK, s.time, pid, host, value=round(s.lag_s * 1e3, 3), cat="lag_ms"
            )
            for s in self.samples
        ]
        out += [
            Mark(
                "instant",
                "loop blocked",
                r.start,
                pid,
                host,
                end=r.end,
                value=r.lag_s,
                cat="watchdog",
                args={
                    "lag_ms": round(r.lag_s * 1e3, 3),
                    "nodes": list(r.nodes),
                    "culprit": r.culprit,
                    "where": r.where,
                },
            )
            for r in self.reports
        ]
        return out


def _task() -> asyncio.Task[Any] | None:
    """The task running now; None off a loop (a sync test: the frame match still works)."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


__all__ = [
    "DEFAULT_INTERVAL_S",
    "DEFAULT_THRESHOLD_S",
    "BlockReport",
    "LagSample",
    "LoopGuard",
    "LoopWatchdog",
    "Share",
]

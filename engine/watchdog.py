"""The event-loop guard: measures loop lag during a run and names what blocked it.

::

    loop thread                                   sampler thread
    -----------                                   --------------
    monitor task: beat; sleep(interval); beat     every interval: is the beat stale?
        lag = late wake-up - interval               stale > interval + threshold/2:
        lag >= threshold:                             the loop is blocked *now*; note
          report(episode the sampler noted)           who runs (current task -> registry
          -> LoopBlocked event + warning              node, else node code on the loop's
                                                      stack, else "other code"), where,
                                                      and the loop thread's CPU clock
    scheduler: with watchdog.running(node): ...  (registry of calls on the loop)

Why two threads of evidence: a blocked loop cannot observe itself. The
monitor task only measures the lag once the loop runs again, and by then the
culprit has often returned (an ``async def`` that burns 300 ms and finishes
leaves the registry before the monitor wakes). So a helper thread samples
while the loop is stuck and records who was running at that moment; the
monitor, back on the loop, joins the two and emits the event there (event
sinks are not thread-safe). The sampler keeps sampling while the block
lasts, so one long block made of several things (a node burning CPU, then
the process pool starting its workers on the loop thread) is split into
shares, each with its time, its CPU and where it was. If the sampler could
not see the episode (a C call that holds the GIL for its whole length), the
report falls back to the nodes registered on the loop during the lag window.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import inspect
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Any, Literal

from .events import LoopBlocked
from .lanes.worker import hostname
from .logs import get_logger
from .marks import Mark
from .profile import Blame

log = get_logger("engine.watchdog")

Emit = Callable[[Any], None]
Culprit = Literal["task", "frame", "on_loop", "none"]

DEFAULT_THRESHOLD_S = 0.05
DEFAULT_INTERVAL_S = 0.01
LAG_TRACK = "loop lag (ms)"


def runs_on_loop(lane: str, mode: str, *, is_coroutine: bool) -> bool:
    """True when a call on ``lane`` in ``mode`` executes on the event loop's thread.

    Mirrors ``LaneRunner.call``: coroutines of the io lane, the inline lane,
    and plain functions in ``sequential`` mode run on the loop.
    """
    if lane == "io" and is_coroutine:
        return True
    if lane == "cpu" and mode == "parallel":
        return False
    return lane == "inline" or (mode == "sequential" and not is_coroutine)


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
    """One episode of a blocked loop.

    ``nodes`` are the culprits, most time first; ``culprit`` says how they
    were found: ``task`` (the task executing on the loop was a registered
    node call), ``frame`` (a registered node's code was on the loop thread's
    stack), ``on_loop`` (fallback: every node call on the loop during the
    window), or ``none``. ``shares`` split the lag between what the sampler
    saw. ``cpu_s`` is the CPU the loop thread used in the window: near
    ``lag_s`` means CPU work, near zero a blocking wait (sleep, sync I/O).
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


@dataclass
class _Entry:
    node: str
    index: int
    task: asyncio.Task[Any] | None
    codes: frozenset[CodeType]
    start: float  # perf_counter


class _Running:
    """One registration in the watchdog's registry (a plain class: it runs per call)."""

    __slots__ = ("_entry", "_key", "_wd")

    def __init__(self, wd: LoopWatchdog, entry: _Entry) -> None:
        self._wd = wd
        self._entry = entry
        self._key = -1

    def __enter__(self) -> None:
        self._key = self._wd._enter(self._entry)

    def __exit__(self, *exc: object) -> None:
        self._wd._leave(self._key, self._entry)


class _Episode:
    """What the sampler saw while one beat was stale: time and CPU per culprit.

    Invariant: only touched under the watchdog's ``_lock``; ``beat`` ties it
    to the one monitor tick whose wake-up will report it.
    """

    def __init__(self, beat: float, t: float, cpu: float | None, queued: float) -> None:
        self.beat = beat
        self._t = t
        self._cpu = cpu
        self._queued = queued
        # (nodes, how) -> [seconds, loop CPU seconds (None when unknown), where, queued]
        self.parts: dict[tuple[tuple[str, ...], Culprit], list[Any]] = {}

    def add(
        self,
        nodes: tuple[str, ...],
        how: Culprit,
        where: str,
        t: float,
        cpu: float | None,
        queued: float,
    ) -> None:
        """Charge the time (and loop CPU) since the previous sample to what runs now."""
        part = self.parts.setdefault((nodes, how), [0.0, 0.0, where, 0.0])
        part[0] += max(0.0, t - self._t)
        if cpu is None or self._cpu is None or part[1] is None:
            part[1] = None
        else:
            part[1] += max(0.0, cpu - self._cpu)
        part[3] += max(0.0, queued - self._queued)
        self._t, self._cpu, self._queued = t, cpu, queued


class _State(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    CLOSED = "closed"


class LoopWatchdog:
    """Watches one event loop for one run.

    Use as ``async with LoopWatchdog(emit=...) as wd:``; the scheduler wraps
    every call that runs on the loop in ``with wd.running(node, fn=fn):``.

    Invariant: the monitor task and sampler thread exist exactly while
    RUNNING; ``_entries`` holds the calls inside ``running()`` right now and
    ``_recent`` the last ones that left it; ``reports`` and ``samples`` only
    grow and are only appended on the loop thread. ``_lock`` guards
    ``_entries``, ``_recent`` and ``_episode``, the state shared with the sampler.
    """

    def __init__(
        self,
        *,
        threshold_s: float = DEFAULT_THRESHOLD_S,
        interval_s: float = DEFAULT_INTERVAL_S,
        run_id: str = "",
        emit: Emit | None = None,
        sampler: bool = True,
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
        self._state = _State.CREATED
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        self._codes: dict[Any, frozenset[CodeType]] = {}  # per node function, for the run
        self._recent: deque[tuple[_Entry, float]] = deque(maxlen=256)
        self._episode: _Episode | None = None
        self._next_id = 0
        self._beat: float | None = None
        self._calm: tuple[float, float | None, float] = (0.0, None, 0.0)  # last calm reading
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._loop_clock: int | None = None  # CPU clock of the loop thread (Linux)
        self._loop_schedstat = ""  # its /proc schedstat: run-queue delay (Linux)
        self._monitor: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
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
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        try:
            self._loop_clock = time.pthread_getcpuclockid(self._loop_thread)
        except (AttributeError, OSError):  # not on this platform: shares carry no CPU
            self._loop_clock = None
        self._loop_schedstat = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        self._state = _State.RUNNING
        self.samples.append(LagSample(time.time(), 0.0))
        self._monitor = self._loop.create_task(self._watch(), name="engine-watchdog")
        if self._use_sampler:
            self._thread = threading.Thread(
                target=self._sample_forever, name="engine-watchdog-sampler", daemon=True
            )
            self._thread.start()

    async def aclose(self) -> None:
        """Stop watching; idempotent. Never swallows a cancellation of the caller."""
        if self._state is not _State.RUNNING:
            self._state = _State.CLOSED
            return
        self._state = _State.CLOSED
        self._stop.set()
        if self._thread is not None:
            # The sampler waits on _stop, so it leaves at once.
            self._thread.join(timeout=1.0)
        task, self._monitor = self._monitor, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # we were cancelled too: propagate
        if self.samples and self.samples[-1].lag_s != 0.0:
            self.samples.append(LagSample(time.time(), 0.0))

    # -- the registry the scheduler updates ----------------------------------

    def running(
        self, node: str, *, index: int = -1, fn: Callable[..., Any] | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """Mark a node call as running on the loop for the duration of the block."""
        try:
            task: asyncio.Task[Any] | None = asyncio.current_task()
        except RuntimeError:  # not on a loop (a sync test): the frame match still works
            task = None
        try:
            codes = self._codes[fn]
        except KeyError:
            codes = self._codes[fn] = _codes_of(fn)
        except TypeError:  # an unhashable callable: not cached
            codes = _codes_of(fn)
        return _Running(self, _Entry(node, index, task, codes, time.perf_counter()))

    def _enter(self, entry: _Entry) -> int:
        with self._lock:
            key = self._next_id
            self._next_id += 1
            self._entries[key] = entry
        return key

    def _leave(self, key: int, entry: _Entry) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self._recent.append((entry, time.perf_counter()))

    def on_loop(self) -> list[str]:
        """Names of the node calls registered as running on the loop now."""
        with self._lock:
            return sorted(e.node for e in self._entries.values())

    # -- evidence ------------------------------------------------------------

    def blamed(self) -> dict[str, Blame]:
        """Blocked seconds (and the loop's CPU meanwhile) per node, for the profile.

        Only precise evidence counts: shares the sampler tied to a node. The
        CPU of a share whose CPU is unknown is estimated from the whole block.
        """
        out: dict[str, list[float]] = {}
        for r in self.reports:
            if r.culprit not in ("task", "frame"):
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

    # -- the loop side ---------------------------------------------------

    async def _watch(self) -> None:
        interval = self.interval_s
        while True:
            t0 = time.perf_counter()
            c0 = time.thread_time()
            w0 = time.time()
            self._beat = t0
            await asyncio.sleep(interval)
            t1 = time.perf_counter()
            self._beat = t1
            lag = t1 - t0 - interval
            if lag >= self.threshold_s:
                self._report(t0, w0 + interval, lag, time.thread_time() - c0)

    def _report(self, beat: float, start: float, lag: float, cpu: float) -> None:
        with self._lock:
            episode = self._episode if self._episode and self._episode.beat == beat else None
            self._episode = None
            parts = dict(episode.parts) if episode is not None else {}
            fallback = sorted(
                {e.node for e in self._entries.values()}
                | {e.node for e, left in self._recent if left >= beat}
            )
        report = self._build_report(start, lag, min(cpu, lag), parts, tuple(fallback))
        nodes, culprit, where = report.nodes, report.culprit, report.where
        self.reports.append(report)
        self.samples.append(LagSample(start, lag))
        self.samples.append(LagSample(report.end, 0.0))
        # Warn when a node is pinned down as the culprit or the loop thread was
        # busy computing; a lag with neither is most often the machine running
        # something else (a preempted loop), which is no bug of the user's.
        pinned = culprit in ("task", "frame") or report.cpu_s >= 0.5 * lag
        (log.warning if pinned else log.debug)(
            "loop_blocked",
            run_id=self.run_id,
            lag_ms=round(lag * 1e3, 1),
            cpu_ms=round(report.cpu_s * 1e3, 1),
            nodes=list(nodes),
            culprit=culprit,
            where=where,
            hint=report.message(),
        )
        try:
            self._emit(
                LoopBlocked(run_id=self.run_id, time=time.time(), lag_s=lag, nodes=list(nodes))
            )
        except Exception:
            # Observers cannot break a run.
            if not self._emit_failed:
                self._emit_failed = True
                log.exception("loop_blocked_sink_failed", run_id=self.run_id)

    @staticmethod
    def _build_report(
        start: float,
        lag: float,
        cpu: float,
        parts: dict[tuple[tuple[str, ...], Culprit], list[Any]],
        fallback: tuple[str, ...],
    ) -> BlockReport:
        """Scale the sampled parts to the measured lag, most time first."""
        sampled = sum(p[0] for p in parts.values())
        shares: list[Share] = []
        how: Culprit = "none"
        for (nodes, kind), (seconds, cpu_s, where, queued) in sorted(
            parts.items(), key=lambda kv: -kv[1][0]
        ):
            scale = lag / sampled if sampled > 0 else 0.0
            for n in nodes or (None,):
                k = len(nodes) or 1
                blocked = seconds * scale / k
                c = None if cpu_s is None else min(cpu_s / k, blocked)
                shares.append(Share(n, blocked, c, where, min(queued / k, blocked)))
            if nodes and how == "none":
                how = kind
        named = tuple(dict.fromkeys(s.node for s in shares if s.node is not None))
        where = shares[0].where if shares else ""
        if not named:
            named, how = fallback, ("on_loop" if fallback else "none")
            shares = [s for s in shares if s.node is not None]
        return BlockReport(start, lag, cpu, named, how, where, tuple(shares))

    # -- the sampler thread ----------------------------------------------

    def _sample_forever(self) -> None:
        trigger = self.interval_s + self.threshold_s / 2
        while not self._stop.wait(self.interval_s):
            beat = self._beat
            now = time.perf_counter()
            if beat is None or now - beat < trigger:
                self._calm = (now, self._loop_cpu(), self._loop_queued())
                continue
            self._sample(beat)

    def _loop_queued(self) -> float:
        """Seconds the loop thread has waited on a run queue (Linux schedstat), else 0."""
        try:
            with open(self._loop_schedstat, "rb") as f:
                return int(f.read().split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0

    def _loop_cpu(self) -> float | None:
        if self._loop_clock is None:
            return None
        try:
            return time.clock_gettime(self._loop_clock)
        except OSError:  # the loop thread is gone
            return None

    def _sample(self, beat: float) -> None:
        """Note who is running on the loop right now (called while it is blocked)."""
        with self._lock:
            entries = list(self._entries.values())
        task = _current_task_of(self._loop)
        by_task = tuple(sorted({e.node for e in entries if task is not None and e.task is task}))
        frame = sys._current_frames().get(self._loop_thread or -1)
        on_stack = _codes_on_stack(frame)
        by_frame = tuple(sorted({e.node for e in entries if e.codes & on_stack}))
        where = _where(frame)
        del frame  # do not keep the loop thread's frames alive
        how: Culprit
        if by_task:
            # Several calls of one task (sequential mode nests none, but be
            # exact): prefer those whose code is on the stack.
            nodes, how = tuple(n for n in by_task if n in by_frame) or by_task, "task"
        elif by_frame:
            nodes, how = by_frame, "frame"
        else:
            nodes, how = (), "none"
        now, cpu, queued = time.perf_counter(), self._loop_cpu(), self._loop_queued()
        with self._lock:
            episode = self._episode
            if episode is None or episode.beat != beat:
                calm_t, calm_cpu, calm_queued = self._calm
                episode = _Episode(beat, max(calm_t, beat), calm_cpu, calm_queued)
                self._episode = episode
            episode.add(nodes, how, where, now, cpu, queued)


# -- helpers ------------------------------------------------------------------


def _codes_of(fn: Callable[..., Any] | None) -> frozenset[CodeType]:
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


def _current_task_of(loop: asyncio.AbstractEventLoop | None) -> asyncio.Task[Any] | None:
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


def _codes_on_stack(frame: FrameType | None, limit: int = 200) -> frozenset[CodeType]:
    codes: set[CodeType] = set()
    while frame is not None and limit > 0:
        codes.add(frame.f_code)
        frame = frame.f_back
        limit -= 1
    return frozenset(codes)


def _where(frame: FrameType | None) -> str:
    """The innermost frame of the loop thread outside asyncio and this module."""
    here = os.path.dirname(asyncio.__file__)
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(here) and path != __file__:
            return f"{frame.f_code.co_name} ({os.path.basename(path)}:{frame.f_lineno})"
        frame = frame.f_back
    return ""


__all__ = [
    "DEFAULT_INTERVAL_S",
    "DEFAULT_THRESHOLD_S",
    "BlockReport",
    "LagSample",
    "LoopWatchdog",
    "Share",
    "runs_on_loop",
]

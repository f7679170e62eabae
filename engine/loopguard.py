"""One guard per event loop: the monitor and the sampler every run on the loop shares.

::

    loop thread                                   sampler thread (one per loop)
    -----------                                   ---------------------------
    monitor task (one per loop):                  when the beat would turn stale: is it?
      beat; sleep(interval); wake                   stale > interval + threshold/2:
      lag = late wake-up - interval                   the loop is blocked *now*; note
      lag >= a run's threshold:                       who runs (current task -> registry
        deliver the episode the sampler noted         entry -> (run, node), else node code
        to each run it concerns                       on the loop's stack, else "other
    run end (LoopWatchdog.flush):                     code"), where, and the loop
      the beat is late already? measure it now,       thread's CPU clock
      deliver to that run before RunFinished
    dispatcher: watchdog.enter/leave per call     (registry of calls on the loop, by run)

Why two threads of evidence: a blocked loop cannot observe itself. The
monitor task only measures the lag once the loop runs again, and by then the
culprit has often returned (an ``async def`` that burns 300 ms and finishes
leaves the registry before the monitor wakes). So a helper thread samples
while the loop is stuck and records who was running at that moment; the
monitor, back on the loop, joins the two and hands each run its report
there (event sinks are not thread-safe). The sampler keeps sampling while
the block lasts, so one long block made of several things (a node burning
CPU, then the process pool starting its workers on the loop thread) is split
into shares, each with its time, its CPU and where it was. If the sampler
could not see the episode (a C call that holds the GIL for its whole
length), a run's report falls back to its nodes registered on the loop
during the lag window.

Who hears of a block, when several runs share the loop: the runs whose
nodes the sampler caught on the loop, each with its own shares (and the
time spent in no node's code); when no node was caught, every run attached
to the loop during the block, each naming its own calls on the loop in the
window (or none). A run that ends while the loop's beat is late reports the
block it measured to itself (``flush``) before it finishes: the monitor
would wake only after the run is gone.

The loops' guards live in the ``PerLoop`` registry ``GUARDS`` (process-wide
state, documented in ``engine.perloop``): created lazily by a loop's first
run, closed ``GUARD_LINGER_S`` after its last one if no run came meanwhile,
or by the sampler when it finds the loop closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import itertools
import os
import sys
import threading
import time
import weakref
from collections import Counter, deque
from dataclasses import dataclass
from types import CodeType
from typing import Any, NamedTuple, Protocol

from .blocks import (
    BlockReport,
    Culprit,
    Episode,
    Who,
    build_report,
    codes_on_stack,
    current_task_of,
    owners,
    where,
)
from .blocks import __file__ as _blocks_file
from .perloop import PerLoop
from .resources import Clock, SystemClock

#: Calls that left the registry, kept per run for the fallback window.
RECENT_PER_RUN = 256


class Watcher(Protocol):
    """What the guard needs of a run it watches (``LoopWatchdog``)."""

    threshold_s: float
    interval_s: float

    def deliver(self, report: BlockReport, *, runs_told: int, lead: bool) -> None: ...


@dataclass(frozen=True)
class Beat:
    """One heartbeat of the monitor: the wake-up it expects, and the clocks when it slept."""

    t: float  # the guard's clock.monotonic()
    cpu: float  # the loop thread's CPU time (time.thread_time on the loop)
    wall: float  # the guard's clock.time()
    interval: float  # the sleep that follows; late past t + interval is lag
    queued: float = 0.0  # the loop thread's run-queue wait so far (Linux schedstat)

    def lag(self, now: float) -> float:
        return now - self.t - self.interval


class _Entry(NamedTuple):
    """A node call registered as running on the loop (one per call: a named tuple)."""

    owner: int
    node: str
    send_index: int
    task: asyncio.Task[Any] | None
    codes: frozenset[CodeType]


class _Running:
    """One registration in the guard's registry, as a context manager."""

    __slots__ = ("_entry", "_guard", "_key")

    def __init__(self, guard: LoopGuard, entry: _Entry) -> None:
        self._guard = guard
        self._entry = entry
        self._key = -1

    def __enter__(self) -> None:
        self._key = self._guard.enter(self._entry)

    def __exit__(self, *exc: object) -> None:
        self._guard.leave(self._key)


class _State(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    CLOSED = "closed"


class LoopGuard:
    """Watches one event loop for every run attached to it.

    Runs attach through ``LoopWatchdog`` (normally to the loop's shared
    guard, through ``GUARDS``); a guard built by hand, with a
    ``FakeClock`` the test drives, serves tests. ``clock`` times the beats,
    the monitor's sleeps, the samples and the registry's windows; the loop
    thread's CPU and run-queue clocks are read as they are.

    Invariant: the monitor task exists exactly while RUNNING, the sampler
    thread while RUNNING and some attached run asked for it; ``_watchers``
    are the attached runs by key, ``_recent`` holds each one's last calls
    that left the registry, ``_entries`` the calls registered now (between
    ``enter`` and ``leave``). ``_lock`` guards ``_watchers``, ``_episode``
    and ``_flushed``, the state shared with the sampler. ``_entries`` and
    ``_recent`` are written only on the loop's thread, one dict or deque
    operation at a time (atomic under the GIL), without the lock: a call on
    the loop registers on every call, and the sampler reads ``_entries``
    through one ``list(...)`` of its values, a single step the loop thread
    cannot interleave with (CPython's GIL).
    ``_interval``/``_threshold`` are the smallest of the attached runs'
    (``_intervals``/``_thresholds`` count the runs asking for each value).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        clock: Clock | None = None,
    ) -> None:
        self._loop_ref = weakref.ref(loop)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._lock = threading.Lock()
        #: Node function -> the code objects its call runs first (``blocks.codes_of``), for
        #: every run on this loop (the watchdogs' cache; a function that goes, goes).
        self.codes: weakref.WeakKeyDictionary[Any, frozenset[CodeType]] = (
            weakref.WeakKeyDictionary()
        )
        self._state = _State.CREATED
        self._watchers: dict[int, Watcher] = {}
        self._entries: dict[int, _Entry] = {}
        self._entry_keys = itertools.count()
        self._recent: dict[int, deque[tuple[_Entry, float]]] = {}
        self._flushed: dict[int, float] = {}  # run key -> the beat its end reported
        self._led: float | None = None  # the last beat whose unpinned block a run announced
        self._next_key = 0
        self._episode: Episode | None = None
        self._beat: Beat | None = None
        self._interval = 0.0
        self._threshold = 0.0
        # How many attached runs ask for each sampling interval and threshold.
        self._intervals: Counter[float] = Counter()
        self._thresholds: Counter[float] = Counter()
        self._loop_thread: int | None = None
        self._loop_clock: int | None = None  # CPU clock of the loop thread (Linux)
        # Its /proc schedstat (run-queue delay, Linux), kept open while the guard runs:
        # a read at a known offset costs ~1 us where opening it again costs ~10. The
        # closer closes it at aclose, or when the guard is dropped without one.
        self._loop_schedstat: int | None = None
        self._schedstat_closer: weakref.finalize[Any, Any] | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return f"<LoopGuard {self._state.value} runs={len(self._watchers)}>"

    @property
    def clock(self) -> Clock:
        """The clock the guard times beats, samples and the registry's windows with."""
        return self._clock

    @property
    def runs(self) -> int:
        """How many runs are attached now."""
        return len(self._watchers)

    @property
    def sampling(self) -> bool:
        """True while the sampler thread runs."""
        return self._thread is not None and self._thread.is_alive()

    # -- lifecycle ---------------------------------------------------------

    def attach(self, watcher: Watcher, *, sampler: bool = True) -> int:
        """Watch the loop for ``watcher``'s run (from a coroutine on the loop); its key.

        The first run starts the monitor task, and the first that asks for it
        the sampler thread; both serve every run attached.
        """
        if self._state is _State.CLOSED:
            raise RuntimeError(f"{self!r} is closed; runs attach to the loop's open guard")
        with self._lock:
            key = self._next_key
            self._next_key += 1
            self._watchers[key] = watcher
            self._recent[key] = deque(maxlen=RECENT_PER_RUN)
            self._intervals[watcher.interval_s] += 1
            self._thresholds[watcher.threshold_s] += 1
            self._retune()
        if self._state is _State.CREATED:
            self._start()
        if sampler and self._thread is None:
            self._thread = threading.Thread(
                target=self._sample_forever, name="engine-loop-sampler", daemon=True
            )
            self._thread.start()
        return key

    def detach(self, key: int) -> None:
        """Stop watching for run ``key`` (its calls have all left the registry)."""
        with self._lock:
            watcher = self._watchers.pop(key, None)
            self._recent.pop(key, None)
            self._flushed.pop(key, None)
            if watcher is not None:
                for counts, value in (
                    (self._intervals, watcher.interval_s),
                    (self._thresholds, watcher.threshold_s),
                ):
                    counts[value] -= 1
                    if counts[value] <= 0:
                        del counts[value]
            if self._watchers:
                self._retune()

    def _retune(self) -> None:
        # Under _lock: sample as finely as the most demanding run asks (the
        # counts hold few distinct values, however many runs are attached).
        self._interval = min(self._intervals)
        self._threshold = min(self._thresholds)

    def _start(self) -> None:
        loop = self._loop_ref()
        assert loop is not None  # attach runs on it
        self._loop_thread = threading.get_ident()
        try:
            self._loop_clock = time.pthread_getcpuclockid(self._loop_thread)
        except (AttributeError, OSError):  # not on this platform: shares carry no CPU
            self._loop_clock = None
        self._open_schedstat(f"/proc/self/task/{threading.get_native_id()}/schedstat")
        self._state = _State.RUNNING
        self._beat = self._new_beat()
        # A task of the loop, not of the run that happened to start it: it
        # must not inherit that run's context, and outlives it.
        self._monitor = contextvars.Context().run(
            loop.create_task, self._watch(), name="engine-loop-guard"
        )

    async def aclose(self) -> None:
        """Stop the monitor and the sampler; idempotent. Never swallows the caller's
        cancellation."""
        if self._state is not _State.RUNNING:
            self._state = _State.CLOSED
            return
        self._state = _State.CLOSED
        if self._stop_sampler():
            self._close_schedstat()
        task, self._monitor = self._monitor, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # we were cancelled too: propagate

    def _stop_sampler(self) -> bool:
        """Stop the sampler thread; whether it has ended (it may read the schedstat file
        until then: a sampler that outlives the join keeps the guard, and so the file, alive)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            # The sampler waits on _stop, so it leaves at once.
            thread.join(timeout=1.0)
            return not thread.is_alive()
        return thread is None

    # -- the registry the dispatcher updates ---------------------------------

    def running(
        self,
        owner: int,
        node: str,
        *,
        index: int = -1,
        task: asyncio.Task[Any] | None = None,
        codes: frozenset[CodeType] = frozenset(),
    ) -> contextlib.AbstractContextManager[None]:
        """Mark run ``owner``'s node call as running on the loop for the block."""
        return _Running(self, _Entry(owner, node, index, task, codes))

    def enter(self, entry: _Entry) -> int:
        """Register a call as running on the loop; the key ``leave`` takes.

        The dispatcher's path (one pair per call on the loop): no context
        manager object, one lock each way.
        """
        key = next(self._entry_keys)
        self._entries[key] = entry
        return key

    def leave(self, key: int) -> None:
        """The call registered under ``key`` left the loop (kept a while for the fallback)."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            recent = self._recent.get(entry.owner)
            if recent is not None:
                recent.append((entry, self._clock.monotonic()))

    def on_loop(self, owner: int) -> list[str]:
        """Names of run ``owner``'s node calls registered as running on the loop now."""
        return sorted(e.node for e in list(self._entries.values()) if e.owner == owner)

    # -- the loop side ---------------------------------------------------

    def _new_beat(self) -> Beat:
        clock = self._clock
        return Beat(
            clock.monotonic(), time.thread_time(), clock.time(), self._interval, self._loop_queued()
        )

    async def _watch(self) -> None:
        while True:
            beat = self._beat
            assert beat is not None
            await self._clock.sleep(beat.t + beat.interval - self._clock.monotonic())
            now = self._clock.monotonic()
            self._beat = self._new_beat()  # first: the sampler judges staleness by it
            lag = beat.lag(now)
            if lag >= self._threshold:
                self._report(beat, lag, time.thread_time() - beat.cpu)

    def flush(self, owner: int) -> None:
        """Report to run ``owner`` the block its loop is in the middle of, if any.

        Called on the loop as the run ends: the monitor's beat is late when
        the run's last node blocked the loop and the monitor has not run
        since. The lag measured so far is reported to the run now (when the
        sampler pinned it on the run's nodes, or on nobody); the monitor,
        when it wakes, reports the whole block to the runs still attached.
        """
        beat = self._beat
        if beat is None or self._state is not _State.RUNNING:
            return
        lag = beat.lag(self._clock.monotonic())
        if lag >= self._threshold:
            self._report(beat, lag, time.thread_time() - beat.cpu, only=owner)

    def _report(self, beat: Beat, lag: float, cpu: float, only: int | None = None) -> None:
        """Hand each run concerned its report of the episode of ``beat`` (on the loop)."""
        with self._lock:
            episode = self._episode if self._episode and self._episode.beat == beat.t else None
            if only is None:
                self._episode = None  # the monitor's wake-up ends the episode
            parts = dict(episode.parts) if episode is not None else {}
            pinned = owners(parts)
            keys = [only] if only is not None else list(pinned or self._watchers)
            # The nodes each run had on the loop in the window, in one pass.
            window: dict[int, set[str]] = {}
            for e in list(self._entries.values()):
                window.setdefault(e.owner, set()).add(e.node)
            targets = []
            for key in keys:
                watcher = self._watchers.get(key)
                if watcher is None or lag < watcher.threshold_s:
                    continue
                if pinned and key not in pinned:
                    continue  # caught other runs' nodes: theirs to hear
                if self._flushed.get(key) == beat.t:
                    continue  # its end reported this block already
                if only is not None:
                    self._flushed[key] = beat.t
                nodes = window.get(key, set())
                nodes |= {e.node for e, left in self._recent.get(key, ()) if left >= beat.t}
                targets.append((key, watcher, tuple(sorted(nodes))))
        # One block of no node, told to many runs, is announced by one of them
        # (the first told: at a run's end or at the monitor's wake-up).
        lead = not pinned and self._led != beat.t
        if lead and targets:
            self._led = beat.t
        start = beat.wall + beat.interval
        for i, (key, watcher, fallback) in enumerate(targets):
            report = build_report(key, start, lag, min(cpu, lag), parts, fallback)
            watcher.deliver(report, runs_told=len(targets), lead=lead and i == 0)

    # -- the sampler thread ----------------------------------------------

    def _sample_forever(self) -> None:
        # Wakes when the beat would turn stale, not every interval: a wake-up costs
        # ~0.1 ms of CPU on a VM, and a calm loop's beat is renewed every interval.
        wait = self._interval
        while not self._stop.wait(wait):
            loop = self._loop_ref()
            if loop is None or loop.is_closed():
                self._loop_closed(loop)
                return
            del loop  # never keep the loop alive from here
            wait = self.sample()

    def _loop_closed(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """The loop closed under attached runs: nothing will wake the monitor again."""
        self._state = _State.CLOSED
        self._close_schedstat()
        self._monitor = None  # a task of a closed loop; dropping it frees the loop
        if loop is not None:
            GUARDS.discard(loop, self)

    def sample(self) -> float:
        """One look at the loop: calm, or blocked (then note who runs on it); the
        seconds until the next look is worth taking.

        Calm: until the current beat would turn stale (its wake-up ``threshold/2``
        late), which is the earliest a block can be seen (at most 4 intervals,
        so a run that attaches with a smaller threshold is heard soon). Blocked:
        one interval, to keep sharing the block out among what runs. The
        sampler thread calls it; a test can call it on the loop's own thread,
        with its clock advanced, to stand for a sample taken while the loop was
        stuck.
        """
        beat = self._beat
        now = self._clock.monotonic()
        if beat is None:
            return self._interval
        stale_at = beat.t + beat.interval + self._threshold / 2
        if now < stale_at:
            return min(max(stale_at - now, 0.001), 4 * self._interval)
        self._sample(beat)
        return self._interval

    def _open_schedstat(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)  # (not inherited by a child: PEP 446)
        except OSError:  # not Linux: no run-queue readings
            return
        self._loop_schedstat = fd
        self._schedstat_closer = weakref.finalize(self, os.close, fd)
        # Not at interpreter exit, where a daemon thread may still read it: the
        # process's end closes it.
        self._schedstat_closer.atexit = False

    def _close_schedstat(self) -> None:
        closer, self._schedstat_closer = self._schedstat_closer, None
        self._loop_schedstat = None
        if closer is not None:
            closer()  # (once: a finalizer called again does nothing)

    def _loop_queued(self) -> float:
        """Seconds the loop thread has waited on a run queue (Linux schedstat), else 0."""
        fd = self._loop_schedstat
        if fd is None:
            return 0.0
        try:
            return int(os.pread(fd, 128, 0).split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0

    def _loop_cpu(self) -> float | None:
        if self._loop_clock is None:
            return None
        try:
            return time.clock_gettime(self._loop_clock)
        except OSError:  # the loop thread is gone
            return None

    def _sample(self, beat: Beat) -> None:
        """Note who is running on the loop right now (called while it is blocked)."""
        with self._lock:
            entries = [e for e in list(self._entries.values()) if e.owner in self._watchers]
        task = current_task_of(self._loop_ref())
        by_task = {(e.owner, e.node) for e in entries if task is not None and e.task is task}
        frame = sys._current_frames().get(self._loop_thread or -1)
        on_stack = codes_on_stack(frame)
        by_frame = {(e.owner, e.node) for e in entries if e.codes & on_stack}
        place = where(frame, __file__, _blocks_file)
        del frame  # do not keep the loop thread's frames alive
        how: Culprit
        who: Who
        if by_task:
            # Several calls of one task (sequential mode nests none, but be
            # exact): prefer those whose code is on the stack.
            who, how = tuple(sorted(by_task & by_frame or by_task)), "task"
        elif by_frame:
            # The same node of two runs shares its code: both are named.
            who, how = tuple(sorted(by_frame)), "frame"
        else:
            who, how = (), "none"
        now, cpu, queued = self._clock.monotonic(), self._loop_cpu(), self._loop_queued()
        with self._lock:
            episode = self._episode
            if episode is None or episode.beat != beat.t:
                # From the beat: the last moment the loop was seen free, its clocks then.
                episode = Episode(
                    beat.t, beat.t, beat.cpu if cpu is not None else None, beat.queued
                )
                self._episode = episode
            episode.add(who, how, place, now, cpu, queued)


#: A guard whose last run ended stays this long, idle, for the loop's next run.
GUARD_LINGER_S = 2.0

#: The loops' shared guards: ``GUARDS.acquire(loop)``, ``await GUARDS.release(loop,
#: guard)``, ``GUARDS.peek(loop)`` (see the module docstring and engine.perloop). A
#: guard lingers ``GUARD_LINGER_S`` after its loop's last run: runs one after another
#: share it instead of each starting a sampler thread (the start alone took 0.1-1 ms).
GUARDS: PerLoop[LoopGuard] = PerLoop(LoopGuard, linger_s=GUARD_LINGER_S)


__all__ = ["GUARDS", "Beat", "LoopGuard", "Watcher"]

"""Run-level resource budgets: concurrency limits, token-bucket rates, lane caps.

::

    add_node(..., resources={"openai": 1})        arun(..., limits={"openai": 8},
                    |                                      rates={"openai": "60/min"},
                    v                                      max_concurrency={"cpu": 4})
    async with budgets.acquire({"openai": 1}, lane="io", node="ask"):   <- dispatcher
        1. a slot of each limited resource (sorted by name: no deadlock between
           calls that need several),
        2. a slot of the lane's max_concurrency,
        3. tokens of each rated resource (GCRA: FIFO reservations, no burst
           beyond ``burst``),
        then the call runs; slots are released on the way out, always.

Every acquisition that had to wait leaves a ``BudgetWait`` (for the trace);
the clock is injectable (``FakeClock``), so rate tests take no real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from .errors import GraphError
from .marks import Mark
from .procs import hostname

LANE_NAMES = ("io", "thread", "cpu", "inline")


class BudgetError(GraphError):
    """A resource budget is misconfigured (a bad rate, a limit a node can never fit)."""


# -- clocks -----------------------------------------------------------------------


class Clock(Protocol):
    """Time as the budgets see it: ``monotonic`` for waiting, ``time`` for the trace."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clocks and ``asyncio.sleep``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """Virtual time for tests: ``sleep`` yields once, then jumps time to its deadline.

    Concurrent sleepers each move time to their own deadline (never back),
    so N tasks sleeping until t1 < t2 < ... leave the clock at the last one.

    Invariant: ``monotonic()`` never decreases.
    """

    def __init__(self, start: float = 0.0, wall_offset: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_offset

    def __repr__(self) -> str:
        return f"<FakeClock t={self._now:.6f}>"

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._wall_offset + self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go back")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        deadline = self._now + max(0.0, seconds)
        await asyncio.sleep(0)
        self._now = max(self._now, deadline)


# -- rates ------------------------------------------------------------------------

_UNITS: Mapping[str, float] = MappingProxyType({
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0,
    "d": 86400.0, "day": 86400.0,
})  # fmt: skip
_RATE = re.compile(
    r"^\s*(?P<count>\d+(?:\.\d+)?)\s*/\s*(?P<n>\d+(?:\.\d+)?)?\s*(?P<unit>[a-z]+)\s*$"
)


@dataclass(frozen=True)
class Rate:
    """``count`` calls per ``period_s`` seconds, evenly spaced, at most ``burst`` at once."""

    count: float
    period_s: float
    burst: int = 1

    def __post_init__(self) -> None:
        if not (self.count > 0 and math.isfinite(self.count)):
            raise BudgetError(f"a rate needs a count > 0, got {self.count!r}")
        if not (self.period_s > 0 and math.isfinite(self.period_s)):
            raise BudgetError(f"a rate needs a period > 0 seconds, got {self.period_s!r}")
        if not isinstance(self.burst, int) or self.burst < 1:
            raise BudgetError(f"a rate's burst must be an integer >= 1, got {self.burst!r}")

    @property
    def interval_s(self) -> float:
        """Seconds between two calls at the steady rate."""
        return self.period_s / self.count

    def __str__(self) -> str:
        burst = f" burst {self.burst}" if self.burst > 1 else ""
        return f"{self.count:g}/{self.period_s:g}s{burst}"


def parse_rate(value: str | Rate, *, name: str = "rate") -> Rate:
    """``"60/min"``, ``"5/s"``, ``"1000/hour"``, ``"10/30s"`` -> ``Rate``; strict.

    Units: s, sec, second, min, minute, h, hr, hour, d, day (plural ``s``
    allowed). ``m`` is refused: minutes or milliseconds? say ``min``.
    """
    if isinstance(value, Rate):
        return value
    if not isinstance(value, str):
        raise BudgetError(
            f"{name}: expected a string like '60/min' or a Rate, got {type(value).__name__}"
        )
    m = _RATE.match(value.lower())
    if m is None:
        raise BudgetError(
            f"{name}: cannot read rate {value!r}; write COUNT/UNIT like '60/min', '5/s' "
            "or '1000/hour' (or COUNT/N UNIT like '10/30s')"
        )
    unit = m["unit"]
    if unit not in _UNITS and unit.endswith("s") and unit[:-1] in _UNITS:
        unit = unit[:-1]
    if unit == "m" or unit == "ms":
        raise BudgetError(
            f"{name}: rate {value!r} uses {m['unit']!r}, which is ambiguous or too fine; "
            "write 'min' for minutes, or a per-second rate"
        )
    if unit not in _UNITS:
        raise BudgetError(
            f"{name}: rate {value!r} has unknown unit {m['unit']!r}; use one of "
            "s, sec, second, min, minute, h, hour, d, day"
        )
    count = float(m["count"])
    n = float(m["n"]) if m["n"] else 1.0
    if count <= 0 or n <= 0:
        raise BudgetError(f"{name}: rate {value!r} must be positive")
    return Rate(count=count, period_s=n * _UNITS[unit])


# -- primitives ---------------------------------------------------------------------


class TokenBucket:
    """A rate limiter: the generic cell rate algorithm, with FIFO reservations.

    Each ``take(n)`` reserves the earliest start that keeps the rate, then
    waits until then; ``burst`` calls may start together after an idle spell.

    Invariant: ``_tat`` (the theoretical arrival time of the next unit at the
    steady rate) only moves forward, except that a cancelled reservation that
    is still the latest gives its time back.
    """

    def __init__(self, rate: Rate, clock: Clock) -> None:
        self.rate = rate
        self.clock = clock
        self._tat = -math.inf

    def __repr__(self) -> str:
        return f"<TokenBucket {self.rate}>"

    def reserve(self, n: int = 1) -> tuple[float, float]:
        """Book ``n`` units: (when the caller may start, the new ``_tat``)."""
        now = self.clock.monotonic()
        t = self.rate.interval_s
        tolerance = (self.rate.burst - 1) * t
        start = max(now, self._tat - tolerance)
        self._tat = max(self._tat, start) + n * t
        return start, self._tat

    async def take(self, n: int = 1) -> float:
        """Wait until ``n`` units may be used; returns the seconds waited."""
        now = self.clock.monotonic()
        start, booked = self.reserve(n)
        if start <= now:
            return 0.0
        try:
            await self.clock.sleep(start - now)
        except BaseException:
            if self._tat == booked:  # nobody booked after us: give the time back
                self._tat -= n * self.rate.interval_s
            raise
        return start - now


class Slots:
    """A fair weighted semaphore: ``limit`` units, waiters served first come first served.

    Invariant: ``0 <= in_use <= limit``; a waiter at the head of ``_waiters``
    is granted as soon as its units fit, and nobody behind it overtakes it.
    """

    def __init__(self, limit: int, name: str = "") -> None:
        if limit < 1:
            raise BudgetError(f"limit of {name!r} must be >= 1, got {limit}")
        self.limit = limit
        self.name = name
        self.in_use = 0
        self.peak = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def __repr__(self) -> str:
        return f"<Slots {self.name} {self.in_use}/{self.limit} waiting={len(self._waiters)}>"

    async def acquire(self, n: int = 1) -> None:
        if n > self.limit:
            raise BudgetError(
                f"{n} units of {self.name!r} can never fit its limit of {self.limit}; "
                "raise the limit or ask for fewer"
            )
        if not self._waiters and self.in_use + n <= self.limit:
            self._grant(n)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        item = (n, fut)
        self._waiters.append(item)
        try:
            await fut
        except BaseException:
            # Cancelled while waiting, or right after being granted (the
            # grant and the cancellation raced): give back what we hold.
            if fut.done() and not fut.cancelled():
                self.release(n)
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(item)
                self._wake()
            raise

    def release(self, n: int = 1) -> None:
        if n > self.in_use:
            raise RuntimeError(f"{self!r}: releasing {n} units but only {self.in_use} in use")
        self.in_use -= n
        self._wake()

    def _grant(self, n: int) -> None:
        self.in_use += n
        self.peak = max(self.peak, self.in_use)

    def _wake(self) -> None:
        while self._waiters:
            n, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if self.in_use + n > self.limit:
                return
            self._waiters.popleft()
            self._grant(n)
            fut.set_result(None)


# -- records ------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetWait:
    """One call's wait for its budgets (``start``/``end`` on ``clock.time()``)."""

    node: str
    index: int
    keys: tuple[str, ...]
    start: float
    waited_s: float

    @property
    def end(self) -> float:
        return self.start + self.waited_s

    def mark(self, *, pid: int, host: str) -> Mark:
        """A span on the driver (no thread row: overlapping waits stack)."""
        who = self.node if self.index < 0 else f"{self.node}[{self.index}]"
        return Mark(
            "span",
            f"wait {'+'.join(self.keys)}",
            self.start,
            pid,
            host,
            end=self.end,
            cat="budget",
            args={"node": who, "waited_ms": round(self.waited_s * 1e3, 3)},
        )


@dataclass(frozen=True)
class BudgetStats:
    waits: int
    waited_s: float
    peak: dict[str, int]


# -- the run's budgets ----------------------------------------------------------------


class Budgets:
    """The budgets of one run, shared by every node call of it (Send fan-outs included).

    Invariant: ``_slots`` and ``_buckets`` are built once, from validated
    configuration; ``waits`` only grows (append-only, on the loop thread).
    """

    def __init__(
        self,
        *,
        limits: Mapping[str, int] | None = None,
        rates: Mapping[str, str | Rate] | None = None,
        max_concurrency: Mapping[str, int] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self._slots: dict[str, Slots] = {}
        self._lanes: dict[str, Slots] = {}
        self._buckets: dict[str, TokenBucket] = {}
        for key, limit in (limits or {}).items():
            _check_key(key, "limits")
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise BudgetError(
                    f"limits[{key!r}] must be an integer >= 1 (calls at once), got {limit!r}"
                )
            self._slots[key] = Slots(limit, key)
        for key, rate in (rates or {}).items():
            _check_key(key, "rates")
            self._buckets[key] = TokenBucket(parse_rate(rate, name=f"rates[{key!r}]"), self.clock)
        for lane, limit in (max_concurrency or {}).items():
            if lane not in LANE_NAMES:
                raise BudgetError(
                    f"max_concurrency names unknown lane {lane!r}; use {', '.join(LANE_NAMES)}"
                )
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise BudgetError(
                    f"max_concurrency[{lane!r}] must be an integer >= 1, got {limit!r}"
                )
            self._lanes[lane] = Slots(limit, f"lane:{lane}")
        self.waits: list[BudgetWait] = []

    def __repr__(self) -> str:
        return (
            f"<Budgets limits={ {k: s.limit for k, s in self._slots.items()} } "
            f"rates={ {k: str(b.rate) for k, b in self._buckets.items()} } "
            f"lanes={ {k: s.limit for k, s in self._lanes.items()} }>"
        )

    @property
    def empty(self) -> bool:
        return not (self._slots or self._buckets or self._lanes)

    def lane_limit(self, lane: str) -> int | None:
        """The ``max_concurrency`` of ``lane``, or None when it has no cap."""
        slots = self._lanes.get(lane)
        return slots.limit if slots is not None else None

    def check_node(self, node: str, resources: Mapping[str, int] | None) -> None:
        """Raise BudgetError now if ``node`` asks for what it could never get."""
        for key, n in (resources or {}).items():
            _check_key(key, f"node {node!r} resources")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise BudgetError(
                    f"node {node!r}: resources[{key!r}] must be an integer >= 1, got {n!r}"
                )
            slots = self._slots.get(key)
            if slots is not None and n > slots.limit:
                raise BudgetError(
                    f"node {node!r} asks for {n} of {key!r} but limits[{key!r}] is "
                    f"{slots.limit}: it could never run; raise the limit or ask for fewer"
                )

    @contextlib.asynccontextmanager
    async def acquire(
        self,
        resources: Mapping[str, int] | None = None,
        *,
        lane: str | None = None,
        node: str = "",
        index: int = -1,
    ) -> AsyncIterator[BudgetWait | None]:
        """Hold ``resources`` (and a slot of ``lane``) for the body; yields the wait record.

        Keys without a limit or rate cost nothing. Cancellation while waiting
        releases what was already held and propagates.
        """
        wanted = dict(resources or {})
        if wanted:
            self.check_node(node or "?", wanted)
        slot_keys = sorted(k for k in wanted if k in self._slots)
        lane_slots = self._lanes.get(lane) if lane is not None else None
        rate_keys = sorted(k for k in wanted if k in self._buckets)
        if not (slot_keys or lane_slots or rate_keys):
            yield None
            return
        t_wall = self.clock.time()
        t0 = self.clock.monotonic()
        held: list[tuple[Slots, int]] = []
        try:
            for key in slot_keys:
                await self._slots[key].acquire(wanted[key])
                held.append((self._slots[key], wanted[key]))
            if lane_slots is not None:
                await lane_slots.acquire(1)
                held.append((lane_slots, 1))
            for key in rate_keys:
                await self._buckets[key].take(wanted[key])
            waited = max(0.0, self.clock.monotonic() - t0)
            keys = tuple(slot_keys + ([f"lane:{lane}"] if lane_slots else []) + rate_keys)
            record = BudgetWait(node, index, tuple(dict.fromkeys(keys)), t_wall, waited)
            if waited > 0:
                self.waits.append(record)
            yield record
        finally:
            for slots, n in reversed(held):
                slots.release(n)

    def stats(self) -> BudgetStats:
        peak = {k: s.peak for k, s in self._slots.items()}
        peak.update({f"lane:{k}": s.peak for k, s in self._lanes.items()})
        return BudgetStats(
            waits=len(self.waits), waited_s=sum(w.waited_s for w in self.waits), peak=peak
        )

    def marks(self) -> list[Mark]:
        """Every recorded wait, as trace marks of this (the driver) process."""
        pid, host = os.getpid(), hostname()
        return [w.mark(pid=pid, host=host) for w in self.waits]


def _check_key(key: object, where: str) -> None:
    if not isinstance(key, str) or not key or key.startswith("lane:"):
        raise BudgetError(
            f"{where}: resource names must be non-empty strings not starting with 'lane:', "
            f"got {key!r}"
        )


__all__ = [
    "BudgetError",
    "BudgetStats",
    "BudgetWait",
    "Budgets",
    "Clock",
    "FakeClock",
    "Rate",
    "Slots",
    "SystemClock",
    "TokenBucket",
    "parse_rate",
]

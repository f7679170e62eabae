"""Predict a run on more (or fewer) workers: replay its trace in simulated time.

::

    a recorded trace (calls: step, lane, start/end, cpu_s, queued_s, pid; budget waits)
      --> per step: the driver's time before it (merge, route, dispatch), each call's
          offset from the step's start and its duration; for cpu-lane calls in
          worker processes, the driver's spacing between submissions and the
          hand-off between one call's end and the next call on that worker
      --> simulate, step after step (a step ends when its last call ends):
            io / thread / inline calls: at their recorded offsets (they never
              wait for a worker), unless a budget holds them
            cpu-lane calls: in dispatch order (node name, then Send index), onto
              `workers` processes: the first ones as the driver submits them, each
              later one when a worker frees, after the measured hand-off
            budgets (max_concurrency per lane, limits per resource): a call starts
              when its units are free, in dispatch order
      --> predicted wall, speedup and efficiency against one worker, and the
          critical path: what the run takes with unlimited workers, and which
          calls make it so

This is the engine's own policy: at most one call per worker in the pool at a
time, submitted in sorted order, steps joined at a barrier. Its inputs are
what the trace measured: a call's duration is its wall time in the worker
less the time it sat preempted on a run queue (``queued_s``), i.e. what it
takes with a core of its own. What it cannot see is listed in
docs/benchmarks.md: calls that slow each other down (memory bandwidth, a
host that gives each vCPU less than a core when all are busy), the driver's
own CPU, batch sizes that change with the pool, rates.
"""

from __future__ import annotations

import heapq
import itertools
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .trace import NodeCall, Trace

#: A prediction is "at the bound" within this fraction of the unlimited-workers wall.
SATURATED_WITHIN = 0.05
#: The hand-off assumed when the trace has no call that waited for a worker (seconds).
DEFAULT_HANDOFF_S = 0.001


@dataclass(frozen=True)
class PathLeg:
    """One step's share of the critical path: the call that ends the step last when
    every cpu call has a worker of its own (``gap_s`` is the driver's time before it)."""

    step: int
    node: str
    lane: str
    seconds: float
    gap_s: float

    def describe(self) -> str:
        return f"{self.node} ({self.lane}, step {self.step}, {self.seconds:.3f} s)"


@dataclass(frozen=True)
class Prediction:
    """The predicted wall time of a recorded run on ``workers`` worker processes.

    ``speedup`` and ``efficiency`` compare it with the same replay on one worker;
    ``bound_s`` is the wall with unlimited workers (the critical path, plus the
    driver's own time); ``saturation`` the fewest workers within 5% of it.
    ``replayed_s`` is the model's replay of the run as recorded (its own worker
    count, each call as long as it took): next to ``recorded_wall_s`` it says how
    well the model fits this trace. ``queued_s``: how long the recorded cpu calls
    waited for a core (others' load, or more workers than cores), which the
    predictions leave out.
    """

    workers: int
    wall_s: float
    one_worker_s: float
    bound_s: float
    saturation: int
    critical_path: tuple[PathLeg, ...]
    overhead_s: float
    recorded_workers: int
    recorded_wall_s: float
    replayed_s: float
    queued_s: float = 0.0
    notes: tuple[str, ...] = ()

    @property
    def speedup(self) -> float:
        return self.one_worker_s / self.wall_s if self.wall_s > 0 else 1.0

    @property
    def efficiency(self) -> float:
        return self.speedup / self.workers

    def bound_sentence(self) -> str:
        """Where more workers stop helping, and the node that sets the limit."""
        legs = sorted(self.critical_path, key=lambda leg: -leg.seconds)
        if not legs:
            return "the trace has no calls: nothing to predict"
        top = legs[0]
        share = top.seconds / self.bound_s if self.bound_s > 0 else 0.0
        where = (
            f"beyond {self.saturation} worker{'s' if self.saturation != 1 else ''} this graph "
            f"is bound by node {top.node}"
        )
        return (
            f"{where} ({top.lane}, step {top.step}: {top.seconds:.3f} s of the "
            f"{self.bound_s:.3f} s it takes with unlimited workers, {share:.0%}); critical "
            f"path: {' -> '.join(leg.node for leg in self.critical_path)}"
        )

    def __str__(self) -> str:
        return (
            f"{self.workers} worker(s): predicted wall {self.wall_s:.3f} s, speedup "
            f"{self.speedup:.2f}x vs 1 worker, efficiency {self.efficiency:.2f}; "
            + self.bound_sentence()
        )


# -- what the trace measured ------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    """One call to place in a step: relative to the step's start."""

    order: tuple[int, str, int]  # (0 pool / 1 other, node, index): dispatch order
    node: str
    lane: str
    offset: float  # when it could start (pool calls: see _Step)
    duration: float
    handoff: float  # pool calls: a worker's time from one call's end to this one's start
    needs: Mapping[str, int]


@dataclass(frozen=True)
class _Step:
    step: int
    gap: float  # the driver's time between the previous step's last call and this one's first
    first: float  # pool calls: offset of the first submission
    spacing: float  # pool calls: the driver's time between two submissions
    pool: tuple[_Item, ...]  # in dispatch order
    other: tuple[_Item, ...]


@dataclass(frozen=True)
class Replay:
    """A trace reduced to what the simulation needs (``Replay.of(trace)``)."""

    steps: tuple[_Step, ...]
    tail: float  # after the last call: what the caller waited for besides the steps
    recorded_workers: int
    recorded_wall_s: float
    in_driver: int  # cpu-lane calls that ran in the driver (no pool to scale)
    queued_s: float  # cpu calls in workers: time preempted on a run queue, all together

    @classmethod
    def of(
        cls,
        trace: Trace,
        *,
        max_concurrency: Mapping[str, int] | None = None,
        resources: Mapping[str, Mapping[str, int]] | None = None,
        as_recorded: bool = False,
    ) -> Replay:
        """``as_recorded``: each cpu call as long as it took, time preempted included
        (a check of the model against the run itself), not as long as it needs a core."""
        calls = [c for c in trace.calls if c.end >= c.start]
        driver = trace.driver_pid
        pool = [c for c in calls if _in_pool(c, driver)]
        workers = max(1, trace.cpu_workers or len({(c.host, c.pid) for c in pool}))
        handoffs = _handoffs(pool)
        default_handoff = statistics.median(handoffs.values()) if handoffs else DEFAULT_HANDOFF_S
        waited = _budget_waits(trace)
        caps = dict(max_concurrency or {})
        by_step: dict[int, list[NodeCall]] = defaultdict(list)
        for c in calls:
            by_step[c.step].append(c)
        steps = []
        previous_end = trace.started
        for step in sorted(by_step):
            group = by_step[step]
            first = min(c.start for c in group)
            gap = max(0.0, first - previous_end) if previous_end is not None else 0.0
            previous_end = max(c.end for c in group)
            items_pool: list[_Item] = []
            items_other: list[_Item] = []
            for c in group:
                needs = dict((resources or {}).get(c.node, {}))
                in_pool = _in_pool(c, driver)
                if not in_pool and c.lane in caps:
                    needs[f"lane:{c.lane}"] = 1
                ready = c.start - waited.get((c.node, c.index, round(c.start, 3)), 0.0)
                item = _Item(
                    order=(0 if in_pool else 1, c.node, c.index),
                    node=c.node if c.index < 0 else f"{c.node}[{c.index}]",
                    lane=c.lane,
                    offset=max(0.0, ready - first),
                    duration=c.wall_s
                    if as_recorded or not in_pool
                    else max(0.0, c.wall_s - c.queued_s),
                    handoff=handoffs.get(id(c), default_handoff),
                    needs=needs,
                )
                (items_pool if in_pool else items_other).append(item)
            items_pool.sort(key=lambda i: i.order)
            offsets = sorted(i.offset for i in items_pool)
            first_pool = offsets[0] if offsets else 0.0
            # The driver submits one call after another: the spacing of the first ones,
            # at most a hand-off (which includes a submission). A batch's first calls
            # are a chunk apart, not a call apart.
            n_first = min(len(offsets), workers)
            spacing = (
                statistics.median(b - a for a, b in itertools.pairwise(offsets[:n_first]))
                if n_first > 1
                else 0.0
            )
            spacing = min(spacing, default_handoff)
            steps.append(
                _Step(
                    step,
                    gap,
                    first_pool,
                    max(0.0, spacing),
                    tuple(items_pool),
                    tuple(sorted(items_other, key=lambda i: i.order)),
                )
            )
        last = max((c.end for c in calls), default=0.0)
        tail = 0.0
        if trace.started is not None and trace.wall_s is not None and calls:
            tail = max(0.0, trace.started + trace.wall_s - last)
        recorded_wall = trace.wall_s if trace.wall_s is not None else trace.span_s()
        in_driver = sum(1 for c in calls if c.lane == "cpu" and not _in_pool(c, driver))
        queued = sum(c.queued_s for c in pool)
        return cls(tuple(steps), tail, workers, recorded_wall, in_driver, queued)

    @property
    def overhead_s(self) -> float:
        """The driver's time outside every call: between steps and after the last."""
        return sum(s.gap for s in self.steps) + self.tail

    def wall(
        self, workers: int | None, *, caps: Mapping[str, int], limits: Mapping[str, int]
    ) -> float:
        """The simulated wall on ``workers`` processes (None: one per cpu call)."""
        total = self.tail
        for s in self.steps:
            total += s.gap + _simulate(s, workers, caps, limits)[0]
        return total

    def critical_path(self) -> tuple[PathLeg, ...]:
        legs = []
        for s in self.steps:
            span, last = _simulate(s, None, {}, {})
            if last is not None:
                legs.append(PathLeg(s.step, last.node, last.lane, span, s.gap))
        return tuple(legs)


def _in_pool(c: NodeCall, driver_pid: int) -> bool:
    """A cpu-lane call that a worker process ran (pid -1: lost with its worker)."""
    return c.lane == "cpu" and c.pid != driver_pid


def _handoffs(pool: Sequence[NodeCall]) -> dict[int, float]:
    """id(call) -> the time its worker took from its previous call of the step to this
    one (a result going back, the driver submitting the next call, the worker picking
    it up; microseconds inside a batch), for every call that was not its worker's
    first of the step."""
    out: dict[int, float] = {}
    by_worker: dict[tuple[int, str, int], list[NodeCall]] = defaultdict(list)
    for c in pool:
        by_worker[(c.step, c.host, c.pid)].append(c)
    for group in by_worker.values():
        group.sort(key=lambda c: c.start)
        for before, c in itertools.pairwise(group):
            out[id(c)] = max(0.0, c.start - before.end)
    return out


def _budget_waits(trace: Trace) -> dict[tuple[str, int, float], float]:
    """(node, index, start) -> seconds the call waited for a budget before it started."""
    out: dict[tuple[str, int, float], float] = {}
    spans = [m for m in trace.marks if m.cat == "budget" and m.kind == "span"]
    if not spans:
        return out
    for c in trace.calls:
        label = c.node if c.index < 0 else f"{c.node}[{c.index}]"
        for m in spans:
            if m.args.get("node") == label and abs(m.end - c.start) < 0.05:
                out[(c.node, c.index, round(c.start, 3))] = m.duration_s
    return out


# -- the simulation ---------------------------------------------------------------


def _simulate(
    s: _Step, workers: int | None, caps: Mapping[str, int], limits: Mapping[str, int]
) -> tuple[float, _Item | None]:
    """One step: (its span from its first call's start to its last call's end, the
    item that ended last)."""
    slots = len(s.pool) if workers is None else workers
    if "cpu" in caps:
        slots = min(slots, caps["cpu"])
    slots = max(1, slots)
    units: dict[str, list[float]] = {}  # resource -> min-heap of when each unit frees
    for key, n in limits.items():
        units[key] = [0.0] * max(1, n)
    for lane, n in caps.items():
        if lane != "cpu":
            units[f"lane:{lane}"] = [0.0] * max(1, n)
    pool_free: list[float] = [0.0] * min(slots, max(1, len(s.pool)))
    busy = [False] * len(pool_free)  # whether a slot ran a call yet (a hand-off follows)
    free_heap = [(0.0, k) for k in range(len(pool_free))]
    heapq.heapify(free_heap)
    end, last = 0.0, None
    # Other calls first, in dispatch order: they start when they did, or when their
    # budget frees; the pool's calls follow the process lane's FIFO.
    for item in s.other:
        start = _when_free(units, item.needs, item.offset)
        finish = start + item.duration
        _hold(units, item.needs, finish)
        if finish >= end:
            end, last = finish, item
    for j, item in enumerate(s.pool):
        at, k = heapq.heappop(free_heap)
        ready = s.first + j * s.spacing if j < len(pool_free) else s.first
        start = max(ready, at + item.handoff if busy[k] else at)
        start = _when_free(units, item.needs, start)
        finish = start + item.duration
        _hold(units, item.needs, finish)
        busy[k] = True
        heapq.heappush(free_heap, (finish, k))
        if finish >= end:
            end, last = finish, item
    return end, last


def _when_free(units: dict[str, list[float]], needs: Mapping[str, int], at: float) -> float:
    start = at
    for key, n in needs.items():
        heap = units.get(key)
        if heap:
            start = max(start, heapq.nsmallest(min(n, len(heap)), heap)[-1])
    return start


def _hold(units: dict[str, list[float]], needs: Mapping[str, int], end: float) -> None:
    """Take the ``needs`` units that free first (free by now: ``_when_free``) until ``end``."""
    for key, n in needs.items():
        heap = units.get(key)
        if not heap:
            continue
        taken = min(n, len(heap))
        for _ in range(taken):
            heapq.heappop(heap)
        for _ in range(taken):
            heapq.heappush(heap, end)


# -- the public entry points --------------------------------------------------------


def predict(
    trace: Trace,
    workers: int,
    *,
    max_concurrency: Mapping[str, int] | None = None,
    limits: Mapping[str, int] | None = None,
    resources: Mapping[str, Mapping[str, int]] | None = None,
) -> Prediction:
    """The wall time of ``trace``'s run on ``workers`` worker processes (see the module
    docstring). ``max_concurrency``/``limits``/``resources``: the run's budgets, as
    given to ``arun`` and ``add_node(resources=...)``."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    replay = Replay.of(trace, max_concurrency=max_concurrency, resources=resources)
    caps = dict(max_concurrency or {})
    lims = dict(limits or {})
    wall = replay.wall(workers, caps=caps, limits=lims)
    one = replay.wall(1, caps=caps, limits=lims)
    bound = replay.wall(None, caps=caps, limits=lims)
    saturation = _saturation(replay, bound, caps, lims)
    notes = []
    if replay.in_driver and not any(s.pool for s in replay.steps):
        notes.append(
            f"the trace's {replay.in_driver} cpu-lane call(s) ran in the driver (mode "
            "sequential or concurrent, or a thread executor): workers change nothing; "
            "record a parallel run"
        )
    if resources is None and limits:
        notes.append("limits given without resources (node -> units): no call holds them")
    return Prediction(
        workers=workers,
        wall_s=wall,
        one_worker_s=one,
        bound_s=bound,
        saturation=saturation,
        critical_path=replay.critical_path(),
        overhead_s=replay.overhead_s,
        recorded_workers=replay.recorded_workers,
        recorded_wall_s=replay.recorded_wall_s,
        replayed_s=Replay.of(
            trace, max_concurrency=max_concurrency, resources=resources, as_recorded=True
        ).wall(replay.recorded_workers, caps=caps, limits=lims),
        queued_s=replay.queued_s,
        notes=tuple(notes),
    )


def _saturation(
    replay: Replay, bound: float, caps: Mapping[str, int], limits: Mapping[str, int]
) -> int:
    """The fewest workers within ``SATURATED_WITHIN`` of ``bound`` (more workers never
    make the replay slower, so a binary search finds it)."""
    lo, hi = 1, max(1, max((len(s.pool) for s in replay.steps), default=1))
    while lo < hi:
        mid = (lo + hi) // 2
        if replay.wall(mid, caps=caps, limits=limits) <= bound * (1 + SATURATED_WITHIN):
            hi = mid
        else:
            lo = mid + 1
    return lo


def scaling(trace: Trace, workers: Iterable[int], **budgets: Any) -> list[Prediction]:
    """``predict`` for each worker count, in the order given."""
    return [predict(trace, n, **budgets) for n in workers]


def table(predictions: Sequence[Prediction]) -> str:
    """Predicted wall, speedup and efficiency per worker count, as plain text."""
    if not predictions:
        return ""
    first = predictions[0]
    fit = f"{first.replayed_s / first.recorded_wall_s - 1:+.1%}" if first.recorded_wall_s else "-"
    queued = (
        f"; its cpu calls waited {first.queued_s:.3f} s for a core (others' load, or more "
        "workers than cores), which the predictions leave out"
        if first.queued_s >= 0.01
        else ""
    )
    lines = [
        f"recorded: {first.recorded_wall_s:.3f} s on {first.recorded_workers} worker(s); "
        f"the model replays it in {first.replayed_s:.3f} s ({fit}){queued}",
        "",
        f"{'workers':>7}  {'predicted wall s':>16}  {'speedup':>7}  {'efficiency':>10}",
    ]
    for p in predictions:
        lines.append(
            f"{p.workers:>7}  {p.wall_s:>16.3f}  {p.speedup:>6.2f}x  {p.efficiency:>10.2f}"
        )
    lines += [
        "",
        f"unlimited workers: {first.bound_s:.3f} s (driver time between and after steps "
        f"{first.overhead_s:.3f} s)",
        first.bound_sentence(),
        *first.notes,
    ]
    return "\n".join(lines)


__all__ = ["PathLeg", "Prediction", "Replay", "predict", "scaling", "table"]

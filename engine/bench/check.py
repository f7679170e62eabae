"""The CI speedup gate: floors for ratios, read from ``benchmarks/floors.toml``.

A floor names one ratio of one workload, measured within one repeat of
``python -m engine bench --check``:

- ``efficiency``: ``lower_bound_s / wall_s`` of ``mode``;
- ``speedup``: ``wall_s(baseline) / wall_s(mode)``, both walls from the same
  repeat (the harness interleaves them and alternates their order);

and its minimum, either absolute (``min``) or as a fraction of the *ideal*
ratio for the cores this machine has (``min_of_ideal``). The ideal comes
from the run's own trace: the least time each mode allows for the calls that
ran (``ideal_wall``). It scales a floor to any machine without a formula per
workload: 4 cpu-bound agents and a 0.2 s compile step allow 1.83x on 2 cores
and 3.14x on 4, so "0.8 of ideal" asks 1.47x of a 2-core machine, 2.5x of a
4-core one, and 0.8x of a 1-core one (where there is no parallelism to lose).

"Cores" are the CPUs this process may use (``loky.cpu_count``: affinity and
cgroup quotas), never the pool size: a pool shrunk to one worker
(``ENGINE_CPU_WORKERS=1``) must fail the gate, not lower the bar.

What a speedup is measured in. Two runs of the same work a second apart can
find the machine at different speeds: on a VM, when both vCPUs are busy the
host may give each less than a core (hyperthread siblings, an oversubscribed
host) and then *CPU time* grows too, by up to 1.7x here, with no other process
in sight. So the wall-time ratio is priced at one speed: multiplied by
``work_cost``, what the same work cost (the trace's CPU seconds of cpu-lane
calls, wall seconds of the rest) in the measured run over the baseline's. A
lost parallelism still reads ~1.0x: cpu calls that run one at a time (on one
worker, or threads under one GIL) leave the other core idle and cost what
they cost in the baseline. Both numbers are printed.

Which repeats may judge a speedup (``GatePolicy``). A neighbour on a shared
machine can move a speedup either way: slowing the measured run lowers it,
slowing the *baseline* raises it (a thread-lane regression at 0.97x read
1.5x when a neighbour took the cores during the sequential run). And with
one core taken, a healthy engine and one that lost its parallelism measure
the same: no floor separates them. So a speedup is judged only on *quiet*
repeats, where others took at most ``quiet_slack(cores)`` of the cores during
both runs (``engine.bench.cpushare``: the machine's busy time minus our own
process tree's, so our own waste is never excused). The verdict is the
median over ``min_repeats`` quiet repeats, so one lucky repeat cannot pass a
regression and one disturbed repeat cannot fail a healthy engine. Without
enough quiet repeats the floor is *not measured*, which is a failure of its
own kind (``python -m engine bench --check`` exits 3), never a pass.

An efficiency compares a run with its own trace: a neighbour only ever
lowers it, so every repeat may judge it.

Some losses need no timing: a parallel run's trace shows its cpu calls never
ran in two worker processes at once (the cpu lane on threads, a pool of one),
or that nodes the baseline measured as CPU-bound ran on the thread lane
(``cpu_bound_nodes``). A loss shown in every repeat fails the floor, quiet
repeats or not; the ratio of GIL-bound thread calls is never priced (their
longer calls are the loss, not a slower machine).
"""

from __future__ import annotations

import heapq
import math
import tomllib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .. import NodeCall

Ratio = Literal["efficiency", "speedup"]
RATIOS: tuple[Ratio, ...] = ("efficiency", "speedup")

#: Exit status of ``bench --check``: a ratio fell below its floor.
EXIT_BELOW = 1
#: Exit status of ``bench --check``: a floor could not be measured (machine busy
#: in too many repeats). Not a pass: CI fails, but says why differently.
EXIT_UNMEASURED = 3


@dataclass(frozen=True)
class Floor:
    """The least a ratio may be; exactly one of ``min`` and ``min_of_ideal`` is set."""

    workload: str
    ratio: Ratio
    mode: str
    baseline: str | None = None
    min: float | None = None
    min_of_ideal: float | None = None
    why: str = ""

    @property
    def label(self) -> str:
        if self.ratio == "speedup":
            return f"{self.workload} {self.mode} vs {self.baseline}"
        return f"{self.workload} {self.mode} efficiency"

    def modes(self) -> tuple[str, ...]:
        """The modes whose runs this floor needs."""
        return (self.mode,) if self.baseline is None else (self.baseline, self.mode)

    def threshold(self, ideal: float | None) -> float:
        """The floor's value on this machine, given the ideal ratio (when relative)."""
        if self.min is not None:
            return self.min
        assert self.min_of_ideal is not None
        if ideal is None:
            raise ValueError(f"floor {self.label!r} is relative to an ideal ratio, none given")
        return self.min_of_ideal * ideal


@dataclass(frozen=True)
class GatePolicy:
    """Which repeats judge a floor, and how many the gate runs at most.

    ``min_repeats``: usable repeats a verdict needs (quiet ones, for a
    speedup); ``max_repeats``: repeats a workload may run to find them.
    ``quiet_fraction``: the share of the cores others may take during a
    run that still counts as quiet (at least ``quiet_min_cores``).
    ``wait_s``: before a repeat, how long the harness waits for a quiet
    moment; ``deadline_s``: after this long the gate stops waiting and
    looking (each workload still runs ``min_repeats`` repeats).
    """

    min_repeats: int = 3
    max_repeats: int = 9
    quiet_fraction: float = 0.1
    quiet_min_cores: float = 0.25
    wait_s: float = 8.0
    deadline_s: float = 75.0

    def __post_init__(self) -> None:
        if self.min_repeats < 1 or self.max_repeats < self.min_repeats:
            raise ValueError(
                f"need 1 <= min_repeats <= max_repeats, got {self.min_repeats}, {self.max_repeats}"
            )

    def quiet_slack(self, cores: float) -> float:
        """Cores others may take during a run that still counts as quiet."""
        return max(self.quiet_min_cores, self.quiet_fraction * cores)

    def is_quiet(self, free: float | None, cores: float) -> bool:
        """Whether a run with ``free`` cores left to us ran quiet (None: cannot tell, yes)."""
        return free is None or free >= cores - self.quiet_slack(cores)


@dataclass(frozen=True)
class Measured:
    """One repeat's ratio, the ideal for the cores free during it, and its floor.

    For a speedup, ``ratio`` is the wall-time ratio ``raw`` priced at one
    machine speed: ``raw x cost``, where ``cost`` is what the same work cost
    in the measured run over what it cost in the baseline's (``work_s`` of
    each run's own trace). ``free_cores`` / ``base_free_cores``: cores others
    left us during the measured run and the baseline's (None: not measurable
    here). ``quiet``: both runs had the cores to themselves
    (``GatePolicy.is_quiet``).
    """

    ratio: float
    ideal: float | None
    threshold: float
    free_cores: float | None
    base_free_cores: float | None = None
    quiet: bool = True
    repeat: int = 0
    raw: float | None = None
    cost: float = 1.0
    overlap: int | None = None  # worker processes running cpu calls at once, at most
    expected: int | None = None  # what a parallel run of these calls reaches
    on_threads: tuple[str, ...] = ()  # CPU-bound nodes (per the baseline) on the thread lane

    @property
    def lost_parallelism(self) -> bool:
        """The trace itself shows the cpu calls never ran in parallel processes."""
        return (
            self.overlap is not None
            and self.expected is not None
            and (self.overlap < self.expected)
        )

    @property
    def met(self) -> bool:
        return self.ratio >= self.threshold

    @property
    def margin(self) -> float:
        return self.ratio / self.threshold if self.threshold > 0 else math.inf


Status = Literal["ok", "below", "unmeasured"]


@dataclass(frozen=True)
class Verdict:
    """One floor, checked over the repeats.

    ``usable``: the repeats that may judge it (the quiet ones for a speedup,
    every one for an efficiency). With at least ``needed`` of them, the floor
    is met when the median repeat (by margin over its floor) meets it; with
    fewer, it is ``unmeasured``: neither a pass nor a fall below the floor.
    """

    floor: Floor
    measured: tuple[Measured, ...]
    needed: int = 1

    @property
    def usable(self) -> tuple[Measured, ...]:
        if self.floor.ratio == "efficiency":
            return self.measured
        return tuple(m for m in self.measured if m.quiet)

    @property
    def decided(self) -> bool:
        return len(self.usable) >= self.needed

    @property
    def deciding(self) -> Measured | None:
        """The median usable repeat by margin (the lower middle one of an even count)."""
        usable = sorted(self.usable, key=lambda m: m.margin)
        return usable[(len(usable) - 1) // 2] if usable else None

    @property
    def lost(self) -> bool:
        """Every repeat's trace shows lost parallelism (a load-proof reason to fail)."""
        return bool(self.measured) and all(m.lost_parallelism for m in self.measured)

    @property
    def status(self) -> Status:
        if self.lost:
            # The traces prove a loss (cpu calls in the driver, in one process at a
            # time, or CPU-bound nodes on the thread lane) whatever the load, and
            # whatever the ratio: GIL-bound threads can read as a slow machine.
            return "below"
        if not self.decided:
            # Too few quiet repeats to judge a speed; the trace never proves a pass.
            return "unmeasured"
        m = self.deciding
        return "ok" if m is not None and m.met else "below"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def describe(self) -> str:
        """One line: what was measured against what, or why nothing could be."""
        m = self.deciding
        if self.lost:
            worst = max(x.overlap or 0 for x in self.measured)
            want = min(x.expected or 0 for x in self.measured)
            return (
                f"{self.floor.label}: parallelism lost, as every repeat's trace shows: its "
                f"cpu calls ran in at most {worst} worker process(es) at once, {want} expected"
                f"{self._threads_note()} (only {len(self.usable)} of {len(self.measured)} "
                "repeat(s) quiet enough to time)"
            )
        if self.status == "unmeasured":
            return (
                f"{self.floor.label}: not measured, {len(self.usable)} of {len(self.measured)} "
                f"repeat(s) ran with the cores free, {self.needed} needed"
            )
        assert m is not None
        sign = ">=" if m.met else "<"
        return (
            f"{self.floor.label} {m.ratio:.3f} {sign} {m.threshold:.3f} "
            f"(median of {len(self.usable)} usable repeat(s)){self._threads_note()}"
        )

    def _threads_note(self) -> str:
        nodes = sorted({n for m in self.measured for n in m.on_threads})
        if not nodes:
            return ""
        return (
            f"; CPU-bound node(s) {', '.join(nodes)} ran on the thread lane, where they share "
            "one GIL: declare them lane='cpu' (or @engine.cpu)"
        )


def load_floors(path: str | Path) -> list[Floor]:
    """Parse a floors file; a ``ValueError`` names the entry that is wrong and how."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read floors from {p}: {exc}") from exc
    entries = doc.get("floor")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{p} has no [[floor]] entries")
    return [_floor(entry, f"{p} [[floor]] #{i + 1}") for i, entry in enumerate(entries)]


def _floor(entry: Mapping[str, Any], where: str) -> Floor:
    known = {"workload", "ratio", "mode", "baseline", "min", "min_of_ideal", "why"}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; use {sorted(known)}")
    ratio = entry.get("ratio")
    if ratio not in RATIOS:
        raise ValueError(f"{where}: ratio must be one of {list(RATIOS)}, got {ratio!r}")
    workload, mode = entry.get("workload"), entry.get("mode", "parallel")
    if not isinstance(workload, str) or not isinstance(mode, str):
        raise ValueError(f"{where}: workload and mode must be strings")
    baseline = entry.get("baseline")
    if ratio == "speedup" and not isinstance(baseline, str):
        raise ValueError(f"{where}: a speedup floor needs baseline = '<mode>'")
    if ratio == "efficiency" and baseline is not None:
        raise ValueError(f"{where}: an efficiency floor has no baseline")
    lo, rel = entry.get("min"), entry.get("min_of_ideal")
    if (lo is None) == (rel is None):
        raise ValueError(f"{where}: set exactly one of min = <ratio> and min_of_ideal = <fraction>")
    for name, value in (("min", lo), ("min_of_ideal", rel)):
        if value is not None and (not isinstance(value, int | float) or value <= 0):
            raise ValueError(f"{where}: {name} must be a positive number, got {value!r}")
    return Floor(
        workload=workload,
        ratio=ratio,
        mode=mode,
        baseline=baseline,
        min=None if lo is None else float(lo),
        min_of_ideal=None if rel is None else float(rel),
        why=str(entry.get("why", "")),
    )


# -- the ideal: least wall time a mode allows for the calls that ran ----------


def ideal_wall(calls: Iterable[NodeCall], mode: str, cores: float) -> float:
    """Least wall time ``mode`` allows for these calls on ``cores`` CPUs.

    Per step (steps are barriers, so they add up): ``sequential`` runs every
    call's effort one after the other; ``concurrent`` overlaps waiting calls
    but runs cpu-lane work one at a time (the GIL); ``parallel`` (and any
    other name) packs cpu-lane work onto ``cores`` processes: the larger of a
    greedy longest-first packing (a call cannot be split) and the work spread
    evenly over ``cores`` (which may be fractional: the cores left free by
    others). With less than one core free, cpu-lane work stretches by
    ``1 / cores`` in every mode. Efforts are ``NodeCall.effort_s``: CPU
    seconds for cpu-lane calls, wall seconds for the rest.
    """
    per_step: dict[int, list[NodeCall]] = defaultdict(list)
    for c in calls:
        if c.ok:
            per_step[c.step].append(c)
    stretch = 1.0 / max(cores, 0.05) if cores < 1 else 1.0
    total = 0.0
    for step_calls in per_step.values():
        cpu = [c.effort_s * stretch for c in step_calls if c.lane == "cpu"]
        rest = [c.effort_s for c in step_calls if c.lane != "cpu"]
        if mode == "sequential":
            total += sum(cpu) + sum(rest)
            continue
        if mode == "concurrent" or cores <= 1:
            packed = sum(cpu)
        else:
            packed = max(_makespan(cpu, math.ceil(cores)), sum(cpu) / cores)
        total += max(max(rest, default=0.0), packed)
    return total


def _makespan(efforts: Sequence[float], slots: int) -> float:
    if not efforts:
        return 0.0
    loads = [0.0] * min(slots, len(efforts))
    for e in sorted(efforts, reverse=True):
        heapq.heapreplace(loads, loads[0] + e)
    return max(loads)


def ideal_ratio(
    floor: Floor,
    calls: Sequence[NodeCall],
    cores: float,
    base_cores: float | None = None,
    *,
    mode: str | None = None,
    base_mode: str | None = None,
) -> float | None:
    """The ideal value of ``floor``'s ratio for these calls: the measured mode on
    ``cores`` CPUs against the baseline on ``base_cores`` (default: the same).
    ``mode``/``base_mode`` name the engine mode a row ran in, when its label differs."""
    if floor.ratio == "efficiency":
        return 1.0
    assert floor.baseline is not None
    mine = ideal_wall(calls, mode or floor.mode, cores)
    on = cores if base_cores is None else base_cores
    base = ideal_wall(calls, base_mode or floor.baseline, on)
    return base / mine if mine > 0 else None


def check(
    floors: Sequence[Floor],
    repeats: Sequence[Mapping[tuple[str, str], Any]],
    cores: float,
    policy: GatePolicy | None = None,
) -> list[Verdict]:
    """Check ``floors`` against repeats of measurements.

    Each repeat maps ``(workload, mode)`` to a run with ``wall_s``,
    ``efficiency``, ``calls`` (its NodeCalls), ``free_cores`` (None: not
    measurable) and optionally ``run_mode`` (the engine mode of a row whose
    label is not one). A repeat's ideal comes from its own run of the floor's
    mode, that run on the cores free during it and the baseline on the cores
    free during the baseline's run.
    """
    policy = policy or GatePolicy()
    verdicts: list[Verdict] = []
    for floor in floors:
        measured: list[Measured] = []
        for i, rep in enumerate(repeats):
            run = rep.get((floor.workload, floor.mode))
            if run is None:
                continue
            base = None
            raw, cost = None, 1.0
            on_threads: tuple[str, ...] = ()
            if floor.ratio == "efficiency":
                ratio = float(run.efficiency)
            else:
                base = rep.get((floor.workload, floor.baseline or ""))
                if base is None:
                    continue
                raw = float(base.wall_s) / max(float(run.wall_s), 1e-9)
                # CPU-bound calls sharing the GIL on threads take longer: that is the
                # loss being measured, not a slower machine to price out.
                on_threads = _on_threads(run, base, floor)
                cost = 1.0 if on_threads else work_cost(run.calls, base.calls)
                ratio = raw * cost
            free = _free(run, cores)
            base_free = _free(base, cores) if base is not None else None
            ideal = ideal_ratio(
                floor,
                run.calls,
                cores if free is None else free,
                cores if base_free is None else base_free,
                mode=getattr(run, "run_mode", None),
                base_mode=getattr(base, "run_mode", None),
            )
            if floor.min is None and ideal is None:
                continue  # nothing ran: no ideal to hold the run to
            quiet = policy.is_quiet(free, cores) and (
                base is None or policy.is_quiet(base_free, cores)
            )
            overlap = expected = None
            if base is not None and _parallel_vs_not(run, base, floor):
                expected = expected_overlap(run.calls, cores, also=on_threads)
                overlap = worker_overlap(run.calls, int(getattr(run, "driver_pid", -1)))
            measured.append(
                Measured(
                    ratio,
                    ideal,
                    floor.threshold(ideal),
                    free,
                    base_free,
                    quiet=quiet,
                    repeat=int(getattr(run, "repeat", i)),
                    raw=raw,
                    cost=cost,
                    overlap=overlap,
                    expected=expected or None,
                    on_threads=on_threads,
                )
            )
        verdicts.append(Verdict(floor, tuple(measured), needed=policy.min_repeats))
    return verdicts


def _parallel_vs_not(run: Any, base: Any, floor: Floor) -> bool:
    """A parallel run against a baseline that is not: parallelism can be lost between them."""
    return (
        getattr(run, "run_mode", floor.mode) == "parallel"
        and getattr(base, "run_mode", floor.baseline) != "parallel"
    )


def _on_threads(run: Any, base: Any, floor: Floor) -> tuple[str, ...]:
    """Nodes the baseline ran as CPU-bound work that the parallel run put on threads."""
    if not _parallel_vs_not(run, base, floor):
        return ()
    return thread_lane_cpu_work(run.calls, cpu_bound_nodes(base.calls))


def worker_overlap(calls: Iterable[NodeCall], driver_pid: int) -> int:
    """The most worker processes (not the driver) that ran cpu-lane calls at one moment.

    Proof of parallel dispatch from the trace alone, whatever the load: on a
    machine a neighbour keeps busy, two workers time-share what is left but
    their calls still overlap; threads run in the driver, and a pool of one
    worker never overlaps itself.
    """
    edges: list[tuple[float, int, tuple[str, int]]] = []
    for c in calls:
        if c.ok and c.lane == "cpu" and c.pid != driver_pid and c.pid > 0:
            edges += [(c.start, 1, (c.host, c.pid)), (c.end, -1, (c.host, c.pid))]
    running: dict[tuple[str, int], int] = defaultdict(int)
    best = 0
    for _, delta, proc in sorted(edges, key=lambda e: (e[0], e[1])):  # ends before starts
        running[proc] += delta
        best = max(best, sum(1 for n in running.values() if n > 0))
    return best


def expected_overlap(calls: Iterable[NodeCall], cores: float, *, also: Iterable[str] = ()) -> int:
    """How many worker processes a parallel run of these calls keeps busy at once:
    the whole cores present, or the most cpu calls in one step if fewer. ``also``:
    nodes whose calls count as cpu calls wherever they ran (CPU-bound work that was
    declared on another lane)."""
    extra = set(also)
    per_step: dict[int, int] = defaultdict(int)
    for c in calls:
        if c.ok and (c.lane == "cpu" or c.node in extra):
            per_step[c.step] += 1
    return min(max(1, math.floor(cores)), max(per_step.values(), default=0))


#: A node is CPU-bound when its calls used at least this share of a core while they ran...
CPU_BOUND_RATIO = 0.5
#: ...and at least this much CPU per call: tiny nodes gain nothing from a process.
CPU_BOUND_MIN_S = 0.02


def cpu_bound_nodes(calls: Iterable[NodeCall]) -> frozenset[str]:
    """Nodes whose calls are CPU-bound, as a run that ran them *alone* shows (a
    ``sequential`` baseline): CPU seconds over the time they were running (wall time
    less the time preempted on a run queue, ``queued_s``), so a neighbour's load does
    not hide it. Calls that shared the GIL show less; they are never counted here."""
    per_node: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for c in calls:
        if c.ok and c.cpu_s > 0:
            per_node[c.node].append((c.cpu_s, max(c.wall_s - c.queued_s, 1e-9)))
    out = set()
    for node, pairs in per_node.items():
        cpu = sorted(p[0] for p in pairs)[len(pairs) // 2]
        ran = sorted(p[1] for p in pairs)[len(pairs) // 2]
        if cpu >= CPU_BOUND_MIN_S and cpu / ran >= CPU_BOUND_RATIO:
            out.add(node)
    return frozenset(out)


def thread_lane_cpu_work(calls: Iterable[NodeCall], cpu_bound: Iterable[str]) -> tuple[str, ...]:
    """The CPU-bound nodes (``cpu_bound``) that ran on the thread lane in this run."""
    bound = set(cpu_bound)
    return tuple(sorted({c.node for c in calls if c.lane == "thread" and c.node in bound}))


def work_s(calls: Iterable[NodeCall]) -> float:
    """The run's work: every successful call's effort (CPU seconds for cpu-lane calls)."""
    return sum(c.effort_s for c in calls if c.ok)


def work_cost(calls: Sequence[NodeCall], base_calls: Sequence[NodeCall]) -> float:
    """What the same work cost in one run over what it cost in another: 1.3 means
    the machine ran 30% slower for the first (its CPU time, not only its wall
    time, grew). 1.0 when either run did no work, or when the runs put a node
    on different lanes: a call's effort is measured per lane (CPU seconds on
    the cpu lane, wall seconds elsewhere), so only like can be priced as like."""

    def lanes(cs: Sequence[NodeCall]) -> dict[tuple[str, int], str]:
        return {(c.node, c.index): c.lane for c in cs if c.ok}

    if lanes(calls) != lanes(base_calls):
        return 1.0
    mine, base = work_s(calls), work_s(base_calls)
    return mine / base if mine > 0 and base > 0 else 1.0


def _free(run: Any, cores: float) -> float | None:
    free = getattr(run, "free_cores", None)
    return None if free is None else min(float(cores), float(free))


def exit_code(verdicts: Sequence[Verdict]) -> int:
    """0 when every floor is met; 1 when one is below; else 3 (one could not be measured)."""
    if any(v.status == "below" for v in verdicts):
        return EXIT_BELOW
    if any(v.status == "unmeasured" for v in verdicts):
        return EXIT_UNMEASURED
    return 0

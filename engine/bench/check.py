"""The CI speedup gate: floors for ratios, read from ``benchmarks/floors.toml``.

A floor names one ratio of one workload, measured within one repeat of
``python -m engine bench --check``:

- ``efficiency``: ``lower_bound_s / wall_s`` of ``mode``;
- ``speedup``: ``wall_s(baseline) / wall_s(mode)``, both walls from the same
  repeat, so a machine that is slow for a while slows both.

and its minimum, either absolute (``min``) or as a fraction of the *ideal*
ratio for the cores this machine has (``min_of_ideal``). The ideal comes
from the run's own trace: the least time each mode allows for the calls that
ran (``ideal_wall``). It scales a floor to any machine without a formula per
workload: 4 cpu-bound agents and a 0.2 s compile step allow 1.83x on 2 cores
and 3.14x on 4, so "0.8 of ideal" asks 1.47x of a 2-core machine, 2.5x of a
4-core one, and 0.8x of a 1-core one (where there is no parallelism to lose).

"Cores" are the CPUs this process may use (``loky.cpu_count``: affinity and
cgroup quotas), never the pool size: a pool shrunk to one worker
(``ENGINE_CPU_WORKERS=1``) must fail the gate, not lower the bar. Where the
machine is shared, a repeat's ideal uses the cores that were *free* during
its run (``engine.bench.cpushare``: the machine's busy time minus our own
process tree's), so a neighbour's job lowers the bar exactly as much as it
took, and our own processes' waste never does.

A floor passes when one of a few repeats meets it: noise on a shared machine
only ever makes a ratio worse, while a lost parallelism makes every repeat
worse.
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

from ..trace import NodeCall

Ratio = Literal["efficiency", "speedup"]
RATIOS: tuple[Ratio, ...] = ("efficiency", "speedup")


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
class Measured:
    """One repeat's ratio, the ideal for the cores free during it, and its floor.

    ``lowered``: others took enough cores that this repeat's ideal (and so
    its floor) fell more than 5% below the ideal with every core free.
    """

    ratio: float
    ideal: float | None
    threshold: float
    free_cores: float | None
    lowered: bool = False

    @property
    def met(self) -> bool:
        return self.ratio >= self.threshold

    @property
    def margin(self) -> float:
        return self.ratio / self.threshold if self.threshold > 0 else math.inf


@dataclass(frozen=True)
class Verdict:
    """One floor, checked over the repeats.

    Repeats that ran with the cores free (floor not lowered) decide: the
    floor passes when one of them meets it. Only when every repeat had a
    neighbour taking cores do the lowered floors decide, and the verdict is
    marked inconclusive: a busy repeat must never outvote a quiet one.
    """

    floor: Floor
    measured: tuple[Measured, ...]

    @property
    def deciding(self) -> tuple[Measured, ...]:
        quiet = tuple(m for m in self.measured if not m.lowered)
        return quiet or self.measured

    @property
    def conclusive(self) -> bool:
        """Whether a repeat with the cores free took part in the verdict."""
        return any(not m.lowered for m in self.measured)

    @property
    def best(self) -> Measured | None:
        """The deciding repeat that cleared its floor by the most (or missed it by the least)."""
        return max(self.deciding, key=lambda m: m.margin, default=None)

    @property
    def ok(self) -> bool:
        best = self.best
        return best is not None and best.met


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
    but runs cpu-lane work one at a time (the GIL); ``parallel`` packs
    cpu-lane work onto ``cores`` processes: the larger of a greedy
    longest-first packing (a call cannot be split) and the work spread evenly
    over ``cores`` (which may be fractional: the cores left free by others).
    Efforts are ``NodeCall.effort_s``: CPU seconds for cpu-lane calls, wall
    seconds for the rest.
    """
    per_step: dict[int, list[NodeCall]] = defaultdict(list)
    for c in calls:
        if c.ok:
            per_step[c.step].append(c)
    total = 0.0
    for step_calls in per_step.values():
        efforts = [c.effort_s for c in step_calls]
        if mode == "sequential":
            total += sum(efforts)
            continue
        cpu = [c.effort_s for c in step_calls if c.lane == "cpu"]
        other = max((c.effort_s for c in step_calls if c.lane != "cpu"), default=0.0)
        if mode == "concurrent" or cores <= 1:
            packed = sum(cpu)
        else:
            packed = max(_makespan(cpu, math.ceil(cores)), sum(cpu) / cores)
        total += max(other, packed)
    return total


def _makespan(efforts: Sequence[float], slots: int) -> float:
    if not efforts:
        return 0.0
    loads = [0.0] * min(slots, len(efforts))
    for e in sorted(efforts, reverse=True):
        heapq.heapreplace(loads, loads[0] + e)
    return max(loads)


def ideal_ratio(floor: Floor, calls: Sequence[NodeCall], cores: float) -> float | None:
    """The ideal value of ``floor``'s ratio for these calls on ``cores`` CPUs."""
    if floor.ratio == "efficiency":
        return 1.0
    assert floor.baseline is not None
    mine = ideal_wall(calls, floor.mode, cores)
    return ideal_wall(calls, floor.baseline, cores) / mine if mine > 0 else None


def check(
    floors: Sequence[Floor],
    repeats: Sequence[Mapping[tuple[str, str], Any]],
    cores: int,
) -> list[Verdict]:
    """Check ``floors`` against repeats of measurements.

    Each repeat maps ``(workload, mode)`` to a run with ``wall_s``,
    ``efficiency``, ``calls`` (its NodeCalls) and ``free_cores`` (None: all
    ``cores``). A repeat's ideal comes from its own run of the floor's mode,
    on the cores free during that run.
    """
    verdicts: list[Verdict] = []
    for floor in floors:
        measured: list[Measured] = []
        for rep in repeats:
            run = rep.get((floor.workload, floor.mode))
            if run is None:
                continue
            if floor.ratio == "efficiency":
                ratio = float(run.efficiency)
            else:
                base = rep.get((floor.workload, floor.baseline or ""))
                if base is None:
                    continue
                ratio = float(base.wall_s) / max(float(run.wall_s), 1e-9)
            free = getattr(run, "free_cores", None)
            here = float(cores) if free is None else min(float(cores), free)
            ideal = ideal_ratio(floor, run.calls, here)
            if floor.min is None and ideal is None:
                continue  # nothing ran: no ideal to hold the run to
            full = ideal_ratio(floor, run.calls, float(cores))
            lowered = (
                floor.min is None
                and ideal is not None
                and full is not None
                and (ideal < 0.95 * full)
            )
            measured.append(Measured(ratio, ideal, floor.threshold(ideal), free, lowered))
        verdicts.append(Verdict(floor=floor, measured=tuple(measured)))
    return verdicts

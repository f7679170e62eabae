"""One measured run (``Sample``), and runs summarised per row (``Result``).

Wall time is measured around ``arun`` (what a caller waits for); lower bound,
parallelism and lanes come from the run's own trace, and the cores other
processes left us during the run from ``engine.bench.cpushare``. A LangGraph
peer is timed the same way, around one run of its graph.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from .. import LoopBlocked, NodeCall, RunStarted, StepFinished, Trace
from .cpushare import free_cores, snapshot
from .machine import cores
from .peers import PEER_MODE, Peer


@dataclass(frozen=True)
class Sample:
    """One measured run of one workload in one mode."""

    workload: str
    mode: str
    repeat: int
    wall_s: float
    lower_bound_s: float
    efficiency: float
    parallelism: float
    by_lane: Mapping[str, float]
    calls: tuple[NodeCall, ...]
    barriers: tuple[tuple[int, float], ...]  # (step, time.time() when it ended)
    t0: float | None  # time.time() when the run started
    driver_pid: int
    final: Any  # the final state as JSON-able data, to compare modes
    free_cores: float | None = None  # cores others left us during the run (Linux)
    run_mode: str = ""  # the engine mode it ran in, when ``mode`` is a variant's label
    blocked: tuple[tuple[float, tuple[str, ...]], ...] = ()  # loop guard: (lag_s, nodes)
    cpu_workers: int = 0
    marks: tuple[Any, ...] = ()  # the trace's marks (engine.marks.Mark)

    def __post_init__(self) -> None:
        if not self.run_mode:
            object.__setattr__(self, "run_mode", self.mode)

    def trace(self) -> Trace:
        """The run as a ``Trace`` with everything the harness knew of it (barriers,
        start, wall, pool size): what ``to_chrome`` and ``predict`` read."""
        return Trace(
            calls=self.calls,
            driver_pid=self.driver_pid,
            marks=self.marks,
            steps=self.barriers,
            started=self.t0,
            wall_s=self.wall_s,
            cpu_workers=self.cpu_workers or None,
        )


@dataclass(frozen=True)
class Result:
    """One (workload, mode) over its repeats: each number is the median unless named."""

    workload: str
    mode: str
    wall_s: float
    wall_min_s: float
    speedup: float | None  # median sequential wall / median wall of this mode
    parallelism: float
    lower_bound_s: float
    efficiency: float
    by_lane: dict[str, float]
    runs: int
    free_cores: float | None = None  # the fewest cores others left us in any repeat

    def as_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "mode": self.mode,
            "wall_s": round(self.wall_s, 6),
            "wall_min_s": round(self.wall_min_s, 6),
            "speedup": None if self.speedup is None else round(self.speedup, 4),
            "parallelism": round(self.parallelism, 4),
            "lower_bound_s": round(self.lower_bound_s, 6),
            "efficiency": round(self.efficiency, 4),
            "by_lane": {k: round(v, 6) for k, v in self.by_lane.items()},
        }


def summarise(samples: Iterable[Sample]) -> list[Result]:
    """Median (and min) per (workload, mode), in first-seen order."""
    groups: dict[tuple[str, str], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.workload, s.mode), []).append(s)
    seq = {
        w: statistics.median(x.wall_s for x in g)
        for (w, m), g in groups.items()
        if m == "sequential"
    }
    results = []
    for (workload, mode), group in groups.items():
        wall = statistics.median(s.wall_s for s in group)
        lanes = sorted({lane for s in group for lane in s.by_lane})
        results.append(
            Result(
                workload=workload,
                mode=mode,
                wall_s=wall,
                wall_min_s=min(s.wall_s for s in group),
                speedup=seq[workload] / wall if workload in seq and wall > 0 else None,
                parallelism=statistics.median(s.parallelism for s in group),
                lower_bound_s=statistics.median(s.lower_bound_s for s in group),
                efficiency=statistics.median(s.efficiency for s in group),
                by_lane={k: statistics.median(s.by_lane.get(k, 0.0) for s in group) for k in lanes},
                runs=len(group),
                free_cores=min(free)
                if (free := [s.free_cores for s in group if s.free_cores])
                else None,
            )
        )
    return results


def median_samples(samples: Iterable[Sample]) -> list[Sample]:
    """The run whose wall time is nearest the median, per (workload, mode): what a
    timeline shows and what a saved trace holds."""
    groups: dict[tuple[str, str], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.workload, s.mode), []).append(s)
    picked = []
    for group in groups.values():
        mid = statistics.median(s.wall_s for s in group)
        picked.append(min(group, key=lambda s: abs(s.wall_s - mid)))
    return picked


def jsonable(state: Any) -> Any:
    """A final state as JSON-able data, whatever its schema (pydantic, TypedDict, dataclass):
    what modes are compared on and what the JSON keeps."""
    return to_jsonable_python(state, fallback=repr)


async def run_engine(
    workload: str,
    mode: str,
    app: Any,
    state: Any,
    executor: Executor | None,
    repeat: int = 0,
    *,
    label: str | None = None,
    n_cores: float | None = None,
) -> Sample:
    """One engine run, timed around ``arun``; barriers from its step events.

    ``label`` names the row when it is not the mode (a variant);
    ``n_cores`` is what free cores are counted against (0: not measurable).
    """
    barriers: list[tuple[int, float]] = []
    started: list[float] = []
    blocked: list[tuple[float, tuple[str, ...]]] = []

    def sink(event: Any) -> None:
        if isinstance(event, StepFinished):
            barriers.append((event.step, event.time))
        elif isinstance(event, RunStarted):
            started.append(event.time)
        elif isinstance(event, LoopBlocked):
            blocked.append((event.lag_s, tuple(event.nodes)))

    n = cores() if n_cores is None else n_cores
    before = snapshot() if n else None
    t = time.perf_counter()
    result = await app.arun(state, mode=mode, executor=executor, on_event=sink)
    wall = time.perf_counter() - t
    after = snapshot() if n else None
    m = result.metrics
    return Sample(
        workload=workload,
        mode=label or mode,
        repeat=repeat,
        wall_s=wall,
        lower_bound_s=m.lower_bound_s,
        efficiency=min(m.lower_bound_s / wall, 1.0) if wall > 0 else 1.0,
        parallelism=m.busy_s / wall if wall > 0 else 0.0,
        by_lane=dict(m.by_lane),
        calls=tuple(result.trace.calls),
        barriers=tuple(barriers),
        t0=started[0] if started else None,
        driver_pid=result.trace.driver_pid,
        final=jsonable(result.state),
        free_cores=free_cores(before, after, wall, n),
        run_mode=mode,
        blocked=tuple(blocked),
        cpu_workers=m.cpu_workers,
        marks=tuple(result.trace.marks),
    )


async def run_peer(
    workload: str,
    peer: Peer,
    repeat: int,
    cpu_workers: int,
    *,
    model: type[BaseModel] | None = None,
    n_cores: float | None = None,
) -> Sample:
    """One LangGraph run of the same work (``engine.bench.peers``), timed around it."""
    n = cores() if n_cores is None else n_cores
    before = snapshot() if n else None
    t0 = time.time()
    t = time.perf_counter()
    outcome = await peer.arun(model)
    wall = time.perf_counter() - t
    after = snapshot() if n else None
    calls = outcome.calls
    m = Trace(calls=calls).metrics(wall, cpu_workers)
    ends: dict[int, float] = {}
    for c in calls:
        ends[c.step] = max(ends.get(c.step, 0.0), c.end)
    return Sample(
        workload=workload,
        mode=PEER_MODE,
        repeat=repeat,
        wall_s=wall,
        lower_bound_s=m.lower_bound_s,
        efficiency=m.efficiency,
        parallelism=m.parallelism,
        by_lane=dict(m.by_lane),
        calls=calls,
        barriers=tuple(sorted(ends.items())),
        t0=t0,
        driver_pid=os.getpid(),
        final=outcome.final,
        free_cores=free_cores(before, after, wall, n),
        cpu_workers=cpu_workers,
    )


__all__ = ["Result", "Sample", "median_samples", "run_engine", "run_peer", "summarise"]

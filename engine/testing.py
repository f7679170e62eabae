"""Speedup regression checks for your own graphs, in pytest (``engine.testing``).

::

    from engine.testing import assert_parallel, assert_speedup

    def test_the_agents_run_in_parallel():
        app, state = build_my_graph()
        assert_parallel(app, state)           # cpu calls overlapped in distinct workers

    def test_the_speedup_holds():
        app, state = build_my_graph()
        assert_speedup(app, state, mode="parallel", baseline="sequential", min_of_ideal=0.8)

Both run the graph for real and judge it the way ``python -m engine bench
--check`` judges the built-in workloads (``engine.bench.check``):

- ``assert_speedup`` times ``baseline`` and ``mode`` in turns (alternating
  order), repeating until it has ``repeats`` *quiet* repeats, during which
  other processes left the cores free; the verdict is the median quiet repeat,
  against ``min_of_ideal`` x the ideal ratio computed from the run's own trace
  for the cores present (or an absolute ``min``). A machine too busy to time
  a speedup is a **skip, with the reason**, never a pass; unless the traces
  prove the parallelism is lost (the cpu calls never ran in two worker
  processes at once, or CPU-bound nodes ran on the thread lane), which fails
  whatever the load.
- ``assert_parallel`` proves parallel dispatch from one run's trace, whatever
  the load: every CPU-bound node (as a sequential run measures it) ran on the
  cpu lane in a worker process, and cpu calls overlapped in as many distinct
  workers as the cores allow.

They are plain functions that run their own event loop (call them from
``def`` tests, not ``async def`` ones). The pytest plugin (entry point
``pytest11``, loaded wherever engine is installed) adds the options
``--engine-repeats`` and ``--engine-deadline`` and the fixture
``engine_check``, which applies them and, when the test also uses
pytest-benchmark's ``benchmark`` fixture, records the mode's wall time there
(tracked across commits by ``--benchmark-compare``) with the speedup in
``extra_info``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .bench.check import Verdict


class ParallelismError(AssertionError):
    """A graph that should run in parallel did not; the message says why and what to do."""


@dataclass(frozen=True)
class ParallelProof:
    """What ``assert_parallel`` found: ``overlap`` worker processes ran cpu calls at
    once (``expected``: what the cores and the graph allow), in ``workers``
    (pids); ``cpu_bound``: the nodes a sequential run measured as CPU-bound."""

    overlap: int
    expected: int
    workers: tuple[int, ...]
    cpu_bound: tuple[str, ...] = field(default=())


def assert_speedup(
    app: Any,
    input: Any,
    *,
    mode: str = "parallel",
    baseline: str = "sequential",
    min_of_ideal: float | None = 0.8,
    min: float | None = None,
    executor: Executor | None = None,
    repeats: int = 3,
    max_repeats: int | None = None,
    deadline_s: float = 60.0,
    wait_s: float = 8.0,
    name: str = "graph",
    benchmark: Any = None,
    rounds: int = 3,
) -> Verdict:
    """Fail unless ``mode`` runs ``app`` on ``input`` at least ``min_of_ideal`` of the ideal
    speedup over ``baseline`` (or at least ``min`` x, when given); skip when the machine
    was too busy to time it. Returns the verdict (``engine.bench.check.Verdict``).

    ``repeats``: quiet repeats the verdict needs; ``max_repeats`` (default 3x) and
    ``deadline_s`` bound the search for them; ``wait_s``: how long to wait for a quiet
    moment before a repeat. ``benchmark``: pytest-benchmark's fixture, to record
    ``rounds`` timed runs of ``mode`` there (and the verdict in its ``extra_info``).
    """
    from .bench.check import Floor, GatePolicy

    if min is not None:
        min_of_ideal = None
    floor = Floor(
        workload=name,
        ratio="speedup",
        mode=mode,
        baseline=baseline,
        min=min,
        min_of_ideal=min_of_ideal,
    )
    floor.threshold(1.0)  # a floor with neither bound fails here, before anything runs
    policy = GatePolicy(
        min_repeats=repeats,
        max_repeats=max_repeats or max(3 * repeats, repeats + 6),
        deadline_s=deadline_s,
        wait_s=wait_s,
    )
    verdict: Verdict = _run(_measure(app, input, floor, policy, executor))
    if benchmark is not None:
        _record(benchmark, verdict, app, input, mode, executor, rounds)
    if verdict.status == "unmeasured":
        pytest.skip(f"too busy to measure a speedup: {verdict.describe()}")
    if verdict.status == "below":
        raise ParallelismError(_explain(verdict))
    return verdict


def assert_parallel(app: Any, input: Any, *, executor: Executor | None = None) -> ParallelProof:
    """Fail unless a parallel run of ``app`` proves, from its trace, that its CPU-bound
    work ran in distinct worker processes at the same time (see the module docstring)."""
    proof: ParallelProof = _run(_prove_parallel(app, input, executor))
    return proof


# -- measuring --------------------------------------------------------------------


def _run(coro: Any) -> Any:
    from . import run_sync

    try:
        asyncio.get_running_loop()
        in_loop = True
    except RuntimeError:
        in_loop = False
    if in_loop:
        coro.close()
        raise RuntimeError(
            "engine.testing's checks run their own event loop: call them from a plain "
            "'def test_...', not an 'async def' one"
        )
    return run_sync(coro)


async def _measure(
    app: Any, input: Any, floor: Any, policy: Any, executor: Executor | None
) -> Verdict:
    from .bench.check import check
    from .bench.cpushare import snapshot
    from .bench.harness import Run, gate_runs, repeats
    from .bench.machine import cores
    from .bench.samples import run_engine

    n_cores = float(cores())
    measurable = snapshot() is not None
    modes = (floor.baseline, floor.mode)
    if "parallel" in modes:
        await asyncio.to_thread(app.warm, executor)
    for mode in modes:  # excluded: imports, caches, and a first run's lane decisions
        await app.arun(input, mode=mode, executor=executor)

    def timed(mode: str) -> Run:
        async def go(r: int) -> Any:
            return await run_engine(floor.workload, mode, app, input, executor, r)

        return Run(mode, mode, go)

    samples = await gate_runs([timed(m) for m in modes], [floor], policy, n_cores, measurable)
    [verdict] = check([floor], repeats(samples), n_cores, policy)
    return verdict


def _explain(verdict: Verdict) -> str:
    m = verdict.deciding
    lines = [verdict.describe()]
    if m is not None and m.ideal is not None:
        rule = (
            f"{verdict.floor.min_of_ideal:g} x the ideal {m.ideal:.2f}x"
            if verdict.floor.min_of_ideal is not None
            else f"at least {verdict.floor.min:g}x"
        )
        lines.append(
            f"needed {m.threshold:.2f}x ({rule} for these calls on the cores free); measured "
            f"{m.ratio:.2f}x: wall ratio {m.raw or m.ratio:.2f}x x work cost {m.cost:.2f}"
        )
    if any(x.lost_parallelism for x in verdict.measured):
        lines.append(
            "the traces show the cpu calls never ran in parallel worker processes: a thread "
            "executor (executor=ThreadPoolExecutor) on the cpu lane, a pool of one worker, or "
            "CPU-bound nodes on the thread lane"
        )
    return "\n".join(lines)


def _record(
    benchmark: Any,
    verdict: Verdict,
    app: Any,
    input: Any,
    mode: str,
    executor: Executor | None,
    rounds: int,
) -> None:
    """pytest-benchmark: ``rounds`` timed runs of ``mode`` in its stats; the verdict in
    ``extra_info``."""
    m = verdict.deciding
    benchmark.extra_info.update(
        {
            "engine_ratio": verdict.floor.label,
            "engine_status": verdict.status,
            "engine_speedup": None if m is None else round(m.ratio, 4),
            "engine_ideal": None if m is None or m.ideal is None else round(m.ideal, 4),
            "engine_floor": None if m is None else round(m.threshold, 4),
            "engine_quiet_repeats": len(verdict.usable),
            "engine_repeats": len(verdict.measured),
        }
    )
    benchmark.pedantic(
        lambda: app.run(input, mode=mode, executor=executor), rounds=rounds, warmup_rounds=0
    )


async def _prove_parallel(app: Any, input: Any, executor: Executor | None) -> ParallelProof:
    from .bench.check import (
        cpu_bound_nodes,
        expected_overlap,
        thread_lane_cpu_work,
        worker_overlap,
    )
    from .bench.machine import cores

    n_cores = float(cores())
    if n_cores < 2:
        pytest.skip("one core here: nothing can run in parallel on this machine")
    alone = await app.arun(input, mode="sequential")
    bound = cpu_bound_nodes(alone.trace.calls)
    await asyncio.to_thread(app.warm, executor)
    await app.arun(input, mode="parallel", executor=executor)  # excluded: imports, lanes
    # A healthy pool can miss once on a loaded machine (a worker not scheduled until
    # the other's call ended); a lost parallelism misses every time.
    for _ in range(3):
        result = await app.arun(input, mode="parallel", executor=executor)
        calls = result.trace.calls
        driver = result.trace.driver_pid
        on_threads = thread_lane_cpu_work(calls, bound)
        expected = expected_overlap(calls, n_cores, also=on_threads)
        overlap = worker_overlap(calls, driver)
        workers = tuple(sorted({c.pid for c in calls if c.lane == "cpu" and c.pid != driver}))
        in_driver = sorted({c.node for c in calls if c.lane == "cpu" and c.pid == driver})
        problems = _structural(on_threads, in_driver, expected, executor)
        if problems:
            raise ParallelismError("; ".join(problems))
        if overlap >= expected:
            return ParallelProof(overlap, expected, workers, tuple(sorted(bound)))
    raise ParallelismError(
        f"cpu calls ran in at most {overlap} worker process(es) at once in 3 runs, "
        f"{expected} expected on {n_cores:g} cores (workers seen: {list(workers) or 'none'}): "
        "the pool has fewer workers than cores (ENGINE_CPU_WORKERS, memory_per_worker), "
        "or its calls run one at a time"
    )


def _structural(
    on_threads: tuple[str, ...],
    in_driver: list[str],
    expected: int,
    executor: Executor | None,
) -> list[str]:
    """Failures one run proves whatever the load, each with what to do."""
    problems = []
    if on_threads:
        problems.append(
            f"CPU-bound node(s) {', '.join(on_threads)} ran on the thread lane, where they "
            "share one GIL: declare them lane='cpu' (or @engine.cpu)"
        )
    if in_driver:
        why = (
            "the executor is a thread pool"
            if isinstance(executor, ThreadPoolExecutor)
            else "the cpu lane ran in the driver"
        )
        problems.append(
            f"cpu node(s) {', '.join(in_driver)} ran in the driver process ({why}): one GIL; "
            "pass a process pool (or no executor: engine's own)"
        )
    if expected == 0 and not problems:
        problems.append(
            "nothing here runs in parallel: no cpu-lane call and no CPU-bound node "
            "(a sequential run measured none above 20 ms of CPU)"
        )
    return problems


# -- the pytest plugin ----------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("engine", "engine speedup checks (engine.testing)")
    group.addoption(
        "--engine-repeats",
        type=int,
        default=3,
        help="quiet repeats each engine_check speedup needs (default 3)",
    )
    group.addoption(
        "--engine-deadline",
        type=float,
        default=60.0,
        help="seconds an engine_check speedup may search for quiet repeats (default 60)",
    )


@dataclass(frozen=True)
class Checks:
    """``assert_speedup`` and ``assert_parallel`` bound to the session's options (and
    to the test's pytest-benchmark fixture, when it uses one)."""

    options: Mapping[str, Any]
    benchmark: Any = None

    def speedup(self, app: Any, input: Any, **kwargs: Any) -> Verdict:
        kwargs.setdefault("repeats", self.options["repeats"])
        kwargs.setdefault("deadline_s", self.options["deadline_s"])
        kwargs.setdefault("benchmark", self.benchmark)
        return assert_speedup(app, input, **kwargs)

    def parallel(self, app: Any, input: Any, **kwargs: Any) -> ParallelProof:
        return assert_parallel(app, input, **kwargs)


@pytest.fixture
def engine_check(request: pytest.FixtureRequest) -> Checks:
    """``engine_check.speedup(app, input, ...)`` and ``engine_check.parallel(app, input)``."""
    options = {
        "repeats": request.config.getoption("--engine-repeats"),
        "deadline_s": request.config.getoption("--engine-deadline"),
    }
    benchmark = (
        request.getfixturevalue("benchmark") if "benchmark" in request.fixturenames else None
    )
    return Checks(options, benchmark)


__all__ = [
    "Checks",
    "ParallelProof",
    "ParallelismError",
    "assert_parallel",
    "assert_speedup",
    "engine_check",
]

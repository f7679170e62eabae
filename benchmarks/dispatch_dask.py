"""Cpu-lane dispatch overhead: the default loky pool vs a Dask cluster, in one run.

A trivial cpu node (it returns at once) is called through the engine's cpu
lane (``CpuLane.run``: pickle, submit, run in a worker, unpickle), so
what is timed is the round trip the lane adds to every cpu call:

- back-to-back: one call at a time, each right after the previous one;
- after idle: one call at a time, 50 ms apart (a super-step's first dispatch);
- burst: ``--burst`` calls at once, wall time divided by the calls.

Run it with ``python benchmarks/dispatch_dask.py`` (a LocalCluster of
``--workers`` processes) or ``--scheduler tcp://host:8786`` for a running
cluster. Every pool is started and warmed before it is timed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from engine.backends.dask import dask_executor
from engine.lanes import Call, CpuLane, Lanes
from engine.lanes.pool import default_executor, warm
from engine.spec import Task

IDLE_GAP_S = 0.05


def noop(arg: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Timing:
    """Per-call milliseconds of one executor."""

    name: str
    back_to_back_ms: float
    back_to_back_p90_ms: float
    after_idle_ms: float
    burst_ms: float


async def _call(runner: CpuLane) -> None:
    outcome = await runner.run(Call(Task("noop"), 0), noop, None)
    assert outcome.ok, outcome.failure


async def _one_at_a_time(runner: CpuLane, n: int, gap_s: float) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await _call(runner)
        samples.append((time.perf_counter() - t0) * 1e3)
        if gap_s:
            await asyncio.sleep(gap_s)
    return samples


async def measure(name: str, executor: Executor, calls: int, burst: int) -> Timing:
    """Time the cpu-lane round trip on ``executor``."""
    lanes = Lanes("parallel", executor)
    runner = lanes.cpu
    try:
        await _one_at_a_time(runner, 20, 0.0)  # warm: workers, function cache, connections
        b2b = await _one_at_a_time(runner, calls, 0.0)
        idle = await _one_at_a_time(runner, max(10, calls // 10), IDLE_GAP_S)
        t0 = time.perf_counter()
        await asyncio.gather(*(_call(runner) for _ in range(burst)))
        burst_ms = (time.perf_counter() - t0) * 1e3 / burst
    finally:
        await lanes.aclose()
    return Timing(
        name=name,
        back_to_back_ms=statistics.median(b2b),
        back_to_back_p90_ms=statistics.quantiles(b2b, n=10)[-1],
        after_idle_ms=statistics.median(idle),
        burst_ms=burst_ms,
    )


def report(timings: list[Timing]) -> None:
    """One row per executor: median ms per call, and the ratio to the first row (loky)."""
    base = timings[0]
    width = max(len(t.name) for t in timings)
    print(
        f"{'executor':<{width}}  {'back-to-back':>17}  {'(p90)':>8}  {'after idle':>17}  "
        f"{'burst':>17}"
    )
    for t in timings:
        cells = [
            f"{t.back_to_back_ms:7.3f} ms {t.back_to_back_ms / base.back_to_back_ms:5.1f}x",
            f"{t.back_to_back_p90_ms:5.2f} ms",
            f"{t.after_idle_ms:7.3f} ms {t.after_idle_ms / base.after_idle_ms:5.1f}x",
            f"{t.burst_ms:7.3f} ms {t.burst_ms / base.burst_ms:5.1f}x",
        ]
        print(f"{t.name:<{width}}  " + "  ".join(cells))
    print(
        f"median ms per call; burst = the burst's wall time / its calls; Nx = ratio to {base.name}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="timed calls per series")
    parser.add_argument("--burst", type=int, default=64, help="calls submitted at once")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (both pools)")
    parser.add_argument("--scheduler", default=None, help="a running Dask scheduler's address")
    args = parser.parse_args(argv)

    timings: list[Timing] = []
    loky = default_executor(args.workers)
    warm(loky)
    name = f"loky ({args.workers} processes)"
    timings.append(asyncio.run(measure(name, loky, args.calls, args.burst)))

    where = args.scheduler or f"LocalCluster, {args.workers} processes"
    cluster: dict[str, Any] = {} if args.scheduler else {"n_workers": args.workers}

    async def on_dask() -> Timing:
        async with dask_executor(args.scheduler, **cluster) as executor:
            return await measure(f"dask ({where})", executor, args.calls, args.burst)

    timings.append(asyncio.run(on_dask()))
    report(timings)


if __name__ == "__main__":  # required: Dask and loky start workers with 'spawn'
    main()

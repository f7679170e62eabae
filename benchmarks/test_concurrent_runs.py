"""Many concurrent runs on one event loop, the loop guard on: concurrency must pay.

200 runs of a 3-node io graph (three ``async def`` nodes, each awaiting 5 ms)
on one app, started together with ``asyncio.gather``, against the same 200
runs one after another. The runs on one loop share one loop guard and one
thread pool, so the concurrent batch costs about one run's waits plus the
scheduler's work; a guard (or pool) per run would add a sampler thread per
run waking every 10 ms. Each round times, back to back on one loop:

1. the 200 runs concurrently, guard on (the default ``loop_threshold``),
2. the same concurrently with the guard off (``loop_threshold=None``),
3. the 200 runs one after another, guard on;

the result is the ratio of medians over the rounds, (3) / (1), which must be
at least ``MIN_SPEEDUP``; (1) / (2) is the guard's cost under concurrency.

    pytest benchmarks/test_concurrent_runs.py        # with pytest-benchmark
    python benchmarks/test_concurrent_runs.py [--runs 200 --rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import operator
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel

from engine import END, START, Graph

RUNS = 200
ROUNDS = 3
MIN_SPEEDUP = 10.0
WAIT_S = 0.005


class Hops(BaseModel):
    hops: Annotated[int, operator.add] = 0


async def hop(state: Hops) -> dict[str, int]:
    await asyncio.sleep(WAIT_S)  # an API call's wait
    return {"hops": 1}


def io_graph() -> Any:
    g = Graph(Hops)
    for name in ("a", "b", "c"):
        g.add_node(name, hop, lane="io")
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", "c")
    g.add_edge("c", END)
    return g.compile()


@dataclass(frozen=True)
class Figures:
    runs: int
    concurrent_s: float  # median, guard on
    concurrent_unguarded_s: float  # median, guard off
    one_after_another_s: float  # median, guard on
    peak_threads: int  # the driver's threads at most, during the concurrent batches

    @property
    def speedup(self) -> float:
        return self.one_after_another_s / self.concurrent_s

    @property
    def guard_cost(self) -> float:
        return self.concurrent_s / self.concurrent_unguarded_s

    def lines(self) -> list[str]:
        return [
            f"{self.runs} runs of a 3-node io graph, medians over interleaved rounds:",
            f"  concurrent, guard on       {self.concurrent_s:8.3f} s",
            f"  concurrent, guard off      {self.concurrent_unguarded_s:8.3f} s",
            f"  one after another, guard on {self.one_after_another_s:7.3f} s",
            f"  speedup (one after another / concurrent, guard on): {self.speedup:.1f}x "
            f"(target >= {MIN_SPEEDUP:g}x)",
            f"  guard cost under concurrency (on / off): {self.guard_cost:.2f}x",
            f"  peak driver threads during the concurrent batches: {self.peak_threads}",
        ]


async def measure(runs: int = RUNS, rounds: int = ROUNDS) -> Figures:
    """Time the three batches in turns, ``rounds`` times, on the running loop."""
    app = io_graph()
    await app.arun({})  # first-run costs (imports, profile) out of the timings
    peak = threading.active_count()

    async def count_threads(done: asyncio.Event) -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, threading.active_count())
            await asyncio.sleep(0.005)

    async def batch(concurrent: bool, threshold: float | None) -> float:
        t0 = time.perf_counter()
        if concurrent:
            done = asyncio.Event()
            counting = asyncio.create_task(count_threads(done))
            results = await asyncio.gather(
                *(app.arun({}, loop_threshold=threshold) for _ in range(runs))
            )
            done.set()
            await counting
        else:
            results = [await app.arun({}, loop_threshold=threshold) for _ in range(runs)]
        elapsed = time.perf_counter() - t0
        assert all(r.state.hops == 3 for r in results)
        return elapsed

    on: list[float] = []
    off: list[float] = []
    seq: list[float] = []
    for _ in range(rounds):
        on.append(await batch(True, 0.05))
        off.append(await batch(True, None))
        seq.append(await batch(False, 0.05))
    return Figures(
        runs, statistics.median(on), statistics.median(off), statistics.median(seq), peak
    )


def test_concurrent_runs_guard_on(benchmark: Any, run: Any) -> None:
    """200 concurrent runs, guard on, at least 10x faster than one after another."""
    figures: list[Figures] = []
    benchmark.pedantic(lambda: figures.append(run(measure())), rounds=1, iterations=1)
    (f,) = figures
    benchmark.extra_info.update(
        speedup=round(f.speedup, 2),
        guard_cost=round(f.guard_cost, 2),
        concurrent_s=round(f.concurrent_s, 4),
        one_after_another_s=round(f.one_after_another_s, 4),
        peak_threads=f.peak_threads,
    )
    print("\n" + "\n".join(f.lines()))
    assert f.speedup >= MIN_SPEEDUP, "\n".join(f.lines())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    from engine import run_sync

    f: Figures = run_sync(measure(args.runs, args.rounds))
    print("\n".join(f.lines()))
    return 0 if f.speedup >= MIN_SPEEDUP else 1


if __name__ == "__main__":
    raise SystemExit(main())

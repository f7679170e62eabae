"""Soak: many runs of one small mixed graph on one pool; resources must stay bounded.

Each run is a fresh ``arun`` of the same compiled graph (an io node, two cpu
nodes on the default loky pool, a thread node, a fan-in), so every run
creates and closes its own lanes and process lane, and leaves a marker per
cpu call in the driver's marker directory while it runs. Driver RSS, live
child processes, open file descriptors, threads and the markers left behind
are sampled after a warm-up run, halfway, and at the end; the
script fails (exit status 1) when any of them grows past its bound.

``--crash-every N`` makes every Nth run also run a node that kills its
worker (``os._exit``) on each of its 3 attempts (the engine runs a crashed
call again until its 3rd crash), so the pool is broken and replaced 3 times
per such run: replacements must not leak either.

    python benchmarks/soak.py                      # 1,000 runs
    python benchmarks/soak.py --runs 200 --crash-every 20
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import operator
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import structlog
from pydantic import BaseModel

from engine import START, Graph, WorkerCrashedError
from engine.lanes.pool import default_executor, default_workers, warm
from engine.lanes.process import marker_base
from engine.procs import descendants

# Bounds: what a steady state may drift by between the first and last sample.
MAX_RSS_GROWTH_MB = 40.0
MAX_FD_GROWTH = 8
MAX_THREAD_GROWTH = 4


class SoakState(BaseModel):
    items: Annotated[list[str], operator.add] = []
    n: int = 0


async def fetch(state: SoakState) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"items": ["fetch"]}


def score(state: SoakState) -> dict[str, Any]:
    return {"items": [f"score:{sum(i * i for i in range(2000)) % 97}"]}


def parse(state: SoakState) -> dict[str, Any]:
    return {"items": [f"parse:{len(' '.join(map(str, range(500))))}"]}


def save(state: SoakState) -> dict[str, Any]:
    return {"n": len(state.items)}


def crash(state: SoakState) -> dict[str, Any]:
    os._exit(3)


def build(with_crash: bool) -> Any:
    g = Graph(SoakState)
    g.add_node("fetch", fetch)
    g.add_node("score", score, lane="cpu")
    g.add_node("parse", parse, lane="cpu")
    g.add_node("save", save, lane="thread")
    for name in ("fetch", "score", "parse"):
        g.add_edge(START, name)
    sources = ["fetch", "score", "parse"]
    if with_crash:
        g.add_node("crash", crash, lane="cpu")
        g.add_edge(START, "crash")
        sources.append("crash")
    g.add_edge(sources, "save")
    return g.compile()


# -- sampling (Linux /proc; no psutil needed) ----------------------------------


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def marker_dirs() -> int:
    """Markers left in this driver's marker directory (other drivers have their own)."""
    return sum(
        1 for d in Path(marker_base()).glob(f"engine-cpu-{os.getpid()}-*") for _ in d.iterdir()
    )


@dataclass(frozen=True)
class Sample:
    label: str
    runs: int
    rss_mb: float
    children: int
    fds: int
    threads: int
    marker_dirs: int

    def row(self) -> str:
        return (
            f"{self.label:<8} {self.runs:>6} {self.rss_mb:>9.1f} {self.children:>9} "
            f"{self.fds:>6} {self.threads:>8} {self.marker_dirs:>8}"
        )


def sample(label: str, runs: int) -> Sample:
    return Sample(
        label=label,
        runs=runs,
        rss_mb=rss_mb(),
        children=len(descendants(os.getpid())),
        fds=len(os.listdir("/proc/self/fd")),
        threads=threading.active_count(),
        marker_dirs=marker_dirs(),
    )


async def soak(runs: int, crash_every: int) -> list[Sample]:
    plain, crashing = build(False), build(True)
    warm(default_executor())
    await plain.arun({})
    samples = [sample("start", 0)]
    crashes = 0
    t0 = time.perf_counter()
    for i in range(1, runs + 1):
        if crash_every and i % crash_every == 0:
            try:
                await crashing.arun({})
            except WorkerCrashedError:
                crashes += 1
        else:
            result = await plain.arun({})
            assert result.state.n == 3, result.state
        if i == runs // 2:
            samples.append(sample("middle", i))
    wall = time.perf_counter() - t0
    samples.append(sample("end", runs))
    # The engine runs a crashed call again until its 3rd crash: 3 breaks per crashing run.
    print(
        f"{runs} runs in {wall:.1f} s ({1000 * wall / runs:.1f} ms/run), "
        f"{crashes} crashing runs ({3 * crashes} pool breaks)"
    )
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--crash-every", type=int, default=0, metavar="N")
    args = parser.parse_args(argv)
    # A script may configure logging (a library must not): keep the output to the numbers.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    print(f"pool: {default_workers()} loky workers; python {sys.version.split()[0]}")
    samples = asyncio.run(soak(args.runs, args.crash_every))
    print(
        f"{'sample':<8} {'runs':>6} {'rss (MB)':>9} {'children':>9} {'fds':>6} "
        f"{'threads':>8} {'markers':>8}"
    )
    for s in samples:
        print(s.row())
    first, last = samples[0], samples[-1]
    problems = []
    if last.rss_mb - first.rss_mb > MAX_RSS_GROWTH_MB:
        problems.append(f"RSS grew {last.rss_mb - first.rss_mb:.1f} MB")
    if last.fds - first.fds > MAX_FD_GROWTH:
        problems.append(f"open fds grew by {last.fds - first.fds}")
    if last.threads - first.threads > MAX_THREAD_GROWTH:
        problems.append(f"threads grew by {last.threads - first.threads}")
    if last.children > default_workers() + 2:  # the workers, plus loky's resource tracker
        problems.append(f"{last.children} child processes for {default_workers()} workers")
    if last.marker_dirs > first.marker_dirs:
        problems.append(f"{last.marker_dirs - first.marker_dirs} markers left behind")
    for p in problems:
        print(f"UNBOUNDED: {p}")
    print("bounded" if not problems else "NOT bounded")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

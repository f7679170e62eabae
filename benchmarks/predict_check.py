"""How good is ``trace.predict``? Predict 1 and 2 workers from 2-worker traces, and measure.

::

    python benchmarks/predict_check.py                    # the default workloads, 3 repeats
    python benchmarks/predict_check.py --workload cpu_fanout seed --repeat 5 --quick

For each workload: one graph, warmed up on a pool of 2 workers and a pool of
1; then, in turns (ABBA), a parallel run on 2 workers and one on 1. Each
2-worker run's trace predicts both worker counts (``Trace.predict``); the
table compares the median prediction with the median measured wall, and
counts the repeats during which other processes left the cores free (a busy
repeat measures the neighbour as much as the engine). Not part of the test
run: it takes about as long as the benchmark and wants a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from typing import Any

from engine import default_executor, run_sync
from engine.bench.check import GatePolicy
from engine.bench.harness import QUICK_SCALE
from engine.bench.machine import cores
from engine.bench.samples import Sample, run_engine
from engine.bench.targets import builtin_default, open_contexts, resolve


async def check(names: list[str], repeat: int, scale: float) -> list[dict[str, Any]]:
    targets = [resolve(n) for n in names]
    n_cores = float(cores())
    policy = GatePolicy()
    rows = []
    async with open_contexts(targets, print) as contexts:
        pools = {2: default_executor(2), 1: default_executor(1)}
        for w in targets:
            app, state = w.build(contexts[w.name], scale)
            for pool in pools.values():
                await asyncio.to_thread(app.warm, pool)
                await app.arun(state, mode="parallel", executor=pool)  # warm-up, excluded
            samples: dict[int, list[Sample]] = {1: [], 2: []}
            for r in range(repeat):
                order = (2, 1) if r % 2 == 0 else (1, 2)
                for n in order:
                    s = await run_engine(w.name, "parallel", app, state, pools[n], r)
                    samples[n].append(s)
            predicted = {
                n: statistics.median(s.trace().predict(workers=n).wall_s for s in samples[2])
                for n in (1, 2)
            }
            measured = {n: statistics.median(s.wall_s for s in samples[n]) for n in (1, 2)}
            quiet = sum(
                policy.is_quiet(a.free_cores, n_cores) and policy.is_quiet(b.free_cores, n_cores)
                for a, b in zip(samples[1], samples[2], strict=True)
            )
            queued = statistics.median(sum(c.queued_s for c in s.calls) for s in samples[2])
            row = {
                "workload": w.name,
                "measured_2": measured[2],
                "predicted_2": predicted[2],
                "measured_1": measured[1],
                "predicted_1": predicted[1],
                "quiet": quiet,
                "repeats": repeat,
                "queued_2": queued,
            }
            rows.append(row)
            print(_line(row), flush=True)
    return rows


def _line(r: dict[str, Any]) -> str:
    def err(n: int) -> str:
        return f"{r[f'predicted_{n}'] / r[f'measured_{n}'] - 1:+.1%}"

    return (
        f"| {r['workload']} | {r['measured_2']:.3f} | {r['predicted_2']:.3f} ({err(2)}) | "
        f"{r['measured_1']:.3f} | {r['predicted_1']:.3f} ({err(1)}) | {r['quiet']} of "
        f"{r['repeats']} | {r['queued_2']:.3f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", nargs="+", metavar="NAME", help="default: the default run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per worker count (3)")
    parser.add_argument("--quick", action="store_true", help=f"sizes x{QUICK_SCALE}")
    args = parser.parse_args(argv)
    names = args.workload or list(builtin_default())
    print(
        "| workload | 2 workers measured s | predicted from 2-worker traces | 1 worker "
        "measured s | predicted | quiet repeats | cpu calls preempted s (2 workers) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    run_sync(check(names, args.repeat, QUICK_SCALE if args.quick else 1.0))
    return 0


if __name__ == "__main__":
    sys.exit(main())

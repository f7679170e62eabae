"""How good is ``trace.predict``? Predict 1 and 2 workers from 2-worker traces, and measure.

::

    python benchmarks/predict_check.py                    # the default workloads, 3 repeats
    python benchmarks/predict_check.py --workload cpu_fanout seed --repeat 5 --quick

For each workload: one graph, warmed up on a pool of 2 workers and a pool of
1; then, in turns (ABBA), a parallel run on 2 workers and one on 1, after
waiting (up to 10 s) for the cores to be free. Each 2-worker run's trace
predicts both worker counts (``Trace.predict``). The table compares the
median prediction with the median measured wall over the *quiet* repeats,
those during which other processes left the cores free (a busy repeat
measures the neighbour as much as the engine: its calls wait for a core,
which a prediction leaves out), and over all repeats. Not part of the test
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
from engine.bench.cpushare import wait_free
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
            pairs: list[dict[int, Sample]] = []
            for r in range(repeat):
                await wait_free(n_cores, n_cores - policy.quiet_slack(n_cores), timeout_s=10)
                pair = {}
                for n in (2, 1) if r % 2 == 0 else (1, 2):
                    pair[n] = await run_engine(w.name, "parallel", app, state, pools[n], r)
                pairs.append(pair)
            quiet = [
                p for p in pairs if all(policy.is_quiet(s.free_cores, n_cores) for s in p.values())
            ]
            row = {"workload": w.name, "quiet": len(quiet), "repeats": repeat}
            for label, group in (("quiet", quiet), ("all", pairs)):
                for n in (1, 2):
                    row[f"{label}_measured_{n}"] = _median([p[n].wall_s for p in group])
                    row[f"{label}_predicted_{n}"] = _median(
                        [p[2].trace().predict(workers=n).wall_s for p in group]
                    )
            rows.append(row)
            print(_line(row), flush=True)
    return rows


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _line(r: dict[str, Any]) -> str:
    def cell(label: str, n: int) -> str:
        m, p = r[f"{label}_measured_{n}"], r[f"{label}_predicted_{n}"]
        if m is None or p is None:
            return "-"
        return f"{m:.3f} / {p:.3f} ({p / m - 1:+.1%})"

    return (
        f"| {r['workload']} | {r['quiet']} of {r['repeats']} | {cell('quiet', 2)} | "
        f"{cell('quiet', 1)} | {cell('all', 2)} | {cell('all', 1)} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", nargs="+", metavar="NAME", help="default: the default run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per worker count (3)")
    parser.add_argument("--quick", action="store_true", help=f"sizes x{QUICK_SCALE}")
    args = parser.parse_args(argv)
    names = args.workload or list(builtin_default())
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    print(
        "| workload | quiet repeats | 2 workers: measured / predicted s (quiet) | 1 worker "
        "(quiet) | 2 workers (all repeats) | 1 worker (all) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    run_sync(check(names, args.repeat, QUICK_SCALE if args.quick else 1.0))
    return 0


if __name__ == "__main__":
    sys.exit(main())

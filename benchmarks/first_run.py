"""What the first parallel run in a fresh process pays for the process pool, with and
without ``app.warm()``.

::

    python benchmarks/first_run.py --trials 5

Each trial is a fresh Python process (a cold pool) running a graph of two cpu
nodes of ~0.4 s of CPU each, three ways: its first run on a cold pool, its
second run; and, in another fresh process, ``app.warm()`` then its first
run. Prints each trial's wall times, the cores other processes left free
(Linux), and whether the two calls ran in two workers at once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, operator, sys, time
from typing import Annotated
from pydantic import BaseModel
from engine import END, START, Graph
from engine.bench.cpushare import free_cores, snapshot

class S(BaseModel):
    out: Annotated[list[int], operator.add] = []

def burn(state):
    t = time.thread_time()
    x = 0
    while time.thread_time() - t < 0.4:
        x += sum(i * i for i in range(1000))
    return {"out": [x % 7]}

g = Graph(S)
for n in ("a", "b"):
    g.add_node(n, burn, lane="cpu")
    g.add_edge(START, n)
    g.add_edge(n, END)
app = g.compile()

def timed():
    before = snapshot()
    t = time.perf_counter()
    r = app.run({})
    wall = time.perf_counter() - t
    a, b = (r.trace.for_node(n)[0] for n in ("a", "b"))
    return {
        "wall": wall,
        "free": free_cores(before, snapshot(), wall, 2),
        "spread": a.pid != b.pid and max(a.start, b.start) < min(a.end, b.end),
    }

out = {}
if sys.argv[1] == "warm":
    t = time.perf_counter()
    app.warm()
    out["warm_s"] = time.perf_counter() - t
out["first"] = timed()
out["second"] = timed()
print(json.dumps(out))
"""


def trial(kind: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, kind], capture_output=True, text=True, check=True
    )
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args(argv)
    cold_first, cold_second, warm_first, warm_cost = [], [], [], []
    for i in range(args.trials):
        for kind in ("cold", "warm") if i % 2 == 0 else ("warm", "cold"):
            r = trial(kind)
            first, second = r["first"], r["second"]
            assert isinstance(first, dict) and isinstance(second, dict)
            print(f"trial {i + 1} {kind}: {json.dumps(r)}", flush=True)
            if kind == "cold":
                cold_first.append(first["wall"])
                cold_second.append(second["wall"])
            else:
                warm_first.append(first["wall"])
                warm_cost.append(r["warm_s"])
    med = statistics.median
    print(
        f"medians over {args.trials} trials: cold pool first run {med(cold_first):.3f} s, "
        f"second run {med(cold_second):.3f} s; warm() {med(warm_cost):.3f} s, "
        f"then first run {med(warm_first):.3f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A cpu node returning one huge result: how long the event loop stalls, how much the driver holds.

The node builds its result in a worker (a ``str`` or ``bytes`` of SIZE MB,
or a list of short strings pickling to about SIZE MB), an io node follows
(reading nothing) so that the loop guard reports a block before the run
ends. Measured in the driver:

- the event loop's longest stall, from a task that sleeps 5 ms in a loop;
- the ``LoopBlocked`` events and the nodes they name;
- the growth of the driver's peak RSS (``VmHWM``, reset before the run)
  over its RSS before it, and that growth over the result's size: pickled
  (``bytes_out``) and, for the list, in memory (``sys.getsizeof`` of the
  list and its items).

    python benchmarks/big_result.py                    # str, bytes, list at 200 MB
    python benchmarks/big_result.py --kinds list --size 100 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from engine import START, Graph
from engine.lanes.pool import default_executor, warm


class State(BaseModel):
    blob: Any = None


def big(kind: str, size: int, state: Any) -> dict[str, Any]:
    if kind == "bytes":
        return {"blob": os.urandom(1) * size}
    if kind == "str":
        return {"blob": "x" * size}
    return {"blob": [f"item-{i:040d}" for i in range(size // 50)]}


async def after(state: Any) -> None:
    await asyncio.sleep(0.3)  # the loop guard reports blocks of the step before


def status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def in_memory(value: Any) -> int:
    if isinstance(value, list):
        return sys.getsizeof(value) + sum(sys.getsizeof(x) for x in value)
    return sys.getsizeof(value)


async def measure(kind: str, size: int) -> dict[str, Any]:
    g = Graph(State)
    g.add_node("big", functools.partial(big, kind, size), lane="cpu")
    g.add_node("after", after, reads=[])
    g.add_edge(START, "big")
    g.add_edge("big", "after")
    app = g.compile()
    events: list[Any] = []
    lags: list[float] = []
    stop = False

    async def ticker() -> None:
        while not stop:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - t - 0.005)

    Path("/proc/self/clear_refs").write_text("5")
    base = status("VmRSS")
    tick = asyncio.create_task(ticker())
    t0 = time.perf_counter()
    result = await app.arun({}, on_event=events.append)
    wall = time.perf_counter() - t0
    stop = True
    await tick
    grew = status("VmHWM") - base
    call = result.trace.for_node("big")[0]
    blocks = [e for e in events if type(e).__name__ == "LoopBlocked"]
    return {
        "kind": kind,
        "wall_s": wall,
        "max_lag_ms": max(lags) * 1e3,
        "blocks": [(round(b.lag_s * 1e3), list(b.nodes)) for b in blocks],
        "pickled_mb": call.bytes_out / 1e6,
        "in_memory_mb": in_memory(result.state.blob) / 1e6,
        "peak_growth_mb": grew / 1e6,
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default="str,bytes,list")
    ap.add_argument("--size", type=float, default=200, help="MB")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    warm(default_executor())
    for _ in range(args.repeats):
        for kind in args.kinds.split(","):
            r = await measure(kind, int(args.size * 1e6))
            print(
                f"{r['kind']:5} wall {r['wall_s']:.2f} s  max loop lag {r['max_lag_ms']:.0f} ms  "
                f"peak RSS +{r['peak_growth_mb']:.0f} MB = "
                f"{r['peak_growth_mb'] / r['pickled_mb']:.2f}x pickled "
                f"({r['pickled_mb']:.0f} MB), "
                f"{r['peak_growth_mb'] / r['in_memory_mb']:.2f}x in memory "
                f"({r['in_memory_mb']:.0f} MB)  LoopBlocked (ms, nodes): {r['blocks']}",
                flush=True,
            )


if __name__ == "__main__":
    asyncio.run(main())

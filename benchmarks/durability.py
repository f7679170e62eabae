"""What ``durability="async"`` and ``"exit"`` save against ``"sync"``, on PostgreSQL.

Runs the seed workload (``workloads.seed``: four agents, an API call then CPU
processing each, joined; the calls to the local LLM server) and the debate
workload (``workloads.graphs.debate``: rounds of arguments and critiques, more
steps per run) with a ``PostgresCheckpointer``, every run on a new thread, the
three durabilities interleaved (one run of each in turn, the order rotating
every round), after one warm-up run each. Prints the median and min wall time
per run and the checkpoints each run left.

    eval "$(bash scripts/postgres.sh | tail -n1)"
    python -m benchmarks.durability --rounds 15
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from typing import Any

from engine import CompiledGraph
from engine.checkpoint.postgres import PostgresCheckpointer
from workloads import genai, graphs, seed
from workloads.llm import LLMServer

DURABILITIES = ("sync", "async", "exit")


def workloads(
    url: str, cal: genai.Calibration, scale: float
) -> dict[str, tuple[CompiledGraph[Any], Any]]:
    app, state = seed.bench(url, api_s=0.05 * scale, cpu_s=0.02 * scale, cal=cal)
    debate, dstate = graphs.debate(
        url, rounds=4, argue_s=0.05 * scale, critique_s=0.02 * scale, cal=cal
    )
    return {"seed": (app, state), "debate": (debate, dstate)}


async def one(app: CompiledGraph[Any], state: Any, durability: str) -> tuple[float, int]:
    thread = f"bench-{uuid.uuid4().hex[:12]}"
    t0 = time.perf_counter()
    await app.arun(state, thread_id=thread, durability=durability)  # type: ignore[arg-type]
    wall = time.perf_counter() - t0
    assert app.checkpointer is not None
    saved = len(await app.checkpointer.history(thread))
    return wall, saved


async def main(dsn: str, rounds: int, scale: float) -> None:
    cal = genai.calibrate()
    pg = PostgresCheckpointer(dsn)
    await pg.setup()
    async with LLMServer() as server:
        try:
            await _compare(pg, workloads(server.base_url, cal, scale), rounds)
        finally:
            await pg.aclose()


async def _compare(
    pg: PostgresCheckpointer, built: dict[str, tuple[CompiledGraph[Any], Any]], rounds: int
) -> None:
    for name, (built_app, state) in built.items():
        app = CompiledGraph(built_app.plan, checkpointer=pg)
        app.warm()
        for d in DURABILITIES:
            await one(app, state, d)  # warm-up: connections, pool, pickled functions
        walls: dict[str, list[float]] = {d: [] for d in DURABILITIES}
        saved: dict[str, int] = {}
        for r in range(rounds):
            order = DURABILITIES[r % 3 :] + DURABILITIES[: r % 3]
            for d in order:
                wall, saved[d] = await one(app, state, d)
                walls[d].append(wall)
        base = statistics.median(walls["sync"])
        print(f"{name}: {rounds} interleaved runs each")
        for d in DURABILITIES:
            med = statistics.median(walls[d])
            print(
                f"  {d:5s} median {med * 1000:7.1f} ms  min {min(walls[d]) * 1000:7.1f} ms"
                f"  vs sync {(med - base) * 1000:+6.1f} ms  checkpoints/run {saved[d]}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    dsn = os.environ.get("ENGINE_TEST_PG_DSN")
    if not dsn:
        raise SystemExit('start PostgreSQL first: eval "$(bash scripts/postgres.sh | tail -n1)"')
    asyncio.run(main(dsn, args.rounds, args.scale))

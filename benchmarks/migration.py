"""The one-line migration, measured: the CEO-delegation app written for LangGraph
(``examples/ceo_langgraph.py``) run three ways, interleaved in one process.

    python benchmarks/migration.py                 # 3 rounds, nominal sizes
    python benchmarks/migration.py --rounds 5 --scale 0.5 --json out.json

- ``langgraph``: the file as written, on LangGraph;
- ``engine``: the same file with its ``from langgraph.graph import`` line
  switched to ``engine.langgraph`` (the conformance runner's rewrite), nothing
  else changed: same lanes as LangGraph (sync nodes on threads);
- ``engine+cpu``: the switched file built with ``cpu_lane=True``, its
  CPU-bound nodes in worker processes.

Every run's final state must equal LangGraph's (it exits 1 otherwise); the
result is each variant's median wall time and its speedup over LangGraph.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "ceo_langgraph.py"


def load(switched: bool) -> types.ModuleType:
    """The example module, as written or with its LangGraph imports switched to the engine."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.conformance.runner import switch_imports

    source = EXAMPLE.read_text()
    name = "ceo_langgraph_engine" if switched else "ceo_langgraph_as_written"
    module = types.ModuleType(name)
    module.__file__ = str(EXAMPLE)
    sys.modules[name] = module
    exec(
        compile(switch_imports(source) if switched else source, str(EXAMPLE), "exec"), vars(module)
    )
    return module


async def measure(rounds: int, scale: float) -> dict[str, Any]:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import engine
    from engine.lanes.pool import warm
    from workloads import genai, graphs
    from workloads.llm import LLMServer

    server = LLMServer.start_in_thread()
    try:
        cal = genai.calibrate()
        _, state = graphs.ceo_delegation(server.base_url, cal=cal, scale=scale)
        written, switched = load(False), load(True)
        apps = {
            "langgraph": written.build(server.base_url),
            "engine": switched.build(server.base_url),
            "engine+cpu": switched.build(server.base_url, cpu_lane=True),
        }
        await asyncio.to_thread(warm, engine.default_executor())
        walls: dict[str, list[float]] = {name: [] for name in apps}
        finals: dict[str, Any] = {}
        for name, app in apps.items():  # warm-up: imports, connections, workers
            finals[name] = await app.ainvoke(state)
        for r in range(rounds):
            names = list(apps)
            names = names[r % len(names) :] + names[: r % len(names)]
            for name in names:
                t0 = time.perf_counter()
                finals[name] = await apps[name].ainvoke(state)
                walls[name].append(time.perf_counter() - t0)
        same = all(_plain(f) == _plain(finals["langgraph"]) for f in finals.values())
        medians = {name: statistics.median(w) for name, w in walls.items()}
        return {
            "rounds": rounds,
            "scale": scale,
            "walls": walls,
            "median_s": medians,
            "speedup_vs_langgraph": {n: medians["langgraph"] / m for n, m in medians.items()},
            "same_final_state": same,
        }
    finally:
        server.stop()


def _plain(state: Any) -> Any:
    return json.loads(json.dumps(state, default=str, sort_keys=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--scale", type=float, default=1.0, help="size of the work (default 1)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    out = asyncio.run(measure(args.rounds, args.scale))
    for name, median in out["median_s"].items():
        speedup = out["speedup_vs_langgraph"][name]
        print(f"{name:11} median {median:6.3f} s  {speedup:4.2f}x LangGraph")
    print(f"same final state in all three: {out['same_final_state']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0 if out["same_final_state"] else 1


if __name__ == "__main__":
    sys.exit(main())

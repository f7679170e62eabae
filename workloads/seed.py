"""The seed workload: four agents, each an API call then CPU processing, joined.

::

    START -> ceo_call -> ceo_process --+
    START -> coo_call -> coo_process --+--> compile -> END
    START -> cfo_call -> cfo_process --+
    START -> cto_call -> cto_process --+

Each ``*_call`` is an io node waiting on an API (``asyncio.sleep`` of
``api_s`` here: a stand-in for the network; ``workloads.llm`` serves real
HTTP). Each ``*_process`` is a cpu node doing real pure-Python "GenAI
processing" of the answer (``workloads.genai.process``: tokenise, score,
generate), sized in calibrated units. Run it with ``python -m workloads.seed``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
from typing import Annotated, Any

from pydantic import BaseModel

import engine
from engine import END, START, CompiledGraph, Graph

from .genai import calibrate, process, units_for

AGENTS = ("ceo", "coo", "cfo", "cto")


def merge(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    """Reducer: merge per-agent dicts written in parallel."""
    return {**left, **right}


class SeedState(BaseModel):
    topic: str = "quarterly plan"
    api_s: float = 1.0
    units: int = 100
    answers: Annotated[dict[str, str], merge] = {}
    analyses: Annotated[dict[str, dict[str, Any]], merge] = {}
    report: str = ""


async def call_api(role: str, state: SeedState) -> dict[str, Any]:
    """Stand-in API call: waits like a network round trip, answers deterministically."""
    await asyncio.sleep(state.api_s)
    words = " ".join(f"{role} {state.topic} point {i}" for i in range(40))
    return {"answers": {role: words}}


def analyse(role: str, state: SeedState) -> dict[str, Any]:
    """Real CPU work on the agent's answer."""
    return {"analyses": {role: process(state.answers[role], state.units, seed=len(role))}}


def compile_report(state: SeedState) -> dict[str, Any]:
    parts = [f"{role}:{state.analyses[role].get('checksum', '')}" for role in AGENTS]
    return {"report": " | ".join(parts)}


def build() -> CompiledGraph:
    g = Graph(SeedState)
    for role in AGENTS:
        g.add_node(f"{role}_call", functools.partial(call_api, role), lane="io")
        g.add_node(f"{role}_process", functools.partial(analyse, role), lane="cpu")
        g.add_edge(START, f"{role}_call")
        g.add_edge(f"{role}_call", f"{role}_process")
    g.add_node("compile", compile_report, lane="inline")
    g.add_edge([f"{role}_process" for role in AGENTS], "compile")
    g.add_edge("compile", END)
    return g.compile()


def quiet_logs() -> None:
    """This script is an application, so it may configure structlog: warnings and up."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the seed workload in all three modes.")
    parser.add_argument("--api-s", type=float, default=1.0, help="seconds per API call")
    parser.add_argument("--cpu-s", type=float, default=0.5, help="CPU seconds per agent")
    args = parser.parse_args(argv)
    quiet_logs()
    cal = calibrate()
    units = units_for(args.cpu_s, cal)
    print(f"calibrated: {cal.ms_per_unit:.3f} ms per unit -> {units} units per agent")
    app = build()
    state = SeedState(api_s=args.api_s, units=units)
    engine.default_executor()  # warm the pool so no mode pays for process start-up
    app.run(state, mode="parallel")
    walls: dict[str, float] = {}
    finals = {}
    for mode in ("sequential", "concurrent", "parallel"):
        result = app.run(state, mode=mode)
        walls[mode] = result.metrics.wall_s
        finals[mode] = result.state
        m = result.metrics
        print(
            f"{mode:<11} wall {m.wall_s:6.3f} s  speedup {walls['sequential'] / m.wall_s:4.2f}x  "
            f"lower bound {m.lower_bound_s:5.3f} s  efficiency {m.efficiency:4.2f}  "
            f"worker pids {sorted(result.trace.pids('cpu'))}"
        )
    same = finals["sequential"] == finals["concurrent"] == finals["parallel"]
    print(f"same final state in all three modes: {same}")
    if not same:
        raise SystemExit("final states differ between modes")


if __name__ == "__main__":
    main()

"""The seed workload: four agents, each an API call then CPU processing, joined.

::

    START -> ceo_call -> ceo_process --+
    START -> coo_call -> coo_process --+--> compile -> END
    START -> cfo_call -> cfo_process --+
    START -> cto_call -> cto_process --+

Each ``*_call`` is an io node making a real chat-completions call over HTTP
(``workloads.llm``: the local server, or ``ENGINE_LLM_BASE_URL``) that takes
``api_s`` to answer. Each ``*_process`` is a cpu node doing real pure-Python
"GenAI processing" of the answer (``workloads.genai.process``: tokenise,
score, generate), sized in calibrated units. ``compile`` joins them inline.

Run it with ``python -m workloads.seed`` (it starts a local LLM server), or
as part of the benchmark (``python -m engine bench --workload seed``).

``build()`` without a ``base_url`` keeps the original stand-in for tests that
run no server: ``asyncio.sleep(api_s)`` in place of the call.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
from typing import Annotated, Any

from pydantic import BaseModel

import engine
from engine import END, START, CompiledGraph, Graph

from .genai import Calibration, calibrate, process, units_for

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


async def call_api(role: str, base_url: str | None, state: SeedState) -> dict[str, Any]:
    """The agent's API call: real HTTP when ``base_url`` is set, else a stand-in wait.

    The answer is padded with the role and topic, so every agent's text (and
    so its CPU work) differs, with the server's reply or without one.
    """
    if base_url is None:
        await asyncio.sleep(state.api_s)
        reply = ""
    else:
        from .llm import chat_once

        reply = await chat_once(
            base_url, f"As the {role}, answer on the {state.topic}.", latency_s=state.api_s
        )
    words = " ".join(f"{role} {state.topic} point {i}" for i in range(40))
    return {"answers": {role: f"{reply} {words}".strip()}}


def analyse(role: str, state: SeedState) -> dict[str, Any]:
    """Real CPU work on the agent's answer."""
    return {"analyses": {role: process(state.answers[role], state.units, seed=len(role))}}


def compile_report(state: SeedState) -> dict[str, Any]:
    parts = [f"{role}:{state.analyses[role].get('checksum', '')}" for role in AGENTS]
    return {"report": " | ".join(parts)}


def build(base_url: str | None = None) -> CompiledGraph[Any]:
    """The seed graph; API calls go to ``base_url`` (None: a stand-in ``asyncio.sleep``)."""
    g = Graph(SeedState)
    for role in AGENTS:
        g.add_node(f"{role}_call", functools.partial(call_api, role, base_url), lane="io")
        g.add_node(f"{role}_process", functools.partial(analyse, role), lane="cpu")
        g.add_edge(START, f"{role}_call")
        g.add_edge(f"{role}_call", f"{role}_process")
    g.add_node("compile", compile_report, lane="inline")
    g.add_edge([f"{role}_process" for role in AGENTS], "compile")
    g.add_edge("compile", END)
    return g.compile()


def bench(
    base_url: str | None,
    *,
    api_s: float = 0.3,
    cpu_s: float = 0.15,
    cal: Calibration | None = None,
    scale: float = 1.0,
) -> tuple[CompiledGraph[Any], SeedState]:
    """The seed graph at the benchmark's sizes (0.3 of the standalone script's, so the
    default benchmark stays near two minutes), every duration x ``scale``."""
    cal = cal or calibrate()
    state = SeedState(api_s=api_s * scale, units=units_for(cpu_s * scale, cal))
    return build(base_url), state


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
    from .llm import ENV_BASE_URL, LLMServer

    external = os.environ.get(ENV_BASE_URL)
    server = None if external else LLMServer.start_in_thread()
    try:
        base_url = external or (server.base_url if server else None)
        print(f"API calls go to {base_url}")
        _run_modes(build(base_url), SeedState(api_s=args.api_s, units=units))
    finally:
        if server is not None:
            server.stop()


def _run_modes(app: CompiledGraph[Any], state: SeedState) -> None:
    engine.default_executor()  # warm the pool so no mode pays for process start-up
    app.run(state, mode="parallel")
    walls: dict[str, float] = {}
    finals = {}
    for mode in ("sequential", "concurrent", "parallel"):
        result = app.run(state, mode=mode)
        walls[mode] = result.metrics.wall_s
        finals[mode] = result.state
        m = result.metrics
        driver = result.trace.driver_pid
        pids = sorted(result.trace.pids("cpu"))
        where = (
            f"cpu calls in worker pids {[p for p in pids if p != driver]}"
            if any(p != driver for p in pids)
            else f"cpu calls in the driver (pid {driver})"
        )
        print(
            f"{mode:<11} wall {m.wall_s:6.3f} s  speedup {walls['sequential'] / m.wall_s:4.2f}x  "
            f"lower bound {m.lower_bound_s:5.3f} s  efficiency {m.efficiency:4.2f}  {where}"
        )
    same = finals["sequential"] == finals["concurrent"] == finals["parallel"]
    print(f"same final state in all three modes: {same}")
    if not same:
        raise SystemExit("final states differ between modes")


if __name__ == "__main__":
    main()

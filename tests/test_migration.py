"""The CEO-delegation app written for LangGraph runs on engine.langgraph with only its import
switched, ends in LangGraph's state, and with its CPU nodes marked runs them in workers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import migration  # noqa: E402


async def test_the_example_as_written_and_switched_end_in_the_same_state() -> None:
    figures = await migration.measure(rounds=1, scale=0.05)
    assert figures["same_final_state"] is True
    assert set(figures["median_s"]) == {"langgraph", "engine", "engine+cpu"}


async def test_only_the_import_line_differs_and_marked_nodes_run_in_workers() -> None:
    from workloads import genai, graphs
    from workloads.llm import LLMServer

    source = migration.EXAMPLE.read_text()
    from tests.conformance.runner import switch_imports

    changed = [
        (a, b)
        for a, b in zip(source.splitlines(), switch_imports(source).splitlines(), strict=True)
        if a != b
    ]
    assert changed == [
        (
            "from langgraph.graph import END, START, StateGraph",
            "from engine.langgraph import END, START, StateGraph",
        )
    ]
    server = LLMServer.start_in_thread()
    try:
        _, state = graphs.ceo_delegation(server.base_url, cal=genai.calibrate(), scale=0.05)
        app = migration.load(True).build(server.base_url, cpu_lane=True)
        result = await app.app.arun(state)
    finally:
        server.stop()
    cpu = [c for c in result.trace.calls if c.lane == "cpu"]
    assert len(cpu) == 5 and all(c.pid != os.getpid() for c in cpu)


async def test_the_bench_target_runs_the_switched_app_next_to_langgraph(llm_url: str) -> None:
    """`bench examples.ceo_bench:ceo_langgraph --peers`: the target builds the switched
    file with its CPU nodes marked, its peer the file as written on LangGraph; both end
    in the same state, and the marked nodes ran in worker processes."""
    from engine.bench.targets import Workload, resolve
    from workloads import genai
    from workloads.suite import Environment

    target = resolve("examples.ceo_bench:ceo_langgraph")
    assert isinstance(target, Workload) and target.peer is not None
    env = Environment(base_url=llm_url, cal=genai.calibrate())
    app, state = target.build(env, 0.05)
    result = await app.arun(state, mode="parallel")
    outcome = await target.peer(env, 0.05, state).arun(type(result.state))
    assert outcome.final == result.state.model_dump(mode="json")
    assert {c.node for c in outcome.calls} == set(app.plan.nodes)
    cpu = [c for c in result.trace.calls if c.lane == "cpu"]
    assert len(cpu) == 5 and all(c.pid != os.getpid() for c in cpu)

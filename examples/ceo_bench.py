"""The CEO-delegation app written for LangGraph, as a benchmark target.

``examples/ceo_langgraph.py`` is the app as a LangGraph user writes it. This
target runs that file with its ``from langgraph.graph import`` line switched
to ``engine.langgraph`` (nothing else changed) and its CPU-bound nodes marked
``lane="cpu"``, in the engine's three modes, and the file as written on
LangGraph as the ``langgraph`` row::

    python -m engine bench examples.ceo_bench:ceo_langgraph --peers

It shares the built-in workloads' context (the local LLM server and the CPU
work's calibration), so its sizes and endpoint are ``ceo_delegation``'s.
"""

from __future__ import annotations

from typing import Any

from benchmarks.migration import load
from engine.bench.peers import StreamedPeer
from engine.bench.targets import Workload
from workloads import graphs
from workloads.suite import Environment, environment


def _input(env: Environment, scale: float) -> Any:
    """ceo_delegation's input at ``scale`` (the sizes of the work the agents do)."""
    _, state = graphs.ceo_delegation(env.base_url, cal=env.cal, scale=scale)
    return state


def _build(env: Environment, scale: float) -> tuple[Any, Any]:
    app = load(switched=True).build(env.base_url, cpu_lane=True)
    return app.app, _input(env, scale)  # the engine's compiled graph under the facade


def _peer(env: Environment, scale: float, state: Any) -> StreamedPeer:
    return StreamedPeer(load(switched=False).build(env.base_url), state)


ceo_langgraph = Workload(
    "ceo_langgraph",
    _build,
    "the LangGraph-style CEO app, import switched, CPU nodes marked; LangGraph as written",
    context=environment,
    needs=("genai", "llm"),
    peer=_peer,
)

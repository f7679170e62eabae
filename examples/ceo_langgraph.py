"""The CEO-delegation app written for LangGraph, as a LangGraph user writes it.

A CEO plans (an LLM call), four agents each draft (LLM), analyse (pure-Python
CPU work: tokenising, TF-IDF, BM25 over the draft) and review (LLM), then the
CEO compiles a report (CPU). Under LangGraph the async nodes overlap on the
event loop but the four analyses share one GIL on its threads.

Moving it to the engine is one line, the import below::

    from langgraph.graph import END, START, StateGraph         # as written
    from engine.langgraph import END, START, StateGraph        # on the engine

and, to run the CPU-bound nodes in worker processes, one keyword on them
(``lane="cpu"``, which only the engine accepts): ``build(cpu_lane=True)``.
``benchmarks/migration.py`` runs all three and compares them.
"""

from __future__ import annotations

import functools
from typing import Any

from langgraph.graph import END, START, StateGraph

from workloads.graphs import (
    AGENTS,
    DelegationState,
    Endpoint,
    agent_analyse,
    agent_draft,
    agent_review,
    ceo_plan,
    delegation_compile,
)


def build(base_url: str, *, cpu_lane: bool = False) -> Any:
    """The compiled app; ``cpu_lane`` marks the CPU-bound nodes (engine.langgraph only)."""
    api = Endpoint(base_url)
    cpu: dict[str, Any] = {"lane": "cpu"} if cpu_lane else {}
    g = StateGraph(DelegationState)
    g.add_node("ceo_plan", functools.partial(ceo_plan, api))
    g.add_edge(START, "ceo_plan")
    for role in AGENTS:
        g.add_node(f"{role}_draft", functools.partial(agent_draft, role, api))
        g.add_node(f"{role}_analyse", functools.partial(agent_analyse, role), **cpu)
        g.add_node(f"{role}_review", functools.partial(agent_review, role, api))
        g.add_edge("ceo_plan", f"{role}_draft")
        g.add_edge(f"{role}_draft", f"{role}_analyse")
        g.add_edge(f"{role}_analyse", f"{role}_review")
    g.add_node("compile", delegation_compile, **cpu)
    g.add_edge([f"{role}_review" for role in AGENTS], "compile")
    g.add_edge("compile", END)
    return g.compile()

"""The same workloads written in LangGraph (the optional ``langgraph`` extra).

``io_fanout``, ``cpu_fanout`` and ``ceo_delegation`` as a LangGraph user would
write them: the same state models, node functions, sizes and HTTP endpoint
as ``workloads.graphs``, so both frameworks do identical work and must end
in identical states. LangGraph runs ``async`` nodes on the event loop and
sync nodes on the loop's default thread pool, where pure-Python CPU work
shares one GIL: the ``concurrent`` row of engine's mode table.

Every node is wrapped to record a ``engine.NodeCall`` (where and when it ran,
its CPU seconds, LangGraph's step number), so the harness computes the same
metrics and draws the same timelines for both. The wrapper costs two clock
reads and an append per call. ``PeerRun`` is an ``engine.bench.peers.Peer``.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from engine import NodeCall
from engine.bench.peers import PeerOutcome

from . import graphs
from .graphs import AGENTS, Endpoint, Setup

_HOST = os.uname().nodename if hasattr(os, "uname") else "localhost"


def langgraph_missing() -> str:
    """Why the peers cannot run here ("" when they can)."""
    try:
        import langgraph.graph  # noqa: F401
    except ImportError as exc:
        return f"the LangGraph peers need langgraph: pip install 'engine[langgraph]' ({exc})"
    return ""


@dataclass
class Recorder:
    """The calls of one LangGraph run, as ``NodeCall`` records.

    Invariant: ``calls`` only grows during a run; the harness clears it before
    each run. Appends come from the loop thread and pool threads: a list
    append is atomic under the GIL.
    """

    calls: list[NodeCall] = field(default_factory=list)

    def clear(self) -> None:
        self.calls.clear()

    def add(self, node: str, lane: str, step: int, start: float, cpu_s: float) -> None:
        self.calls.append(
            NodeCall(
                node=node,
                step=step,
                lane=lane,
                attempt=1,
                pid=os.getpid(),
                thread=threading.get_native_id(),
                host=_HOST,
                start=start,
                end=time.time(),
                cpu_s=cpu_s,
            )
        )


def _step(config: Mapping[str, Any] | None) -> int:
    return int(((config or {}).get("metadata") or {}).get("langgraph_step", -1))


def traced_io(
    name: str, fn: Callable[[Any], Awaitable[Any]], rec: Recorder
) -> Callable[..., Awaitable[Any]]:
    """An async LangGraph node that runs ``fn(state)`` and records the call."""
    from langchain_core.runnables import RunnableConfig

    async def node(state: Any, config: RunnableConfig) -> Any:
        start = time.time()
        out = await fn(state)
        rec.add(name, "io", _step(config), start, 0.0)  # CPU not attributable on the loop
        return out

    node.__name__ = name
    return node


def traced_cpu(name: str, fn: Callable[[Any], Any], rec: Recorder) -> Callable[..., Any]:
    """A sync LangGraph node (LangGraph runs it on a thread) that records the call."""
    from langchain_core.runnables import RunnableConfig

    def node(state: Any, config: RunnableConfig) -> Any:
        start, cpu0 = time.time(), time.thread_time()
        out = fn(state)
        rec.add(name, "cpu", _step(config), start, time.thread_time() - cpu0)
        return out

    node.__name__ = name
    return node


@dataclass
class PeerRun:
    """A compiled LangGraph graph, its input, and the recorder of its calls."""

    graph: Any
    input: BaseModel
    recorder: Recorder
    model: type[BaseModel]

    def final(self, out: Any) -> Any:
        """LangGraph's output as the same JSON-able data as engine's final state."""
        data = out.model_dump() if isinstance(out, BaseModel) else dict(out)
        return self.model.model_validate(data).model_dump(mode="json")

    async def arun(self, model: type[BaseModel] | None = None) -> PeerOutcome:
        """One run: its final state and the calls the node wrappers recorded."""
        self.recorder.clear()
        out = await self.graph.ainvoke(self.input)
        return PeerOutcome(self.final(out), tuple(self.recorder.calls))


@dataclass(frozen=True)
class PeerSpec:
    name: str
    build: Callable[[Setup], PeerRun]


# -- the three graphs ---------------------------------------------------------------


def io_fanout(base_url: str | None = None, *, scale: float = 1.0) -> PeerRun:
    """``graphs.io_fanout`` in LangGraph."""
    from langgraph.graph import END, START, StateGraph

    _, state = graphs.io_fanout(base_url, scale=scale)
    api, rec = Endpoint(base_url), Recorder()
    g = StateGraph(graphs.BoardState)
    for role in AGENTS:
        g.add_node(role, traced_io(role, functools.partial(graphs.board_answer, role, api), rec))
        g.add_edge(START, role)
    g.add_node("compile", traced_io("compile", functools.partial(graphs.board_compile, api), rec))
    g.add_edge(list(AGENTS), "compile")
    g.add_edge("compile", END)
    return PeerRun(g.compile(), state, rec, graphs.BoardState)


def cpu_fanout(*, cal: graphs.Calibration | None = None, scale: float = 1.0) -> PeerRun:
    """``graphs.cpu_fanout`` in LangGraph: sync nodes, so threads under one GIL."""
    from langgraph.graph import END, START, StateGraph

    _, state = graphs.cpu_fanout(cal=cal, scale=scale)
    rec = Recorder()
    g = StateGraph(graphs.AnalysisState)
    for role in AGENTS:
        g.add_node(role, traced_cpu(role, functools.partial(graphs.analyse, role), rec))
        g.add_edge(START, role)
    g.add_node("compile", traced_cpu("compile", graphs.compile_analyses, rec))
    g.add_edge(list(AGENTS), "compile")
    g.add_edge("compile", END)
    return PeerRun(g.compile(), state, rec, graphs.AnalysisState)


def ceo_delegation(
    base_url: str | None = None, *, cal: graphs.Calibration | None = None, scale: float = 1.0
) -> PeerRun:
    """``graphs.ceo_delegation`` in LangGraph."""
    from langgraph.graph import END, START, StateGraph

    _, state = graphs.ceo_delegation(base_url, cal=cal, scale=scale)
    api, rec = Endpoint(base_url), Recorder()
    g = StateGraph(graphs.DelegationState)
    g.add_node("ceo_plan", traced_io("ceo_plan", functools.partial(graphs.ceo_plan, api), rec))
    g.add_edge(START, "ceo_plan")
    for role in AGENTS:
        draft, analyse, review = f"{role}_draft", f"{role}_analyse", f"{role}_review"
        g.add_node(draft, traced_io(draft, functools.partial(graphs.agent_draft, role, api), rec))
        g.add_node(analyse, traced_cpu(analyse, functools.partial(graphs.agent_analyse, role), rec))
        g.add_node(
            review, traced_io(review, functools.partial(graphs.agent_review, role, api), rec)
        )
        g.add_edge("ceo_plan", draft)
        g.add_edge(draft, analyse)
        g.add_edge(analyse, review)
    g.add_node("compile", traced_cpu("compile", graphs.delegation_compile, rec))
    g.add_edge([f"{role}_review" for role in AGENTS], "compile")
    g.add_edge("compile", END)
    return PeerRun(g.compile(), state, rec, graphs.DelegationState)


PEERS: Mapping[str, PeerSpec] = {
    s.name: s
    for s in (
        PeerSpec("io_fanout", lambda st: io_fanout(st.base_url, scale=st.scale)),
        PeerSpec("cpu_fanout", lambda st: cpu_fanout(cal=st.cal, scale=st.scale)),
        PeerSpec(
            "ceo_delegation", lambda st: ceo_delegation(st.base_url, cal=st.cal, scale=st.scale)
        ),
    )
}

__all__ = [
    "PEERS",
    "PeerRun",
    "Recorder",
    "ceo_delegation",
    "cpu_fanout",
    "io_fanout",
    "langgraph_missing",
]

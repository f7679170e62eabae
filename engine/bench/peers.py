"""LangGraph versions of a workload, timed and traced like the engine's runs.

A ``Peer`` is one LangGraph graph with its input. ``arun`` runs it once and
returns its final state (as the same JSON-able data as the engine's final
state, to compare them) and one ``NodeCall`` per node call, so the harness
computes the same metrics and draws the same timelines for both.

- The built-in workloads' peers (``workloads.peers``) wrap each node to record
  where it ran and its CPU seconds.
- A user's LangGraph graph (``--peer module:attr``) is run as it is and
  traced from LangGraph's own ``debug`` stream (a ``task`` event when a node
  starts, a ``task_result`` when it ends): wall times and steps, not CPU or
  thread, and lane ``"langgraph"``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel

from .. import NodeCall

#: The row label of a LangGraph run in the benchmark's tables and JSON.
PEER_MODE = "langgraph"


@dataclass(frozen=True)
class PeerOutcome:
    """One LangGraph run: its final state as JSON-able data, and its calls."""

    final: Any
    calls: tuple[NodeCall, ...]


class Peer(Protocol):
    """A LangGraph graph and its input; ``model`` is the engine run's state model,
    to give the final state the same shape as the engine's."""

    async def arun(self, model: type[BaseModel] | None) -> PeerOutcome: ...


def as_json(out: Any, model: type[BaseModel] | None) -> Any:
    """A final state as the same JSON-able data as the engine's ``model_dump(mode="json")``."""
    if model is not None:
        data = out.model_dump() if isinstance(out, BaseModel) else dict(out)
        return model.model_validate(data).model_dump(mode="json")
    if isinstance(out, BaseModel):
        return out.model_dump(mode="json")
    return out


def peer_input(value: Any) -> Any:
    """The engine input as LangGraph takes it: a dict (a TypedDict or pydantic state)."""
    return value.model_dump() if isinstance(value, BaseModel) else value


class StreamedPeer:
    """A user's LangGraph graph, traced from its ``debug`` stream (see the module doc).

    Invariant: ``graph`` and ``input`` never change; each ``arun`` records its
    own calls.
    """

    def __init__(self, graph: Any, input: Any) -> None:
        self.graph = graph
        self.input = peer_input(input)

    def __repr__(self) -> str:
        return f"<StreamedPeer {type(self.graph).__name__}>"

    async def arun(self, model: type[BaseModel] | None) -> PeerOutcome:
        started: dict[str, tuple[float, int]] = {}
        calls: list[NodeCall] = []
        final: Any = None
        pid, host = os.getpid(), socket.gethostname()
        async for mode, chunk in self.graph.astream(self.input, stream_mode=["debug", "values"]):
            if mode == "values":
                final = chunk
                continue
            kind, payload = chunk.get("type"), chunk.get("payload") or {}
            at = _epoch(chunk.get("timestamp"))
            if kind == "task":
                started[payload.get("id", "")] = (at, int(chunk.get("step", -1)))
            elif kind == "task_result" and payload.get("id") in started:
                start, step = started.pop(payload["id"])
                calls.append(
                    NodeCall(
                        node=str(payload.get("name", "?")),
                        step=step,
                        lane=PEER_MODE,
                        attempt=1,
                        pid=pid,
                        thread=0,
                        host=host,
                        start=start,
                        end=at,
                        cpu_s=0.0,
                        ok=payload.get("error") is None,
                    )
                )
        return PeerOutcome(as_json(final, model), tuple(calls))


def _epoch(stamp: Any) -> float:
    if isinstance(stamp, datetime):
        return stamp.timestamp()
    return datetime.fromisoformat(str(stamp)).timestamp()


__all__ = ["PEER_MODE", "Peer", "PeerOutcome", "StreamedPeer", "as_json", "peer_input"]

"""LangGraph's type names, error classes and not-yet features, for ``engine.langgraph``.

Apps import these from ``langgraph.types``, ``langgraph.config`` and
``langgraph.errors`` for annotations and ``except`` clauses:

- **types** (``StreamWriter``, ``StreamMode``, ``All``, ``Durability``,
  ``RunnableConfig``): the same shapes, so annotations keep meaning what they
  meant;
- **interrupts** (``Interrupt``, ``GraphInterrupt``, ``NodeInterrupt``): the
  engine's own (``engine.interrupts``);
- **subgraphs**: ``ParentCommand``, what a subgraph's node returning
  ``Command(graph=Command.PARENT, ...)`` raises to reach the parent
  (``engine.subgraph_node``);
- **timeouts**: ``TimeoutPolicy`` (its ``run_timeout``), and
  ``NodeTimeoutError``, what a node past its timeout raises under
  ``engine.langgraph`` (an engine ``NodeError``; like LangGraph's, not a
  builtin ``TimeoutError``);
- **not-yet features** (``Overwrite``, ``get_store``): using one raises
  ``NotImplementedError`` naming what is missing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any, Literal

from .errors import NodeError
from .errors import NodeTimeoutError as EngineTimeoutError
from .interrupts import GraphBubbleUp, GraphInterrupt, Interrupt, NodeInterrupt
from .subgraph_node import ParentCommand

#: What ``get_stream_writer()`` returns.
StreamWriter = Callable[[Any], None]

#: LangGraph's stream modes (every one streams under the engine).
StreamMode = Literal["values", "updates", "checkpoints", "tasks", "debug", "messages", "custom"]

#: ``interrupt_before="*"``: every node.
All = Literal["*"]

#: When a run's checkpoints are written (``durability=`` on invoke and stream).
Durability = Literal["sync", "async", "exit"]

#: A node's ``config`` parameter: a dict (LangChain's ``RunnableConfig`` is a TypedDict of it).
RunnableConfig = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class GraphOutput:
    """What ``invoke(..., version="v2")`` returns: the output, and the run's interrupts."""

    value: Any
    interrupts: tuple[Any, ...] = ()


def stream_part(mode: str, chunk: Any, ns: tuple[str, ...] = ()) -> dict[str, Any]:
    """A ``version="v2"`` stream part: ``{"type", "ns", "data"}`` (values add ``interrupts``:
    the questions a step stopped on, taken out of the chunk's ``"__interrupt__"``)."""
    interrupts: tuple[Any, ...] = ()
    if mode == "values" and isinstance(chunk, dict) and "__interrupt__" in chunk:
        chunk = dict(chunk)
        interrupts = tuple(chunk.pop("__interrupt__"))
    part: dict[str, Any] = {"type": mode, "ns": ns, "data": chunk}
    if mode == "values":
        part["interrupts"] = interrupts
    return part


def _missing(name: str, what: str) -> NotImplementedError:
    return NotImplementedError(
        f"{name} is not supported by engine.langgraph yet: {what}. "
        "See docs/migrating.md for what works."
    )


class Overwrite:
    """LangGraph's ``Overwrite`` (a write that bypasses the reducer): not supported yet."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise _missing("Overwrite", "writes that bypass a channel's reducer are not built yet")


def get_store() -> Any:
    """LangGraph's long-term memory store: not supported yet."""
    raise _missing("get_store", "stores (long-term memory across threads) are not built yet")


class EmptyInputError(Exception):
    """A graph invoked with empty input (LangGraph's class; the engine never raises it)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TimeoutPolicy:
    """A node's timeout, as ``add_node(..., timeout=TimeoutPolicy(run_timeout=...))``:
    seconds (or a ``timedelta``) a call may run. ``idle_timeout`` (a timeout reset by the
    node's activity) is not supported by the engine."""

    run_timeout: float | dt.timedelta | None = None
    idle_timeout: float | dt.timedelta | None = None
    refresh_on: Literal["auto", "heartbeat"] = "auto"


class NodeTimeoutError(NodeError):
    """A node call ran past its ``timeout`` (``node``, ``step``, ``lane``, ``attempt``,
    ``timeout``: the seconds it was given)."""

    def __init__(self, message: str, *, timeout: float | None = None, **where: Any) -> None:
        super().__init__(message, **where)
        self.timeout = timeout


def langgraphs_error(err: NodeError, timeout: float | None) -> NodeError:
    """A failed call's error as an ``engine.langgraph`` error handler sees it: a timeout is
    LangGraph's ``NodeTimeoutError`` class (so ``isinstance(error.error, NodeTimeoutError)``
    holds, as under LangGraph), anything else ``err`` itself."""
    if not isinstance(err, EngineTimeoutError):
        return err
    shown = NodeTimeoutError(
        err.args[0] if err.args else "",
        node=err.node,
        step=err.step,
        lane=err.lane,
        attempt=err.attempt,
        error_type=err.error_type,
        error_message=err.error_message,
        timeout=timeout,
    )
    shown.__cause__ = err.__cause__
    return shown


__all__ = [
    "All",
    "Durability",
    "EmptyInputError",
    "GraphBubbleUp",
    "GraphInterrupt",
    "GraphOutput",
    "Interrupt",
    "NodeInterrupt",
    "NodeTimeoutError",
    "Overwrite",
    "ParentCommand",
    "RunnableConfig",
    "StreamMode",
    "StreamWriter",
    "TimeoutPolicy",
    "get_store",
    "langgraphs_error",
    "stream_part",
]

"""Typed events: order, failure reporting, and observers that cannot break a run."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from engine import (
    START,
    Graph,
    NodeError,
    NodeFailed,
    NodeFinished,
    NodeStarted,
    RunFinished,
    RunStarted,
    StepFinished,
    StepStarted,
)
from tests.support import State, append, fail


def chain() -> Graph:
    g = Graph(State)
    g.add_node("a", functools.partial(append, "items", "a"), lane="cpu")
    g.add_node("b", functools.partial(append, "items", "b"), lane="inline")
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    return g


async def test_event_order(mode: str) -> None:
    """astream yields run, step and node events in the order they happen."""
    events = [e async for e in chain().compile().astream({}, mode=mode)]
    kinds = [type(e) for e in events]
    assert kinds == [
        RunStarted,
        StepStarted, NodeStarted, NodeFinished, StepFinished,
        StepStarted, NodeStarted, NodeFinished, StepFinished,
        RunFinished,
    ]  # fmt: skip
    assert events[-1].status == "done" and events[-1].steps == 2
    assert len({e.run_id for e in events}) == 1


async def test_failure_events_then_error() -> None:
    """A failing node yields NodeFailed, then iterating raises the NodeError."""
    g = Graph(State)
    g.add_node("x", functools.partial(fail, "nope"), lane="inline")
    g.add_edge(START, "x")
    seen: list[Any] = []
    with pytest.raises(NodeError, match="nope"):
        async for e in g.compile().astream({}):
            seen.append(e)
    failed = [e for e in seen if isinstance(e, NodeFailed)]
    assert len(failed) == 1 and failed[0].node == "x" and not failed[0].will_retry
    assert isinstance(seen[-1], RunFinished) and seen[-1].status == "failed"


async def test_broken_sink_is_dropped() -> None:
    """An observer that raises is dropped; the run still completes."""
    calls: list[Any] = []

    def sink(event: Any) -> None:
        calls.append(event)
        raise RuntimeError("observer bug")

    r = await chain().compile().arun({}, on_event=sink)
    assert r.state.items == ["a", "b"] and len(calls) == 1

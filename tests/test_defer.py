"""``add_node(..., defer=True)``: the node runs only once no other node has a task in the
next step (LangGraph's reading): a fan-in after branches of unequal length runs once, at
the end, on every mode; a trigger held back survives a failed step and its resume."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

import pytest

from engine import START, Graph
from engine.checkpoint import MemoryCheckpointer


class S(TypedDict):
    items: Annotated[list[str], operator.add]
    summary: str


def item(name: str) -> Any:
    def node(state: S) -> dict[str, Any]:
        return {"items": [name]}

    node.__name__ = name
    return node


def aggregate(state: S) -> dict[str, Any]:
    return {"summary": ",".join(state["items"])}


def build(defer: bool, middle: Any = None) -> Graph[S]:
    """START -> a -> aggregate, and START -> b1 -> b2 -> c -> aggregate."""
    g: Graph[S] = Graph(S)
    g.add_node("a", item("a"))
    g.add_node("b1", item("b1"))
    g.add_node("b2", middle or item("b2"), lane="thread")  # FAIL is this process's
    g.add_node("c", item("c"))
    g.add_node("aggregate", aggregate, defer=defer)
    g.add_edge(START, "a")
    g.add_edge(START, "b1")
    g.add_edge("b1", "b2")
    g.add_edge("b2", "c")
    g.add_edge("a", "aggregate")
    g.add_edge("c", "aggregate")
    return g


def test_a_deferred_fan_in_runs_once_after_the_longest_branch(mode: str) -> None:
    result = build(True).compile().run({"items": [], "summary": ""}, mode=mode)
    calls = sorted((c.step, c.node) for c in result.trace.calls)
    assert calls == [(0, "a"), (0, "b1"), (1, "b2"), (2, "c"), (3, "aggregate")]
    assert result.state["summary"] == "a,b1,b2,c"


def test_without_defer_it_runs_as_soon_as_each_source_is_done() -> None:
    result = build(False).compile().run({"items": [], "summary": ""})
    assert [c.step for c in result.trace.for_node("aggregate")] == [1, 3]


FAIL = {"b2": True}


def flaky_b2(state: S) -> dict[str, Any]:
    if FAIL["b2"]:
        raise ConnectionError("b2 lost its connection")
    return {"items": ["b2"]}


def test_a_held_trigger_survives_a_failure_and_its_resume() -> None:
    """aggregate is held while b2 fails; the checkpoint keeps it held, so the resumed run
    runs it once, at the end (not never, not twice)."""
    app = build(True, flaky_b2).compile(MemoryCheckpointer())
    FAIL["b2"] = True
    with pytest.raises(ConnectionError):
        app.invoke({"items": [], "summary": ""}, thread_id="t")
    FAIL["b2"] = False
    result = app.run(None, thread_id="t")
    assert [(c.step, c.node) for c in result.trace.calls][-1] == (3, "aggregate")
    assert len(result.trace.for_node("aggregate")) == 1
    assert result.state["summary"] == "a,b1,b2,c"


def test_a_deferred_node_start_triggers_waits_for_a_loop_to_end(mode: str) -> None:
    """START triggers the loop and the deferred node at once: it is held (in the first
    cursor's bookkeeping) until the loop stops, then runs once, as LangGraph runs it."""

    def loop(state: S) -> dict[str, Any]:
        return {"items": ["l"]}

    def again(state: S) -> str:
        return "loop" if len(state["items"]) < 3 else "__end__"

    g: Graph[S] = Graph(S)
    g.add_node("loop", loop)
    g.add_node("aggregate", aggregate, defer=True)
    g.add_edge(START, "loop")
    g.add_edge(START, "aggregate")
    g.add_conditional_edges("loop", again)
    result = g.compile(MemoryCheckpointer()).run(
        {"items": [], "summary": ""}, mode=mode, thread_id="t"
    )
    calls = sorted((c.step, c.node) for c in result.trace.calls)
    assert calls == [(0, "loop"), (1, "loop"), (2, "loop"), (3, "aggregate")]
    assert result.state["summary"] == "l,l,l"


def test_a_send_to_a_deferred_node_is_not_held() -> None:
    """As LangGraph: defer holds the edge's trigger; a Send to the node runs next step."""
    from engine import Send

    def fan(state: S) -> list[Send]:
        return [Send("aggregate", {"items": ["s"], "summary": ""})]

    g: Graph[S] = Graph(S)
    for name in ("a", "b", "c"):
        g.add_node(name, item(name))
    g.add_node("aggregate", aggregate, defer=True)
    g.add_edge(START, "a")
    g.add_edge(START, "b")
    g.add_conditional_edges("a", fan)
    g.add_edge("b", "c")
    g.add_edge("c", "aggregate")
    result = g.compile().run({"items": [], "summary": ""})
    calls = sorted((c.step, c.node, c.index) for c in result.trace.calls)
    assert calls == [
        (0, "a", -1), (0, "b", -1), (1, "aggregate", 0), (1, "c", -1), (2, "aggregate", -1),
    ]  # fmt: skip

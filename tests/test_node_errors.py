"""What a failed run raises, as LangGraph raises it: a node's own exception (the engine's
details as notes, its record kept), GraphRecursionError at LangGraph's step count and
default limit, InvalidUpdateError for two writes to a plain channel in one step. Each
behaviour that LangGraph defines is checked against LangGraph run here."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

import pytest

from engine import START, Graph, InvalidUpdateError, NodeTimeoutError
from engine.errors import GraphRecursionError, NodeError, RecursionLimitError, node_error_of
from engine.options import DEFAULT_RECURSION_LIMIT, RunOptions

LANES = ("io", "thread", "inline", "cpu")


class S(TypedDict):
    n: int
    log: Annotated[list[str], operator.add]


def missing_key(state: S) -> dict[str, Any]:
    return {"n": {}["nope"]}  # type: ignore[index]


async def async_missing_key(state: S) -> dict[str, Any]:
    return missing_key(state)


def count(state: S) -> dict[str, Any]:
    return {"n": state["n"] + 1, "log": ["c"]}


def forever(state: S) -> str:
    return "count"


def set_n(value: int) -> Callable[[S], dict[str, Any]]:
    def node(state: S) -> dict[str, Any]:
        return {"n": value}

    return node


@pytest.mark.parametrize("lane", LANES)
async def test_a_nodes_exception_reaches_the_caller_as_its_own_type(lane: str) -> None:
    """An existing `except KeyError:` keeps working on every lane and mode; the notes say
    node, step, lane and attempt; node_error_of gives the engine's record."""
    g = Graph(S)
    g.add_node("look", async_missing_key if lane == "io" else missing_key, lane=lane)
    g.add_edge(START, "look")
    app = g.compile()
    for mode in ("sequential", "concurrent", "parallel"):
        with pytest.raises(KeyError) as info:
            await app.ainvoke({"n": 0, "log": []}, mode=mode)
        assert type(info.value) is KeyError and info.value.args == ("nope",)
        notes = "\n".join(info.value.__notes__)
        assert "During task with name 'look' (step 0" in notes and "attempt 1)" in notes
        record = node_error_of(info.value)
        assert record is not None and (record.node, record.step) == ("look", 0)
        assert "missing_key" in record.traceback_text
        if lane == "cpu" and mode == "parallel":  # from a worker: its traceback is a note
            assert "Traceback in the worker process" in notes


def test_the_same_exception_type_as_langgraph() -> None:
    lg = pytest.importorskip("langgraph.graph")
    built = lg.StateGraph(S)
    built.add_node("look", missing_key)
    built.add_edge(lg.START, "look")
    with pytest.raises(KeyError) as theirs:
        built.compile().invoke({"n": 0, "log": []})
    g = Graph(S)
    g.add_node("look", missing_key)
    g.add_edge(START, "look")
    with pytest.raises(KeyError) as ours:
        g.compile().invoke({"n": 0, "log": []})
    assert type(ours.value) is type(theirs.value) and ours.value.args == theirs.value.args


async def test_the_engines_own_errors_stay_engine_errors() -> None:
    """A timeout is the engine's (NodeTimeoutError, also a TimeoutError), not a node's."""
    import asyncio

    async def slow(state: S) -> dict[str, Any]:
        await asyncio.sleep(5)
        return {}

    g = Graph(S)
    g.add_node("slow", slow, timeout=0.05)
    g.add_edge(START, "slow")
    with pytest.raises(NodeTimeoutError) as info:
        await g.compile().ainvoke({"n": 0, "log": []})
    assert isinstance(info.value, NodeError) and node_error_of(info.value) is info.value


def _loop_graph(builder: Any, start: Any) -> Any:
    builder.add_node("count", count)
    builder.add_edge(start, "count")
    builder.add_conditional_edges("count", forever)
    return builder


@pytest.mark.parametrize("limit", [1, 3, 6])
def test_graph_recursion_error_at_langgraphs_step_count(limit: int) -> None:
    """A loop stops after the same number of node calls as LangGraph's, with a
    GraphRecursionError (a RecursionError) naming the limit."""
    lg = pytest.importorskip("langgraph.graph")
    from langgraph.errors import GraphRecursionError as TheirError

    theirs = []
    app = _loop_graph(lg.StateGraph(S), lg.START).compile()
    with pytest.raises(TheirError):
        for chunk in app.stream({"n": 0, "log": []}, {"recursion_limit": limit}):
            theirs.append(chunk)
    ours = []
    mine = _loop_graph(Graph(S), START).compile()
    with pytest.raises(GraphRecursionError, match=f"recursion_limit={limit}") as info:
        mine.invoke(
            {"n": 0, "log": []},
            config={"recursion_limit": limit},
            on_event=lambda e: ours.append(e) if type(e).__name__ == "NodeFinished" else None,
        )
    assert isinstance(info.value, RecursionError) and isinstance(info.value, RecursionLimitError)
    assert len(ours) == len(theirs)


def test_the_default_recursion_limit_is_langgraphs() -> None:
    pytest.importorskip("langgraph")
    from langgraph._internal._config import DEFAULT_RECURSION_LIMIT as THEIRS

    assert RunOptions().recursion_limit == DEFAULT_RECURSION_LIMIT == int(THEIRS)


def _conflict(builder: Any, start: Any) -> Any:
    builder.add_node("a", set_n(1))
    builder.add_node("b", set_n(2))
    builder.add_edge(start, "a")
    builder.add_edge(start, "b")
    return builder


def test_two_writes_to_a_plain_channel_in_one_step_is_invalid_update_error() -> None:
    lg = pytest.importorskip("langgraph.graph")
    from langgraph.errors import InvalidUpdateError as TheirError

    with pytest.raises(TheirError):
        _conflict(lg.StateGraph(S), lg.START).compile().invoke({"n": 0, "log": []})
    with pytest.raises(InvalidUpdateError, match="'n'"):
        _conflict(Graph(S), START).compile().invoke({"n": 0, "log": []})

"""Stream modes on engine.Graph (values, updates, custom) against LangGraph's chunks for the
same graph, the sync ``stream``, and ``invoke`` called inside a running event loop."""

from __future__ import annotations

import asyncio
import functools
import operator
import sys
from typing import Annotated, Any, TypedDict

import cloudpickle
import pytest

from engine import END, START, Graph
from engine.streaming import get_stream_writer

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class S(TypedDict):
    x: int
    log: Annotated[list[str], operator.add]


def a(writer: Any, s: S) -> dict[str, Any]:
    writer()({"progress": "a"})
    return {"x": s["x"] + 1, "log": ["a"]}


def b(writer: Any, s: S) -> dict[str, Any]:
    writer()("b-chunk")
    return {"log": ["b"]}


async def c(writer: Any, s: S) -> dict[str, Any]:
    writer()("c-chunk")
    await asyncio.sleep(0)
    return {"log": ["c"]}


def d(s: S) -> dict[str, Any]:
    return {"log": [f"d saw {len(s['log'])}"]}


def build(g: Any, start: str, end: str, writer: Any, lane: str | None) -> Any:
    extra = {} if lane is None else {"lane": lane}
    g.add_node("a", functools.partial(a, writer), **extra)
    g.add_node("b", functools.partial(b, writer), **extra)
    g.add_node("c", functools.partial(c, writer))
    g.add_node("d", d, **extra)
    g.add_edge(start, "a")
    g.add_edge("a", "b")
    g.add_edge("a", "c")
    g.add_edge(["b", "c"], "d")
    g.add_edge("d", end)
    return g.compile()


def ours(lane: str) -> Any:
    return build(Graph(S), START, END, get_stream_writer, lane)


def theirs() -> Any:
    from langgraph.config import get_stream_writer as lg_writer
    from langgraph.graph import END as LEND
    from langgraph.graph import START as LSTART
    from langgraph.graph import StateGraph

    return build(StateGraph(S), LSTART, LEND, lg_writer, None)


INPUT = {"x": 1, "log": []}


@pytest.mark.parametrize("mode", ["values", "updates"])
@pytest.mark.parametrize("lane", ["thread", "inline", "cpu"])
async def test_values_and_updates_are_langgraphs_chunks(mode: str, lane: str) -> None:
    expected = [chunk async for chunk in theirs().astream(INPUT, stream_mode=mode)]
    got = [chunk async for chunk in ours(lane).astream(INPUT, stream_mode=mode)]
    if mode == "updates":
        # Within a step LangGraph yields updates as calls finish; the engine in node order.
        assert sorted(got, key=repr) == sorted(expected, key=repr)
        assert [next(iter(ch)) for ch in got] == ["a", "b", "c", "d"]
    else:
        assert got == expected


@pytest.mark.parametrize("lane", ["thread", "inline"])
async def test_custom_chunks_from_driver_lanes_come_before_the_nodes_update(lane: str) -> None:
    got = [ch async for ch in ours(lane).astream(INPUT, stream_mode=["custom", "updates"])]
    expected = [ch async for ch in theirs().astream(INPUT, stream_mode=["custom", "updates"])]
    assert sorted(map(repr, got)) == sorted(map(repr, expected))
    # Each node's chunk comes before its update.
    order = [c[1] if c[0] == "custom" else next(iter(c[1])) for c in got]
    assert order.index({"progress": "a"}) < order.index("a")
    assert order.index("b-chunk") < order.index("b")
    assert order.index("c-chunk") < order.index("c")


def test_sync_stream_and_a_bad_mode() -> None:
    app = ours("thread")
    pairs = list(app.stream(INPUT, stream_mode=["values"]))
    assert pairs[0] == ("values", INPUT)
    assert pairs[-1] == ("values", {"x": 2, "log": ["a", "b", "c", "d saw 3"]})
    with pytest.raises(ValueError, match="unknown stream_mode"):
        app.stream(INPUT, stream_mode="tokens")


def test_stopping_a_sync_stream_early_cancels_the_run() -> None:
    app = ours("thread")
    it = app.stream(INPUT, stream_mode="values")
    assert next(it) == INPUT
    it.close()  # returns once the run is cancelled and its thread has ended


async def test_invoke_and_stream_work_inside_a_running_loop() -> None:
    app = ours("thread")
    assert app.invoke(INPUT) == {"x": 2, "log": ["a", "b", "c", "d saw 3"]}
    assert len(list(app.stream(INPUT, stream_mode="updates"))) == 4


async def test_without_stream_mode_astream_yields_events() -> None:
    types = [e.type async for e in ours("thread").astream(INPUT)]
    assert types[0] == "run_started" and types[-1] == "run_finished"


def test_a_writer_outside_a_run_drops_what_it_is_given() -> None:
    get_stream_writer()("nowhere")  # no error, nothing to see

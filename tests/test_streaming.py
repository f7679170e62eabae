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


# -- updates, values, debug and messages against LangGraph ------------------------------


class F(TypedDict):
    x: int
    out: Annotated[list[int], operator.add]


def fan(send: Any) -> Any:
    return lambda s: [send("w", {"x": i, "out": []}) for i in range(2)]


def w(s: F) -> dict[str, Any]:
    return {"out": [s["x"]]}


def skip(s: F) -> None:
    return None


def fan_graph(g: Any, start: str, end: str, send: Any) -> Any:
    g.add_node("w", w)
    g.add_node("skip", skip)
    g.add_conditional_edges(start, fan(send), ["w"])
    g.add_edge("w", "skip")
    g.add_edge("skip", end)
    return g.compile()


def _theirs_fan() -> Any:
    from langgraph.graph import END as LEND
    from langgraph.graph import START as LSTART
    from langgraph.graph import StateGraph
    from langgraph.types import Send as LSend

    return fan_graph(StateGraph(F), LSTART, LEND, LSend)


def _ours_fan() -> Any:
    from engine import Send

    return fan_graph(Graph(F), START, END, Send)


def _no_ids(chunk: Any) -> Any:
    """A debug chunk without what differs run to run (its time; its task id, made a count)."""
    payload = {k: v for k, v in chunk["payload"].items() if k != "id"}
    return {**{k: v for k, v in chunk.items() if k != "timestamp"}, "payload": payload}


@pytest.mark.parametrize("mode", ["updates", "values", "debug"])
def test_send_fan_out_and_a_node_writing_nothing_as_langgraph_streams_them(mode: str) -> None:
    """A Send's updates one by one; a node returning None: ``{node: None}``, no values chunk."""
    expected = list(_theirs_fan().stream({"x": 5, "out": []}, stream_mode=mode))
    got = list(_ours_fan().stream({"x": 5, "out": []}, stream_mode=mode))
    if mode == "debug":
        # Within a step results come as calls finish (threads): compare them as sets.
        def key(c: Any) -> tuple[int, str, str]:
            return (c["step"], c["type"], repr(_no_ids(c)))

        assert sorted(map(key, got)) == sorted(map(key, expected))
        assert [(c["step"], c["type"]) for c in got] == [(c["step"], c["type"]) for c in expected]
        ids = [c["payload"]["id"] for c in got]
        assert ids[0] != ids[1] and sorted(ids[:2]) == sorted(ids[2:4])  # task -> its result
    else:
        assert got == expected


def fails(s: F) -> dict[str, Any]:
    raise KeyError("missing")


def test_debug_names_a_failed_tasks_error() -> None:
    g = Graph(F)
    g.add_node("fails", fails)
    g.add_edge(START, "fails")
    g.add_edge("fails", END)
    got: list[Any] = []
    with pytest.raises(Exception, match="missing"):
        for chunk in g.compile().stream({"x": 1, "out": []}, stream_mode="debug"):
            got.append(chunk)
    assert [c["type"] for c in got] == ["task", "task_result"]
    assert isinstance(got[1]["payload"]["error"], KeyError)


def says_tokens(s: F) -> dict[str, Any]:
    from engine.streaming import get_message_writer

    write = get_message_writer()
    for token in ("hello", " ", "world"):
        write(token)
    return {"out": [1]}


def _chat_metadata() -> dict[str, Any]:
    """LangGraph's messages metadata for a node named ``chat`` streaming a chat model."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage
    from langgraph.graph import END as LEND
    from langgraph.graph import START as LSTART
    from langgraph.graph import StateGraph

    def chat(s: F) -> dict[str, Any]:
        GenericFakeChatModel(messages=iter([AIMessage(content="hi there")])).invoke("hi")
        return {"out": [1]}

    g = StateGraph(F)
    g.add_node("chat", chat)
    g.add_edge(LSTART, "chat")
    g.add_edge("chat", LEND)
    ((_, metadata), *_) = g.compile().stream({"x": 1, "out": []}, stream_mode="messages")
    return dict(metadata)


@pytest.mark.parametrize("lane", ["thread", "inline", "cpu"])
def test_messages_are_langgraphs_pairs_with_the_node_named(lane: str) -> None:
    from langchain_core.messages import AIMessageChunk

    g = Graph(F)
    g.add_node("chat", says_tokens, lane=lane)
    g.add_edge(START, "chat")
    g.add_edge("chat", END)
    got = list(g.compile().stream({"x": 1, "out": []}, stream_mode="messages"))
    assert "".join(chunk.content for chunk, _ in got) == "hello world"
    assert all(isinstance(chunk, AIMessageChunk) for chunk, _ in got)
    assert len({chunk.id for chunk, _ in got}) == 1  # one message's tokens
    theirs = _chat_metadata()
    for _, metadata in got:
        assert metadata == {k: theirs[k] for k in metadata}
        assert set(metadata) >= {"langgraph_node", "langgraph_step", "langgraph_path"}


async def test_the_llm_clients_streamed_tokens_are_messages() -> None:
    from workloads.llm import LLMClient, LLMServer

    async with LLMServer(latency_s=0.0) as server:

        async def ask(s: F) -> dict[str, Any]:
            async with LLMClient(server.base_url) as client:
                text = await client.chat("stream me", max_tokens=6, stream=True)
            return {"out": [len(text)]}

        g = Graph(F)
        g.add_node("ask", ask)
        g.add_edge(START, "ask")
        g.add_edge("ask", END)
        got = [
            pair
            async for pair in g.compile().astream(
                {"x": 1, "out": []}, stream_mode=["messages", "values"]
            )
        ]
    tokens = [c for mode, (c, meta) in [p for p in got if p[0] == "messages"]]
    text_len = got[-1][1]["out"][0]
    assert len(tokens) > 1 and sum(len(t.content) for t in tokens) == text_len
    assert {
        meta["langgraph_node"] for mode, (_, meta) in [p for p in got if p[0] == "messages"]
    } == {"ask"}

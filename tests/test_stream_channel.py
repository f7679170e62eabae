"""Custom chunks from a cpu-lane worker reach the stream while its node runs (the chunk
channel, engine.lanes.channel): ordering proved by a node that waits for its consumer."""

from __future__ import annotations

import functools
import importlib
import operator
import os
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any, TypedDict

import cloudpickle
import pytest

from engine import END, START, Graph, Send
from engine.errors import NodeError, node_error_of
from engine.lanes.channel import ChunkChannel, StreamInfo, WorkerWriter
from engine.streaming import get_message_writer, get_stream_writer

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class S(TypedDict):
    path: str
    log: Annotated[list[str], operator.add]


#: How long a node waits for its consumer before it gives up (a hung test, not a timing).
PATIENCE_S = 120.0


def waits_for_its_consumer(s: S) -> dict[str, Any]:
    """Writes a chunk, then blocks until the consumer, having seen it, creates ``path``."""
    get_stream_writer()({"pid": os.getpid(), "waiting_for": s["path"]})
    deadline = time.monotonic() + PATIENCE_S
    while not os.path.exists(s["path"]):
        if time.monotonic() > deadline:
            return {"log": ["the chunk never reached the consumer while the node ran"]}
        time.sleep(0.01)
    return {"log": ["the consumer saw the chunk while the node ran"]}


def one_node(fn: Any, lane: str = "cpu") -> Any:
    g = Graph(S)
    g.add_node("work", fn, lane=lane)
    g.add_edge(START, "work")
    g.add_edge("work", END)
    return g.compile()


async def test_a_cpu_nodes_chunk_reaches_the_stream_while_it_runs(tmp_path: Path) -> None:
    path = str(tmp_path / "seen")
    got: list[tuple[str, Any]] = []
    app = one_node(waits_for_its_consumer)
    async for mode, chunk in app.astream(
        {"path": path, "log": []}, stream_mode=["custom", "updates"]
    ):
        got.append((mode, chunk))
        if mode == "custom":
            Path(chunk["waiting_for"]).touch()  # only now may the node return
    assert got[0][0] == "custom"
    assert got[0][1]["pid"] != os.getpid()  # it ran in a worker process
    assert got[1] == (
        "updates",
        {"work": {"log": ["the consumer saw the chunk while the node ran"]}},
    )
    assert not [t for t in threading.enumerate() if t.name.startswith("engine-chunks")]


def tokens(s: S) -> dict[str, Any]:
    write = get_message_writer()
    for word in ("to", "ken"):
        write(word)
    get_stream_writer()(f"custom from {s['path']}")
    return {"log": ["done"]}


def fan_out(s: S) -> list[Send]:
    return [Send("work", {"path": str(i), "log": []}) for i in range(3)]


async def test_chunks_of_a_cpu_fan_out_each_before_its_update() -> None:
    g = Graph(S)
    g.add_node("work", tokens, lane="cpu")
    g.add_conditional_edges(START, fan_out, ["work"])
    g.add_edge("work", END)
    got = [
        c
        async for c in g.compile().astream(
            {"path": "", "log": []}, stream_mode=["custom", "messages", "updates"]
        )
    ]
    customs = sorted(c for m, c in got if m == "custom")
    assert customs == ["custom from 0", "custom from 1", "custom from 2"]
    messages = [c for m, c in got if m == "messages"]
    by_message: dict[str, str] = {}
    for chunk, _ in messages:  # three workers' tokens interleave; each message is whole
        by_message[chunk.id] = by_message.get(chunk.id, "") + chunk.content
    assert sorted(by_message.values()) == ["token"] * 3
    assert {meta["langgraph_path"] for _, meta in messages} == {
        ("__pregel_push", i, False) for i in range(3)
    }
    assert {meta["langgraph_node"] for _, meta in messages} == {"work"}
    assert all(meta["langgraph_step"] == 1 for _, meta in messages)
    # No update comes before all of its step's chunks: each worker's writer waits for the driver.
    first_update = next(i for i, (m, _) in enumerate(got) if m == "updates")
    assert first_update == len(got) - 3


def writer_name(s: S) -> dict[str, Any]:
    return {"log": [get_stream_writer().__name__]}


@pytest.mark.parametrize("lane", ["cpu", "thread"])
def test_a_run_nobody_streams_gives_nodes_the_dropping_writer(lane: str) -> None:
    assert one_node(writer_name, lane).invoke({"path": "", "log": []})["log"] == ["_drop"]


def writes_then_dies(s: S) -> dict[str, Any]:
    get_stream_writer()("last words")
    os._exit(3)


async def test_a_worker_that_dies_after_writing_is_blamed_as_before() -> None:
    got: list[Any] = []
    with pytest.raises(NodeError) as caught:
        async for chunk in one_node(writes_then_dies).astream(
            {"path": "", "log": []}, stream_mode="custom"
        ):
            got.append(chunk)
    # One chunk per attempt (a dead worker's call is retried), each delivered before it died.
    assert got and set(got) == {"last words"}
    assert caught.value.node == "work"
    assert "the worker process running it" in str(caught.value)
    assert "died: exited with code 3" in str(caught.value)
    assert not [t for t in threading.enumerate() if t.name.startswith("engine-chunks")]


def test_the_channel_delivers_in_order_and_its_threads_end() -> None:
    seen: list[tuple[str, Any]] = []
    channel = ChunkChannel(lambda mode, chunk: seen.append((mode, chunk)))
    info = channel.info("n", 0)
    assert isinstance(info, StreamInfo)
    writer = WorkerWriter(info)
    for i in range(5):
        writer("custom", i)
        assert seen[-1] == ("custom", i)  # the writer returned: the driver had it
    writer.close()
    channel.close()
    assert channel.alive() == 0
    assert not os.path.exists(channel.address)


def test_a_worker_that_cannot_reach_the_driver_drops_its_chunks(tmp_path: Path) -> None:
    info = StreamInfo(str(tmp_path / "no-such-socket"), b"key", "n", 0)
    writer = WorkerWriter(info)
    assert writer.reachable  # nothing tried yet
    writer("custom", "lost")  # no error: streaming never fails a node
    assert not writer.reachable
    writer("custom", "lost too")  # dropped without another try
    writer.close()


class R(TypedDict):
    x: int


def via_runtime(s: R, *, runtime: Any) -> dict[str, Any]:
    runtime.stream_writer("via runtime")
    return {"x": 1}


def via_writer(config_module: str, s: R) -> dict[str, Any]:
    importlib.import_module(config_module).get_stream_writer()("via writer")
    return {"x": 2}


def _runtime_graph(module: str, cpu: bool) -> Any:
    lg = importlib.import_module(module)
    config_module = "engine.langgraph" if cpu else "langgraph.config"
    b = lg.StateGraph(R)
    b.add_node("n", via_runtime)
    b.add_node(
        "m", functools.partial(via_writer, config_module), **({"lane": "cpu"} if cpu else {})
    )
    b.add_edge(lg.START, "n")
    b.add_edge("n", "m")
    b.add_edge("m", lg.END)
    return b.compile()


def test_the_facade_streams_runtime_and_cpu_lane_chunks_as_langgraph() -> None:
    """``runtime.stream_writer`` and a ``lane="cpu"`` node's writer, under engine.langgraph."""
    expected = list(
        _runtime_graph("langgraph.graph", False).stream({"x": 0}, stream_mode=["custom", "updates"])
    )
    got = list(
        _runtime_graph("engine.langgraph", True).stream({"x": 0}, stream_mode=["custom", "updates"])
    )
    assert got == expected


def writes_a_lock(s: S) -> dict[str, Any]:
    get_stream_writer()(threading.Lock())
    return {"log": ["not reached"]}


async def test_a_chunk_that_cannot_pickle_fails_its_node_saying_why() -> None:
    # The writer raises in the node's own call: the run raises that TypeError itself.
    with pytest.raises(TypeError, match="must pickle to reach the driver") as caught:
        async for _ in one_node(writes_a_lock).astream(
            {"path": "", "log": []}, stream_mode="custom"
        ):
            pass
    record = node_error_of(caught.value)
    assert record is not None and record.node == "work"


def many(s: S) -> list[Send]:
    return [Send("work", {"path": str(i), "log": []}) for i in range(64)]


def says_its_path(s: S) -> dict[str, Any]:
    get_message_writer()(s["path"])
    return {"log": [s["path"]]}


async def test_each_call_of_a_batched_fan_out_is_named_in_its_tokens_metadata() -> None:
    """64 Sends go to the pool in chunks; each token's metadata has its own call's Send index."""
    g = Graph(S)
    g.add_node("work", says_its_path, lane="cpu")
    g.add_conditional_edges(START, many, ["work"])
    g.add_edge("work", END)
    got = [c async for c in g.compile().astream({"path": "", "log": []}, stream_mode="messages")]
    assert len(got) == 64
    for chunk, meta in got:
        assert meta["langgraph_path"] == ("__pregel_push", int(chunk.content), False)
        assert meta["langgraph_triggers"] == ("__pregel_push",)

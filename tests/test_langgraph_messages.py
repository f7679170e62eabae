"""A LangChain chat model invoked inside a node streams its tokens in stream_mode="messages"
under engine.langgraph as under LangGraph: on the driver's lanes and in a cpu-lane worker,
with the node's metadata, and the message it returns is not streamed twice."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any, TypedDict

import cloudpickle
import pytest

pytest.importorskip("langchain_core")

from langchain_core.messages import AnyMessage
from langgraph.graph import add_messages as lg_add_messages

from engine.langgraph import add_messages

cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: Metadata keys whose values differ per run (ids) or per process (versions).
PER_RUN = {"checkpoint_ns", "langgraph_checkpoint_ns", "lc_versions"}


class Ours(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    pid: int


class Theirs(TypedDict):
    messages: Annotated[list[AnyMessage], lg_add_messages]
    pid: int


def chat(state: Any) -> dict[str, Any]:
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    model = GenericFakeChatModel(messages=iter([AIMessage(content="hi there you")]))
    reply = model.invoke(state["messages"])
    return {"messages": [reply], "pid": os.getpid()}


def build(module: str, lane: str | None) -> Any:
    if module == "langgraph":
        from langgraph.graph import END, START, StateGraph

        state: type = Theirs
    else:
        from engine.langgraph import END, START, StateGraph

        state = Ours
    b = StateGraph(state)
    b.add_node("chat", chat, **({"lane": lane} if lane else {}))
    b.add_edge(START, "chat")
    b.add_edge("chat", END)
    return b.compile()


def streamed(module: str, lane: str | None = None) -> tuple[list[tuple[str, Any]], int]:
    config = {"tags": ["t"], "metadata": {"team": "blue"}}
    chunks = list(
        build(module, lane).stream(
            {"messages": [("user", "hello")], "pid": 0},
            config,
            stream_mode=["messages", "values"],
        )
    )
    tokens = [
        (c.content, {k: v for k, v in meta.items() if k not in PER_RUN})
        for mode, (c, meta) in (p for p in chunks if p[0] == "messages")
    ]
    return tokens, chunks[-1][1]["pid"]


@pytest.mark.parametrize("lane", [None, "cpu"], ids=["default", "cpu"])
def test_a_chat_models_tokens_stream_from_every_lane_as_under_langgraph(lane: str | None) -> None:
    expected, _ = streamed("langgraph")
    got, pid = streamed("engine.langgraph", lane)
    assert "".join(text for text, _ in got) == "hi there you"
    assert got == expected  # same tokens, same metadata, the reply not streamed again
    assert (pid != os.getpid()) == (lane == "cpu")

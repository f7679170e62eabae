"""The ``checkpoints`` stream mode and debug's checkpoint chunks: one chunk per checkpoint the
run saves, naming the checkpoint as stored, starting with the input checkpoint (step -1)."""

from __future__ import annotations

import itertools
import operator
import uuid
from typing import Annotated, Any, TypedDict

from engine import END, START, Graph
from engine.checkpoint import (
    InMemorySaver,
)
from engine.langgraph import StateGraph


class S(TypedDict):
    q: str
    steps: Annotated[list[str], operator.add]


def plan(s: S) -> dict[str, Any]:
    return {"steps": ["plan"]}


def answer(s: S) -> dict[str, Any]:
    return {"steps": ["answer"]}


INPUT = {"q": "why?", "steps": []}


def facade(checkpointer: Any) -> Any:
    b = StateGraph(S)
    b.add_node("plan", plan)
    b.add_node("answer", answer)
    b.add_edge(START, "plan")
    b.add_edge("plan", "answer")
    b.add_edge("answer", END)
    return b.compile(checkpointer=checkpointer)


def test_checkpoint_chunks_name_the_checkpoints_the_thread_keeps() -> None:
    app = facade(InMemorySaver())
    config = {"configurable": {"thread_id": "t1"}}
    chunks = list(app.stream(INPUT, config, stream_mode=["checkpoints", "tasks"]))
    saved = [c for mode, c in chunks if mode == "checkpoints"]
    assert [c["metadata"]["step"] for c in saved] == [-1, 0, 1, 2]
    assert [c["metadata"]["source"] for c in saved] == ["input", "loop", "loop", "loop"]
    assert [c["next"] for c in saved] == [["__start__"], ["plan"], ["answer"], []]
    assert saved[0]["parent_config"] is None
    for parent, child in itertools.pairwise(saved):
        assert child["parent_config"] == parent["config"]
    history = [s.config for s in app.get_state_history(config)]
    assert [c["config"] for c in reversed(saved)] == history
    assert saved[-1]["values"] == {"q": "why?", "steps": ["plan", "answer"]}
    # a checkpoint's task is the task the tasks mode then shows running
    started = [c for mode, c in chunks if mode == "tasks" and "input" in c]
    assert [t["id"] for c in saved[1:3] for t in c["tasks"]] == [t["id"] for t in started]


def test_debug_shows_checkpoints_only_when_the_run_saves_them() -> None:
    config = {"configurable": {"thread_id": "t2"}}
    saved = list(facade(InMemorySaver()).stream(INPUT, config, stream_mode="debug"))
    assert [c["type"] for c in saved] == [
        "checkpoint", "checkpoint", "task", "task_result",
        "checkpoint", "task", "task_result", "checkpoint",
    ]  # fmt: skip
    assert [c["step"] for c in saved if c["type"] == "checkpoint"] == [-1, 0, 1, 2]
    unsaved = list(facade(None).stream(INPUT, stream_mode=["debug", "checkpoints"]))
    assert {c["type"] for _, c in unsaved} == {"task", "task_result"}


async def test_the_engines_own_graph_streams_checkpoints_from_every_store(store: Any) -> None:
    g = Graph(S)
    g.add_node("plan", plan)
    g.add_edge(START, "plan")
    g.add_edge("plan", END)
    app = g.compile(store)
    thread = f"t-{uuid.uuid4().hex[:8]}"
    chunks = [c async for c in app.astream(INPUT, thread_id=thread, stream_mode="checkpoints")]
    assert [c["metadata"]["step"] for c in chunks] == [-1, 0, 1]
    assert chunks[-1]["values"]["steps"] == ["plan"]
    history = await app.aget_state_history(thread)
    assert [c["config"] for c in reversed(chunks)] == [h.config for h in history]

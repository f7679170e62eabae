"""The state API on engine.Graph: get_state, get_state_history, update_state, and runs from a
past checkpoint (time travel), on the memory, SQLite and PostgreSQL checkpointers."""

from __future__ import annotations

import operator
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest

from engine import END, START, CheckpointError, Graph
from engine.checkpoint import MemoryCheckpointer, PostgresCheckpointer, SqliteCheckpointer
from engine.checkpoint.history import StateSnapshot
from tests.conftest import postgres_dsn


class S(TypedDict):
    topic: str
    trail: Annotated[list[str], operator.add]
    verdict: str


def write(state: S) -> dict[str, Any]:
    return {"trail": [f"write:{state['topic']}"]}


def review(state: S) -> dict[str, Any]:
    return {"trail": ["review"], "verdict": "ok" if "edited" not in state["trail"] else "edited"}


def build(cp: Any) -> Any:
    g: Graph[Any] = Graph(S)
    g.add_node("write", write, lane="thread")
    g.add_node("review", review, lane="thread")
    g.add_edge(START, "write")
    g.add_edge("write", "review")
    g.add_edge("review", END)
    return g.compile(checkpointer=cp)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: Any, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryCheckpointer()
    elif request.param == "sqlite":
        cp = SqliteCheckpointer(tmp_path / "cp.db")
        yield cp
        await cp.aclose()
    else:
        cp = PostgresCheckpointer(postgres_dsn(), pool_size=2)
        yield cp
        await cp.aclose()


def tid() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


async def test_get_state_of_a_finished_thread(store: Any) -> None:
    app, thread = build(store), tid()
    await app.arun({"topic": "x", "trail": [], "verdict": ""}, thread_id=thread)
    snap = await app.aget_state(thread)
    assert isinstance(snap, StateSnapshot)
    assert snap.values == {"topic": "x", "trail": ["write:x", "review"], "verdict": "ok"}
    assert snap.next == () and snap.tasks == ()
    assert snap.config["configurable"]["thread_id"] == thread
    assert snap.config["configurable"]["checkpoint_id"]
    assert snap.parent_config is not None and snap.created_at is not None
    assert snap.metadata is not None and snap.metadata["step"] == 2


async def test_history_is_newest_first_and_chained_by_parents(store: Any) -> None:
    app, thread = build(store), tid()
    await app.arun({"topic": "x", "trail": [], "verdict": ""}, thread_id=thread)
    history = await app.aget_state_history(thread)
    assert [h.next for h in history] == [(), ("review",), ("write",)]
    ids = [h.config["configurable"]["checkpoint_id"] for h in history]
    parents = [h.parent_config["configurable"]["checkpoint_id"] for h in history[:-1]]
    assert parents == ids[1:]
    assert [h.values.get("trail") for h in history] == [["write:x", "review"], ["write:x"], []]
    assert len(await app.aget_state_history(thread, limit=1)) == 1


async def test_update_state_as_a_node_then_resume(store: Any) -> None:
    app, thread = build(store), tid()
    await app.arun({"topic": "x", "trail": [], "verdict": ""}, thread_id=thread)
    history = await app.aget_state_history(thread)
    before_review = history[1].config["configurable"]["checkpoint_id"]
    # Edit the state before review, as if write had written "edited" too.
    config = await app.aupdate_state(
        thread, {"trail": ["edited"]}, as_node="write", checkpoint_id=before_review
    )
    snap = await app.aget_state(thread, config["configurable"]["checkpoint_id"])
    assert snap.values["trail"] == ["write:x", "edited"] and snap.next == ("review",)
    result = await app.arun(None, thread_id=thread)
    assert result.state["verdict"] == "edited"
    assert result.state["trail"] == ["write:x", "edited", "review"]


async def test_running_from_a_past_checkpoint_forks_and_keeps_history(store: Any) -> None:
    app, thread = build(store), tid()
    await app.arun({"topic": "x", "trail": [], "verdict": ""}, thread_id=thread)
    before = await app.aget_state_history(thread)
    past = before[1].config["configurable"]["checkpoint_id"]  # before review ran
    result = await app.arun(None, thread_id=thread, checkpoint_id=past)
    assert result.state["trail"] == ["write:x", "review"]
    after = await app.aget_state_history(thread)
    old = {h.config["configurable"]["checkpoint_id"] for h in before}
    assert old <= {h.config["configurable"]["checkpoint_id"] for h in after}  # nothing lost
    assert len(after) == len(before) + 2  # the fork, and the step it ran
    assert after[1].metadata is not None and after[1].metadata["source"] == "fork"


async def test_a_thread_without_checkpoints_and_a_graph_without_a_store() -> None:
    app = build(MemoryCheckpointer())
    snap = await app.aget_state("nobody")
    assert snap.values == {} and snap.next == () and snap.metadata is None
    with pytest.raises(CheckpointError, match="no checkpoint 'nope'"):
        await app.aget_state("nobody", "nope")
    with pytest.raises(CheckpointError, match="needs a checkpointer"):
        await build(None).aget_state("t")


def test_sync_twins() -> None:
    app, thread = build(MemoryCheckpointer()), tid()
    app.run({"topic": "y", "trail": [], "verdict": ""}, thread_id=thread)
    assert app.get_state(thread).values["verdict"] == "ok"
    assert len(app.get_state_history(thread)) == 3
    app.update_state(thread, {"verdict": "overruled"}, as_node="review")
    assert app.get_state(thread).values["verdict"] == "overruled"

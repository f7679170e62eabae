"""The state API on engine.Graph: get_state, get_state_history, update_state, and runs from a
past checkpoint (time travel), on the memory, SQLite and PostgreSQL checkpointers."""

from __future__ import annotations

import asyncio
import operator
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from pydantic import BaseModel

from engine import END, START, CheckpointError, Graph
from engine.checkpoint import (
    AsyncPostgresSaver,
    AsyncSqliteSaver,
    InMemorySaver,
    MemoryCheckpointer,
    MemorySaver,
    PostgresSaver,
    SqliteCheckpointer,
    SqliteSaver,
)
from engine.checkpoint.history import StateSnapshot
from engine.checkpoint.homeloop import HomeLoop
from engine.running import run_sync
from engine.saving import RunSaver
from engine.threads import input_cursor
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
    assert [h.next for h in history] == [(), ("review",), ("write",), ("__start__",)]
    assert [(h.metadata or {}).get("source") for h in history] == ["loop"] * 3 + ["input"]
    assert [(h.metadata or {}).get("step") for h in history] == [2, 1, 0, -1]
    ids = [h.config["configurable"]["checkpoint_id"] for h in history]
    parents = [h.parent_config["configurable"]["checkpoint_id"] for h in history[:-1]]
    assert parents == ids[1:] and history[-1].parent_config is None
    assert [h.values.get("trail") for h in history] == [["write:x", "review"], ["write:x"], [], []]
    # The input checkpoint: the values before the input, its one task writing the input.
    first = history[-1]
    assert first.values == {"trail": []}
    assert [(t.name, t.result) for t in first.tasks] == [
        ("__start__", {"topic": "x", "trail": [], "verdict": ""})
    ]


async def test_history_limit_before_and_filter(store: Any) -> None:
    app, thread = build(store), tid()
    await app.arun({"topic": "x", "trail": [], "verdict": ""}, thread_id=thread)
    every = await app.aget_state_history(thread)
    ids = [h.config["configurable"]["checkpoint_id"] for h in every]
    assert [h.config for h in await app.aget_state_history(thread, limit=2)] == [
        h.config for h in every[:2]
    ]
    before = await app.aget_state_history(thread, before=ids[1])
    assert [h.config["configurable"]["checkpoint_id"] for h in before] == ids[2:]
    inputs = await app.aget_state_history(thread, filter={"source": "input"})
    assert [h.config for h in inputs] == [every[-1].config]
    assert await app.aget_state_history(thread, filter={"step": 1}) == [every[1]]


async def test_a_second_input_continues_the_thread(store: Any) -> None:
    """A new input on a finished thread goes through the reducers on top of its values,
    after an input checkpoint one step past the latest (LangGraph's numbering)."""
    app, thread = build(store), tid()
    await app.arun({"topic": "x", "trail": [], "verdict": ""}, thread_id=thread)
    result = await app.arun({"topic": "y"}, thread_id=thread)
    assert result.state["trail"] == ["write:x", "review", "write:y", "review"]
    history = await app.aget_state_history(thread)
    assert [(h.metadata or {}).get("step") for h in history] == [6, 5, 4, 3, 2, 1, 0, -1]
    assert history[3].metadata is not None and history[3].metadata["source"] == "input"
    assert history[3].values["topic"] == "x" and history[3].tasks[0].result == {"topic": "y"}


async def test_update_state_on_a_new_thread_starts_from_start(store: Any) -> None:
    app, thread = build(store), tid()
    config = await app.aupdate_state(thread, {"topic": "z", "trail": [], "verdict": ""})
    snap = await app.aget_state(thread)
    assert snap.config == config and snap.next == ("write",)
    assert snap.metadata is not None and snap.metadata["source"] == "update"
    result = await app.arun(None, thread_id=thread)
    assert result.state["trail"] == ["write:z", "review"]


async def test_running_from_the_input_checkpoint_branches(store: Any) -> None:
    app, thread = build(store), tid()
    await app.arun({"topic": "x", "trail": [], "verdict": ""}, thread_id=thread)
    before = await app.aget_state_history(thread)
    first = before[-1].config["configurable"]["checkpoint_id"]
    result = await app.arun(None, thread_id=thread, checkpoint_id=first)
    assert result.state["trail"] == ["write:x", "review"]
    after = await app.aget_state_history(thread)
    assert len(after) == len(before) + 3  # a second branch of the three loop steps
    branch = after[2]  # the new branch's first step, a child of the input checkpoint
    assert branch.parent_config is not None
    assert branch.parent_config["configurable"]["checkpoint_id"] == first


async def test_an_input_on_a_past_checkpoint_branches_from_it(store: Any) -> None:
    app, thread = build(store), tid()
    await app.arun({"topic": "x", "trail": [], "verdict": ""}, thread_id=thread)
    before = await app.aget_state_history(thread)
    past = before[2]  # step 0: before write ran
    past_id = past.config["configurable"]["checkpoint_id"]
    result = await app.arun({"topic": "z"}, thread_id=thread, checkpoint_id=past_id)
    assert result.state["trail"] == ["write:z", "review"]
    after = await app.aget_state_history(thread)
    assert after[len(after) - len(before) :] == before  # the old branch as it was
    branch = after[3]
    assert branch.metadata is not None and branch.metadata["source"] == "input"
    assert branch.metadata["step"] == 1 and branch.parent_config == past.config
    assert branch.values == past.values


async def test_a_run_stopped_before_its_first_step_resumes(store: Any) -> None:
    """Only the input checkpoint was saved (the process died): a resume runs the input."""
    app, thread = build(store), tid()
    saver = RunSaver(app.plan, store, thread_id=thread, run_id="r1")
    await input_cursor(saver, None, {"topic": "q", "trail": [], "verdict": ""})
    assert (await app.aget_state(thread)).next == ("__start__",)
    result = await app.arun(None, thread_id=thread)
    assert result.state["trail"] == ["write:q", "review"]
    history = await app.aget_state_history(thread)
    assert [(h.metadata or {}).get("step") for h in history] == [2, 1, 0, -1]


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
    with pytest.raises(ValueError, match="needs a checkpointer"):
        await build(None).aget_state("t")


def explode(state: S) -> dict[str, Any]:
    raise KeyError(state["topic"])


async def test_a_failed_task_shows_its_error(store: Any) -> None:
    g: Graph[Any] = Graph(S)
    g.add_node("write", write, lane="thread")
    g.add_node("review", explode, lane="thread")
    g.add_edge(START, "write")
    g.add_edge("write", "review")
    g.add_edge("review", END)
    app, thread = g.compile(checkpointer=store), tid()
    with pytest.raises(Exception, match="review"):
        await app.arun({"topic": "pear", "trail": [], "verdict": ""}, thread_id=thread)
    snap = await app.aget_state(thread)
    assert snap.next == ("review",)
    assert [(t.name, t.error) for t in snap.tasks] == [("review", "KeyError('pear')")]


async def test_a_config_names_the_thread_and_checkpoint(store: Any) -> None:
    app, thread = build(store), tid()
    await app.arun({"topic": "x", "trail": [], "verdict": ""}, thread_id=thread)
    history = await app.aget_state_history({"configurable": {"thread_id": thread}})
    assert history == await app.aget_state_history(thread)
    past = history[1].config
    assert await app.aget_state_history(past) == [history[1]]  # the one it names
    assert (await app.aget_state(past)) == history[1]
    older = await app.aget_state_history(thread, before=past)
    assert older == history[2:]
    config = await app.aupdate_state(past, {"verdict": "by hand"}, as_node="review")
    snap = await app.aget_state(config)
    assert snap.parent_config == past and snap.values["verdict"] == "by hand"
    with pytest.raises(ValueError, match="thread_id"):
        await app.aget_state({"configurable": {}})


class Doc(BaseModel):
    text: str = ""
    notes: Annotated[list[str], operator.add] = []


def note(state: Doc) -> dict[str, Any]:
    return {"notes": [f"read {state.text}"]}


async def test_a_pydantic_state_has_no_input_checkpoint(store: Any) -> None:
    """On engine.Graph a pydantic state's input replaces it whole: nothing before it to show."""
    g: Graph[Doc] = Graph(Doc)
    g.add_node("note", note, lane="thread")
    g.add_edge(START, "note")
    g.add_edge("note", END)
    app, thread = g.compile(checkpointer=store), tid()
    await app.arun(Doc(text="a"), thread_id=thread)
    history = await app.aget_state_history(thread)
    assert [(h.metadata or {}).get("source") for h in history] == ["loop", "loop"]
    assert history[0].values == {"text": "a", "notes": ["read a"]}
    config = await app.aupdate_state(thread, {"notes": ["by hand"]}, as_node="note")
    assert (await app.aget_state(config)).values["notes"] == ["read a", "by hand"]


def test_sync_twins() -> None:
    app, thread = build(MemoryCheckpointer()), tid()
    app.run({"topic": "y", "trail": [], "verdict": ""}, thread_id=thread)
    assert app.get_state(thread).values["verdict"] == "ok"
    assert len(app.get_state_history(thread)) == 4
    app.update_state(thread, {"verdict": "overruled"}, as_node="review")
    assert app.get_state(thread).values["verdict"] == "overruled"


# -- the same program under LangGraph -------------------------------------------


def _history_rows(graph: Any, config: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (
            (h.metadata or {}).get("step"),
            (h.metadata or {}).get("source"),
            h.next,
            h.values,
            [(t.name, t.result) for t in h.tasks],
            h.parent_config is None,
        )
        for h in graph.get_state_history(config)
    ]


def _lg_program(module: Any, saver: Any) -> list[Any]:
    """Two inputs, an update as a node, a fork; what get_state/history show after each."""
    b = module.StateGraph(S)
    b.add_node("write", write)
    b.add_node("review", review)
    b.add_edge(module.START, "write")
    b.add_edge("write", "review")
    b.add_edge("review", module.END)
    graph = b.compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "t"}}
    out: list[Any] = [graph.invoke({"topic": "x", "trail": [], "verdict": ""}, config)]
    out.append(graph.invoke({"topic": "y"}, config))
    out.append(_history_rows(graph, config))
    past = list(graph.get_state_history(config))[5]  # before the first review
    edited = graph.update_state(past.config, {"trail": ["edited"]}, as_node="write")
    state = graph.get_state(edited)
    out.append((state.next, state.values, (state.metadata or {}).get("source")))
    out.append(graph.invoke(None, edited))
    out.append(graph.invoke(None, past.config))
    out.append(graph.invoke({"topic": "z"}, past.config))  # a new input on a past checkpoint
    out.append(_history_rows(graph, config)[:9])
    # A config naming a checkpoint lists that one; before= and limit= as well.
    out.append(_history_rows(graph, past.config))
    out.append(len(list(graph.get_state_history(config, before=past.config, limit=2))))
    return out


def test_state_api_matches_langgraph() -> None:
    import langgraph.checkpoint.memory
    import langgraph.graph

    import engine.langgraph

    ours = _lg_program(engine.langgraph, engine.langgraph.InMemorySaver())
    theirs = _lg_program(langgraph.graph, langgraph.checkpoint.memory.InMemorySaver())
    assert ours == theirs


# -- LangGraph's checkpointer constructors -----------------------------------------


def _two_runs(saver: Any) -> list[Any]:
    """Two sync invokes on one thread (each on a new loop), the history's steps."""
    app = build(saver)
    thread = tid()
    app.run({"topic": "a", "trail": [], "verdict": ""}, thread_id=thread)
    app.run({"topic": "b"}, thread_id=thread)
    return [(h.metadata or {}).get("step") for h in app.get_state_history(thread)]


STEPS = [6, 5, 4, 3, 2, 1, 0, -1]


def test_memory_saver_names() -> None:
    assert MemorySaver is InMemorySaver and issubclass(InMemorySaver, MemoryCheckpointer)
    assert _two_runs(InMemorySaver()) == STEPS


def test_sqlite_saver_from_a_connection_and_a_conn_string(tmp_path: Path) -> None:
    path = tmp_path / "lg.db"
    conn = sqlite3.connect(path)
    saver = SqliteSaver(conn)
    try:
        assert _two_runs(saver) == STEPS
    finally:
        saver.close()
        conn.close()
    with SqliteSaver.from_conn_string(str(path)) as again:  # the same file, read back
        assert len(run_sync(again.history(_any_thread(again)))) == len(STEPS)
    with pytest.raises(ValueError, match="in-memory"):
        SqliteSaver(sqlite3.connect(":memory:"))


def _any_thread(saver: SqliteCheckpointer) -> str:
    rows = sqlite3.connect(saver.path).execute("SELECT DISTINCT thread_id FROM checkpoints")
    (thread,) = rows.fetchone()
    return str(thread)


async def test_async_sqlite_saver(tmp_path: Path) -> None:
    async with AsyncSqliteSaver.from_conn_string(tmp_path / "a.db") as saver:
        app, thread = build(saver), tid()
        await app.arun({"topic": "a", "trail": [], "verdict": ""}, thread_id=thread)
        assert len(await app.aget_state_history(thread)) == 4


@pytest.mark.postgres
def test_postgres_saver_serves_sync_invokes_on_new_loops() -> None:
    with PostgresSaver.from_conn_string(postgres_dsn()) as saver:
        saver.setup()  # synchronous, as LangGraph's
        assert _two_runs(saver) == STEPS


@pytest.mark.postgres
async def test_async_postgres_saver() -> None:
    async with AsyncPostgresSaver.from_conn_string(postgres_dsn()) as saver:
        await saver.setup()
        app, thread = build(saver), tid()
        await app.arun({"topic": "a", "trail": [], "verdict": ""}, thread_id=thread)
        assert (await app.aget_state(thread)).values["trail"] == ["write:a", "review"]


def test_home_loop_serves_every_loop_and_stops() -> None:
    home = HomeLoop("test-home")
    seen: list[object] = []

    async def where() -> object:
        seen.append(asyncio.get_running_loop())
        return threading.current_thread().name

    async def from_a_loop() -> object:
        return await home.call(where())

    assert run_sync(from_a_loop()) == "test-home"
    assert run_sync(from_a_loop()) == "test-home"  # a second loop, the same home
    assert home.block(where()) == "test-home"
    assert len({id(loop) for loop in seen}) == 1
    home.stop()
    home.stop()  # idempotent
    assert not any(t.name == "test-home" for t in threading.enumerate())

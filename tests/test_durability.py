"""``durability=`` on runs: ``sync`` saves each step before the next starts, ``async``
writes step N's checkpoint while step N+1 runs (all of them written by the run's end, in
order), ``exit`` writes only the last (done, or the failure a resume starts from)."""

from __future__ import annotations

import asyncio
import contextlib
import operator
from typing import Annotated, Any, TypedDict

import pytest

from engine import START, Graph, RunOptions
from engine.checkpoint import Checkpoint, MemoryCheckpointer


class S(TypedDict):
    log: Annotated[list[str], operator.add]


class Recording(MemoryCheckpointer):
    """Keeps what happened, in order: ("put", step, status) at each put's end, and
    ("node", name) at each call. ``gate``: a running checkpoint's put waits until the
    next step's node has started (it can only end when the saves overlap the steps)."""

    def __init__(self, events: list[tuple[Any, ...]], gate: bool = False) -> None:
        super().__init__()
        self.events = events
        self.gate = gate
        self.started: dict[int, asyncio.Event] = {}

    def node_started(self, step: int) -> None:
        self.started.setdefault(step, asyncio.Event()).set()

    async def put(self, checkpoint: Checkpoint) -> Checkpoint:
        if self.gate and checkpoint.status == "running" and checkpoint.source == "loop":
            await self.started.setdefault(checkpoint.step, asyncio.Event()).wait()
        stored = await super().put(checkpoint)
        self.events.append(("put", checkpoint.step, checkpoint.status))
        return stored


def build(events: list[tuple[Any, ...]], saver: Recording, fail_at: str = "") -> Graph[S]:
    g: Graph[S] = Graph(S)
    for step, name in enumerate(("a", "b", "c")):

        async def node(state: S, name: str = name, step: int = step) -> dict[str, Any]:
            events.append(("node", name))
            saver.node_started(step)
            if name == fail_at:
                raise ConnectionError(f"{name} lost its connection")
            return {"log": [name]}

        g.add_node(name, node, lane="io")
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", "c")
    return g


def history(app: Any, thread: str) -> list[tuple[int, tuple[str, ...]]]:
    return [(s.metadata["step"], s.next) for s in app.get_state_history(thread)]


def run(durability: str, *, gate: bool = False, fail_at: str = "") -> tuple[Any, list[Any]]:
    events: list[tuple[Any, ...]] = []
    saver = Recording(events, gate)
    app = build(events, saver, fail_at).compile(saver)
    with contextlib.suppress(ConnectionError):
        app.invoke({"log": []}, thread_id="t", durability=durability)
    return app, events


def test_sync_saves_each_step_before_the_next_starts() -> None:
    _, events = run("sync")
    assert events.index(("put", 1, "running")) < events.index(("node", "b"))
    assert events.index(("put", 2, "running")) < events.index(("node", "c"))


def test_async_writes_a_step_while_the_next_runs_and_all_by_the_end() -> None:
    """Each running checkpoint's put can end only once the next step's node started:
    the run finishing at all shows the overlap; the history is sync's, in order."""
    app, events = run("async", gate=True)
    assert events.index(("node", "b")) < events.index(("put", 1, "running"))
    assert events.index(("node", "c")) < events.index(("put", 2, "running"))
    assert events[-1] == ("put", 3, "done")
    sync_app, _ = run("sync")
    assert history(app, "t") == history(sync_app, "t")
    assert [e for e in events if e[0] == "put"] == sorted(e for e in events if e[0] == "put")


def test_exit_writes_only_the_last_checkpoint() -> None:
    app, events = run("exit")
    assert [e for e in events if e[0] == "put"] == [("put", 3, "done")]
    assert history(app, "t") == [(3, ())]
    assert app.get_state("t").values == {"log": ["a", "b", "c"]}


@pytest.mark.parametrize("durability", ["async", "exit"])
def test_a_failure_leaves_the_checkpoint_a_resume_starts_from(durability: str) -> None:
    app, events = run(durability, fail_at="c")
    assert ("put", 2, "failed") in events
    if durability == "exit":
        assert history(app, "t") == [(2, ("c",))]
    fixed = build([], Recording([])).compile(app.checkpointer)
    assert fixed.invoke(None, thread_id="t") == {"log": ["a", "b", "c"]}


class Broken(MemoryCheckpointer):
    async def put(self, checkpoint: Checkpoint) -> Checkpoint:
        if checkpoint.step == 1:
            raise OSError("the disk is full")
        return await super().put(checkpoint)


def test_an_async_write_that_fails_fails_the_run() -> None:
    """Nothing is lost silently: the error of a write in flight is raised by the next."""
    app = build([], Recording([])).compile(Broken())
    with pytest.raises(OSError, match="the disk is full"):
        app.invoke({"log": []}, thread_id="t", durability="async")


def test_an_unknown_durability_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown durability 'always'"):
        RunOptions(durability="always")  # type: ignore[arg-type]


@pytest.mark.parametrize("how", ["invoke", "stream"])
def test_engine_langgraph_passes_durability_on(how: str) -> None:
    from engine.langgraph import InMemorySaver, StateGraph

    def a(state: S) -> dict[str, Any]:
        return {"log": ["a"]}

    g = StateGraph(S)
    g.add_node("a", a)
    g.add_node("b", a)
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    app = g.compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": how}}
    if how == "invoke":
        app.invoke({"log": []}, config, durability="exit")
    else:
        list(app.stream({"log": []}, config, durability="exit"))
    assert [s.metadata["step"] for s in app.get_state_history(config)] == [2]


@pytest.mark.parametrize("durability", ["async", "exit"])
def test_an_interrupted_run_resumes_by_id_whatever_its_durability(durability: str) -> None:
    """A question asked two steps in: the interrupt's id is made from the checkpoint of
    its step (written in the background, or not at all, before the question), and a
    resume by that id answers it; the steps before it do not run again."""
    from engine import Command, interrupt

    class Q(TypedDict):
        log: Annotated[list[str], operator.add]

    ran: list[str] = []

    def plain(name: str) -> Any:
        def node(state: Q) -> dict[str, Any]:
            ran.append(name)
            return {"log": [name]}

        return node

    def ask(state: Q) -> dict[str, Any]:
        ran.append("ask")
        return {"log": [f"answer={interrupt('ok?')}"]}

    g: Graph[Q] = Graph(Q)
    g.add_node("a", plain("a"), lane="inline")
    g.add_node("b", plain("b"), lane="inline")
    g.add_node("ask", ask, lane="inline")
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", "ask")
    app = g.compile(checkpointer=MemoryCheckpointer())
    opts = RunOptions(thread_id="t", durability=durability)  # type: ignore[arg-type]
    first = app.run({"log": []}, opts)
    (question,) = first.interrupts
    assert app.get_state("t").interrupts[0].id == question.id
    done = app.run(Command(resume={question.id: "yes"}), opts)
    assert done.state["log"] == ["a", "b", "answer=yes"]
    assert ran == ["a", "b", "ask", "ask"]

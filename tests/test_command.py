"""A node returning ``Command(update=..., goto=...)``: its update is its write, its goto
runs in the next step besides its edges (LangGraph's reading), on every lane and mode;
``destinations=`` and ``-> Command[Literal[...]]`` checked at compile and drawn."""

from __future__ import annotations

import operator
import os
import pickle
from typing import Annotated, Any, Literal, TypedDict

import pytest

from engine import END, START, Command, Graph, GraphError, InvalidUpdateError, Send
from engine.graph import command_destinations


class S(TypedDict):
    log: Annotated[list[str], operator.add]
    n: int


def steps(result: Any) -> list[tuple[int, str]]:
    """(step, node) of every call of a run, in step then node order."""
    return sorted((c.step, c.node) for c in result.trace.calls)


def plain(name: str) -> Any:
    def node(state: S) -> dict[str, Any]:
        return {"log": [name]}

    node.__name__ = name
    return node


# -- module-level nodes: a cpu-lane node's function must pickle -----------------------


def hands_to_b(state: S) -> Command[Literal["b", "c"]]:
    return Command(goto="b", update={"log": ["a"]})


def counts_down(state: S) -> Command[Literal["counts_down", "__end__"]]:
    if state["n"] <= 0:
        return Command(goto=END, update={"log": ["done"]})
    return Command(goto="counts_down", update={"n": state["n"] - 1, "log": [str(state["n"])]})


def fans_out(state: S) -> Command[Any]:
    return Command(goto=[Send("worker", {"log": [], "n": i}) for i in range(3)])


def worker(state: S) -> dict[str, Any]:
    return {"log": [f"w{state['n']}"]}


def test_a_command_pickles() -> None:
    """What a cpu-lane worker sends back: the Command, its Sends and its update, intact."""
    cmd = Command(goto=["a", Send("b", {"x": 1})], update={"log": ["x"]})
    assert pickle.loads(pickle.dumps(cmd)) == cmd


def test_goto_runs_next_step_besides_the_static_edges(mode: str) -> None:
    """LangGraph's reading: a node's Command goto and its static edge both run next step;
    the update is the node's write."""
    g: Graph[S] = Graph(S)
    g.add_node("a", hands_to_b)
    for name in ("b", "c", "d"):
        g.add_node(name, plain(name))
    g.add_edge(START, "a")
    g.add_edge("a", "d")
    result = g.compile().run({"log": [], "n": 0}, mode=mode)
    assert steps(result) == [(0, "a"), (1, "b"), (1, "d")]
    assert result.state["log"] == ["a", "b", "d"]


@pytest.mark.parametrize("lane", ["io", "thread", "inline", "cpu"])
def test_command_on_every_lane(lane: str, mode: str) -> None:
    """A node loops on itself through goto until it goes to END; a cpu-lane node returns
    its Command from a worker process (parallel mode), the same final state everywhere."""
    g: Graph[S] = Graph(S)
    g.add_node("counts_down", counts_down, lane=lane)
    g.add_edge(START, "counts_down")
    result = g.compile().run({"log": [], "n": 3}, mode=mode)
    assert result.state == {"log": ["3", "2", "1", "done"], "n": 0}
    assert {c.lane for c in result.trace.calls} == {lane}
    if lane == "cpu" and mode == "parallel":  # came back from a worker process
        assert os.getpid() not in result.trace.pids()


def test_goto_sends_from_a_cpu_node_in_parallel_mode() -> None:
    """Sends in a goto fan out; each worker call writes in Send order."""
    g: Graph[S] = Graph(S)
    g.add_node("fans_out", fans_out, lane="cpu", destinations=("worker",))
    g.add_node("worker", worker, lane="cpu")
    g.add_edge(START, "fans_out")
    result = g.compile().run({"log": [], "n": 0}, mode="parallel")
    assert result.state["log"] == ["w0", "w1", "w2"]
    assert [(c.step, c.index) for c in result.trace.for_node("worker")] != []
    assert sorted(c.index for c in result.trace.for_node("worker")) == [0, 1, 2]


def test_goto_end_still_follows_the_static_edge() -> None:
    """END in a goto adds nothing; it does not stop the node's own edges (as LangGraph)."""

    def a(state: S) -> Command[Any]:
        return Command(goto=END, update={"log": ["a"]})

    g: Graph[S] = Graph(S)
    g.add_node("a", a)
    g.add_node("d", plain("d"))
    g.add_edge(START, "a")
    g.add_edge("a", "d")
    assert g.compile().invoke({"log": [], "n": 0})["log"] == ["a", "d"]


def test_a_name_twice_runs_once_a_send_runs_apart() -> None:
    def a(state: S) -> Command[Any]:
        return Command(goto=["d", "d", Send("d", {"log": ["x"], "n": 0})])

    g: Graph[S] = Graph(S)
    g.add_node("a", a, destinations=("d",))
    g.add_node("d", plain("d"))
    g.add_edge(START, "a")
    result = g.compile().run({"log": [], "n": 0})
    assert steps(result) == [(0, "a"), (1, "d"), (1, "d")]


def test_a_goto_to_an_unknown_node_names_node_step_and_fix() -> None:
    def a(state: S) -> Command[Any]:
        return Command(goto="nowhere", update={"log": ["a"]})

    g: Graph[S] = Graph(S)
    g.add_node("a", a)
    g.add_edge(START, "a")
    said = r"node 'a' returned Command\(goto='nowhere'\) in step 0"
    with pytest.raises(GraphError, match=said) as e:
        g.compile().invoke({"log": [], "n": 0})
    assert "add it with add_node" in str(e.value) and e.value.node == "a"


def test_the_update_is_checked_like_any_update() -> None:
    def a(state: S) -> Command[Any]:
        return Command(goto=END, update={"nope": 1})

    g: Graph[S] = Graph(S)
    g.add_node("a", a)
    g.add_edge(START, "a")
    with pytest.raises(InvalidUpdateError, match="nope"):
        g.compile().invoke({"log": [], "n": 0})


def test_a_goto_that_is_neither_name_nor_send_is_refused() -> None:
    def a(state: S) -> Command[Any]:
        return Command(goto=[3])

    g: Graph[S] = Graph(S)
    g.add_node("a", a)
    g.add_edge(START, "a")
    with pytest.raises(InvalidUpdateError, match=r"node 'a' \(step 0\).*not int"):
        g.compile().invoke({"log": [], "n": 0})


def test_parent_command_outside_a_subgraph_says_so() -> None:
    def a(state: S) -> Command[Any]:
        return Command(graph=Command.PARENT, goto="x")

    g: Graph[S] = Graph(S)
    g.add_node("a", a)
    g.add_edge(START, "a")
    with pytest.raises(InvalidUpdateError, match="not as a subgraph"):
        g.compile().invoke({"log": [], "n": 0})


class Team(TypedDict):
    done: Annotated[list[str], operator.add]
    handoffs: Annotated[list[str], operator.add]


def supervisor(state: Team) -> Command[Literal["researcher", "writer", "__end__"]]:
    for agent in ("researcher", "writer"):
        if agent not in state["done"]:
            return Command(goto=agent, update={"handoffs": [f"supervisor->{agent}"]})
    return Command(goto=END)


def researcher(state: Team) -> Command[Literal["supervisor"]]:
    return Command(goto="supervisor", update={"done": ["researcher"]})


def writer(state: Team) -> Command[Literal["supervisor"]]:
    return Command(goto="supervisor", update={"done": ["writer"]})


def test_supervisor_handoffs(mode: str) -> None:
    """Multi-agent handoffs: no edge but START's; every route is a Command, and the
    annotations make the workers reachable at compile."""
    g: Graph[Team] = Graph(Team)
    g.add_node("supervisor", supervisor, lane="cpu")
    g.add_node("researcher", researcher)
    g.add_node("writer", writer, lane="cpu")
    g.add_edge(START, "supervisor")
    result = g.compile().run({"done": [], "handoffs": []}, mode=mode)
    assert result.state == {
        "done": ["researcher", "writer"],
        "handoffs": ["supervisor->researcher", "supervisor->writer"],
    }
    assert [n for _, n in steps(result)] == [
        "supervisor", "researcher", "supervisor", "writer", "supervisor",
    ]  # fmt: skip


def test_destinations_are_inferred_from_the_annotation() -> None:
    assert command_destinations(supervisor) == ("researcher", "writer", "__end__")
    assert command_destinations(plain("x")) is None

    def either(state: S) -> Command[Literal["a"]] | dict[str, Any]:
        return {}

    assert command_destinations(either) == ("a",)


def test_undeclared_destinations_leave_the_target_unreachable_at_compile() -> None:
    def a(state: S) -> Command[Any]:
        return Command(goto="b")

    g: Graph[S] = Graph(S)
    g.add_node("a", a)
    g.add_node("b", plain("b"))
    g.add_edge(START, "a")
    with pytest.raises(GraphError, match="destinations="):
        g.compile()
    declared: Graph[S] = Graph(S)
    declared.add_node("a", a, destinations=("b",))
    declared.add_node("b", plain("b"))
    declared.add_edge(START, "a")
    assert declared.compile().invoke({"log": [], "n": 0})["log"] == ["b"]


def test_destinations_naming_an_unknown_node_fail_compile() -> None:
    g: Graph[S] = Graph(S)
    g.add_node("a", plain("a"), destinations=("ghost",))
    g.add_edge(START, "a")
    with pytest.raises(GraphError, match="node 'a': destinations names unknown node 'ghost'"):
        g.compile()
    with pytest.raises(GraphError, match="destinations must be"):
        Graph(S).add_node("a", plain("a"), destinations="b")  # type: ignore[arg-type]


def test_destinations_are_drawn_as_conditional_edges() -> None:
    g: Graph[S] = Graph(S)
    g.add_node("a", hands_to_b)
    g.add_node("b", plain("b"))
    g.add_node("c", plain("c"))
    g.add_node("d", plain("d"), destinations={"b": "back"})
    g.add_edge(START, "a")
    g.add_edge("a", "d")
    text = g.compile().get_graph().draw_mermaid()
    body = [line.strip() for line in text.splitlines() if line.endswith(";") and "-" in line]
    assert body == [
        "__start__ --> a;",
        "a -.-> b;",
        "a -.-> c;",
        "a --> d;",
        "d -. &nbsp;back&nbsp; .-> b;",
        "b --> __end__;",
        "c --> __end__;",
    ]


FLAKY = {"fail": True}


def flaky(state: S) -> dict[str, Any]:
    if FLAKY["fail"]:
        raise ConnectionError("flaky lost its connection")
    return {"log": ["flaky"]}


def test_a_goto_survives_a_failed_step_and_its_resume() -> None:
    """The checkpoint keeps the Command's goto with its write: the Command's node does not
    run again on resume, and the run still goes where it said (its write once)."""
    from engine.checkpoint import MemoryCheckpointer

    g: Graph[S] = Graph(S)
    g.add_node("a", hands_to_b, lane="thread")
    g.add_node("flaky", flaky, lane="thread")  # FLAKY is this process's
    for name in ("b", "c"):
        g.add_node(name, plain(name))
    g.add_edge(START, "a")
    g.add_edge(START, "flaky")
    app = g.compile(MemoryCheckpointer())
    FLAKY["fail"] = True
    with pytest.raises(ConnectionError):
        app.invoke({"log": [], "n": 0}, thread_id="t")
    FLAKY["fail"] = False
    result = app.run(None, thread_id="t")
    assert result.state["log"] == ["a", "flaky", "b"]
    assert steps(result) == [(0, "flaky"), (1, "b")]


RAN: dict[str, int] = {}


def hands_off(state: S) -> Command[Any]:
    RAN["hands_off"] = RAN.get("hands_off", 0) + 1
    return Command(goto=["b", Send("worker", {"log": [], "n": 7})], update={"log": ["a"]})


def asks(state: S) -> dict[str, Any]:
    from engine import interrupt

    return {"log": [f"asked:{interrupt('go on?')}"]}


def goto_and_sibling(sibling: Any, lane: str = "thread") -> Graph[S]:
    g: Graph[S] = Graph(S)
    g.add_node("a", hands_off, lane="thread", destinations=("b", "worker"))
    g.add_node("sibling", sibling, lane=lane)
    g.add_node("b", plain("b"))
    g.add_node("worker", worker)
    g.add_edge(START, "a")
    g.add_edge(START, "sibling")
    return g


@pytest.mark.parametrize(
    "backend", ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
@pytest.mark.parametrize("stop", ["fails", "asks"])
async def test_a_gotos_task_does_not_run_again_on_resume(
    backend: str, stop: str, tmp_path: Any
) -> None:
    """A step where one task returned Command(goto=[name, Send]) and its sibling failed (or
    asked a person): the checkpoint keeps the goto (and the Send's payload) with the
    write, on every store; the resume runs only the sibling, then the goto's targets."""
    import uuid

    from engine.checkpoint import Checkpointer, MemoryCheckpointer

    from .test_resume import make_checkpointer

    cp: Checkpointer = (
        MemoryCheckpointer() if backend == "memory" else make_checkpointer(backend, tmp_path)
    )
    thread = f"goto-kept-{uuid.uuid4().hex}"
    RAN.clear()
    FLAKY["fail"] = True
    app = goto_and_sibling(flaky if stop == "fails" else asks).compile(cp)
    try:
        if stop == "fails":
            with pytest.raises(ConnectionError):
                await app.arun({"log": [], "n": 0}, thread_id=thread)
            FLAKY["fail"] = False
            again: Any = None
        else:
            first = await app.arun({"log": [], "n": 0}, thread_id=thread)
            assert first.interrupted and first.state["log"] == ["a"]
            again = Command(resume="yes")
        saved = await cp.get_latest(thread)
        assert saved is not None and [
            (w.node, [r.node for r in w.goto]) for w in saved.pending_writes
        ] == [("a", ["b", "worker"])]
        result = await app.arun(again, thread_id=thread)
    finally:
        await cp.aclose()
    said = "flaky" if stop == "fails" else "asked:yes"
    assert RAN["hands_off"] == 1
    assert result.state["log"] == ["a", said, "b", "w7"]
    assert steps(result) == [(0, "sibling"), (1, "b"), (1, "worker")]


def test_update_pairs_are_a_dict_each_key_once() -> None:
    def a(state: S) -> Command[Any]:
        return Command(update=[("log", ["x"]), ("n", 2)])

    def twice(state: S) -> Command[Any]:
        return Command(update=[("log", ["x"]), ("log", ["y"])])

    for fn, ok in ((a, True), (twice, False)):
        g: Graph[S] = Graph(S)
        g.add_node("a", fn)
        g.add_edge(START, "a")
        if ok:
            assert g.compile().invoke({"log": [], "n": 0}) == {"log": ["x"], "n": 2}
        else:
            with pytest.raises(InvalidUpdateError, match="more than once"):
                g.compile().invoke({"log": [], "n": 0})


def test_engine_langgraph_compiles_a_target_only_an_undeclared_goto_reaches() -> None:
    """As LangGraph does: no annotation, no destinations=, and the run still goes there."""
    from engine.langgraph import StateGraph

    def a(state: S) -> Command[Any]:
        return Command(goto="b", update={"log": ["a"]})

    g = StateGraph(S)
    g.add_node("a", a)
    g.add_node("b", plain("b"))
    g.add_edge(START, "a")
    assert g.compile().invoke({"log": [], "n": 0}) == {"log": ["a", "b"], "n": 0}


def test_streams_show_a_commands_update_as_its_result() -> None:
    """LangGraph's tasks and debug chunks carry the Command's update, not the Command."""
    from engine.langgraph import StateGraph

    g = StateGraph(S)
    g.add_node("a", hands_to_b)
    g.add_node("b", plain("b"))
    g.add_node("c", plain("c"))
    g.add_edge(START, "a")
    app = g.compile()
    chunks = app.stream({"log": [], "n": 0}, stream_mode="tasks")
    assert [c["result"] for c in chunks if "result" in c] == [{"log": ["a"]}, {"log": ["b"]}]


def _goto_then_resume(framework: str, stop: str) -> dict[str, Any]:
    """One program under ``langgraph`` or ``engine.langgraph``: A returns Command(goto="x"),
    its sibling B fails (or asks); what ran, the thread's ``next`` while stopped, the end."""
    if framework == "langgraph":
        from langgraph.checkpoint.memory import InMemorySaver
        from langgraph.graph import StateGraph
        from langgraph.types import Command as Cmd
        from langgraph.types import interrupt
    else:
        from engine.langgraph import Command as Cmd  # type: ignore[assignment]
        from engine.langgraph import InMemorySaver, StateGraph, interrupt  # type: ignore[assignment]

    calls: list[str] = []
    fail = {"on": True}

    def a(state: S) -> Any:
        calls.append("a")
        return Cmd(update={"log": ["a"]}, goto="x")

    def b(state: S) -> dict[str, Any]:
        calls.append("b")
        if stop == "asks":
            return {"log": [f"b:{interrupt('go on?')}"]}
        if fail["on"]:
            raise RuntimeError("b failed")
        return {"log": ["b"]}

    def x(state: S) -> dict[str, Any]:
        calls.append("x")
        return {"log": ["x"]}

    g = StateGraph(S)
    g.add_node("a", a, destinations=("x",))
    g.add_node("b", b)
    g.add_node("x", x)
    g.add_edge(START, "a")
    g.add_edge(START, "b")
    app = g.compile(checkpointer=InMemorySaver())
    cfg: Any = {"configurable": {"thread_id": "t"}}
    try:
        first = app.invoke({"log": [], "n": 0}, cfg)["log"]
    except RuntimeError:
        first = None
    stopped = app.get_state(cfg)
    fail["on"] = False
    last = app.invoke(Cmd(resume="yes") if stop == "asks" else None, cfg)
    return {
        "first": first,
        "next": stopped.next,
        "values": stopped.values["log"],
        "last": last["log"],
        "calls": sorted(calls),  # (a step's calls run at once: their order varies)
    }


@pytest.mark.parametrize("stop", ["fails", "asks"])
def test_a_gotos_task_on_resume_as_langgraph(stop: str) -> None:
    """Side by side: the task that returned a goto in a step that stopped is not run again
    on resume, its goto routes the step, and the stopped thread shows its write."""
    pytest.importorskip("langgraph")
    theirs = _goto_then_resume("langgraph", stop)
    assert _goto_then_resume("engine", stop) == theirs
    assert theirs["calls"] == ["a", "b", "b", "x"]


async def test_a_cancelled_step_keeps_a_gotos_write() -> None:
    """A run cancelled while a sibling still runs keeps the finished Command's write and
    goto: the resume runs only the sibling, then the goto's targets."""
    import asyncio

    from engine.checkpoint import MemoryCheckpointer
    from engine.events import NodeFinished

    hang = {"on": True}

    async def sibling(state: S) -> dict[str, Any]:
        if hang["on"]:
            await asyncio.Event().wait()
        return {"log": ["sibling"]}

    RAN.clear()
    app = goto_and_sibling(sibling, lane="io").compile(MemoryCheckpointer())
    finished = asyncio.Event()

    def seen(event: Any) -> None:
        if isinstance(event, NodeFinished) and event.node == "a":
            finished.set()

    run = asyncio.ensure_future(app.arun({"log": [], "n": 0}, thread_id="t", on_event=seen))
    await asyncio.wait_for(finished.wait(), 10)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    hang["on"] = False
    result = await app.arun(None, thread_id="t")
    assert RAN["hands_off"] == 1
    assert result.state["log"] == ["a", "sibling", "b", "w7"]
    assert steps(result) == [(0, "sibling"), (1, "b"), (1, "worker")]

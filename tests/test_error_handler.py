"""``add_node(..., error_handler=)``: a call that failed for good (its retries spent) is
answered by the node's handler, run in the driver in the same step, on every lane and
mode; its return is the task's write, its ``Command`` goto routes instead of the node's
edges; a handler that raises fails the run."""

from __future__ import annotations

import asyncio
import operator
from typing import Annotated, Any, TypedDict

import pytest

from engine import END, START, Command, Graph, GraphError, NodeError, RetryPolicy, Send
from engine.errors import NodeTimeoutError


class S(TypedDict):
    log: Annotated[list[str], operator.add]
    n: int


INPUT: S = {"log": [], "n": 0}


def steps(result: Any) -> list[tuple[int, str]]:
    """(step, node) of every call of a run that ended well, in step then node order."""
    return sorted((c.step, c.node) for c in result.trace.calls)


# -- module-level nodes: a cpu-lane node's function must pickle -----------------------


def fails(state: S) -> dict[str, Any]:
    raise ValueError(f"bad input n={state['n']}")


async def fails_async(state: S) -> dict[str, Any]:
    raise ValueError(f"bad input n={state['n']}")


def after(state: S) -> dict[str, Any]:
    return {"log": ["after"]}


def fallback(state: S) -> dict[str, Any]:
    return {"log": ["fallback"]}


def sibling(state: S) -> dict[str, Any]:
    return {"log": ["sibling"]}


def to_fallback(state: S, error: NodeError) -> Command[Any]:
    """Says which node failed and what it raised, then goes to the fallback."""
    what = f"handled {error.node}: {type(error.error).__name__}: {error.error}"
    return Command(goto="fallback", update={"log": [what]})


def graph(node: Any = fails, handler: Any = to_fallback, **options: Any) -> Graph[S]:
    """START -> node -> after -> END, with ``fallback`` reached only by a handler's goto."""
    g: Graph[S] = Graph(S)
    g.add_node("node", node, error_handler=handler, **options)
    g.add_node("after", after)
    g.add_node("fallback", fallback)
    g.add_edge(START, "node")
    g.add_edge("node", "after")
    g.add_edge("after", END)
    g.add_edge("fallback", END)
    return g


HANDLED = "handled node: ValueError: bad input n=0"


@pytest.mark.parametrize("lane", ["io", "thread", "inline", "cpu"])
def test_a_handler_routes_to_a_fallback_on_every_lane(lane: str, mode: str) -> None:
    """The handler's Command goes where no edge goes; the node's own edge is not followed;
    the same final state on every lane and in every mode (a cpu-lane node's error comes
    back from its worker process in parallel mode, what it raised intact)."""
    node = fails_async if lane == "io" else fails
    result = graph(node, lane=lane).compile().run(INPUT, mode=mode)
    assert result.state == {"log": [HANDLED, "fallback"], "n": 0}
    assert steps(result) == [(0, "node"), (1, "fallback")]
    if lane == "cpu" and mode == "parallel":
        (failed,) = [c for c in result.trace.calls if c.node == "node"]
        assert failed.lane == "cpu"


def test_the_handler_runs_in_the_failed_calls_step_without_a_step_of_its_own() -> None:
    """The handler's write is the step's: the step after it runs its goto's node."""
    result = graph().compile().run(INPUT)
    assert result.metrics.steps == 2


ATTEMPTS: dict[str, int] = {}


def counted_failure(state: S) -> dict[str, Any]:
    ATTEMPTS["node"] = ATTEMPTS.get("node", 0) + 1
    raise ConnectionError(f"attempt {ATTEMPTS['node']} dropped")


def records_attempt(state: S, error: NodeError) -> dict[str, Any]:
    return {"log": [f"handled after {ATTEMPTS['node']} calls, attempt {error.attempt}"]}


def test_retries_are_spent_before_the_handler_runs(mode: str) -> None:
    """A RetryPolicy runs the node again first; the handler sees the last attempt's error."""
    ATTEMPTS.clear()
    retry = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=False)
    app = graph(counted_failure, records_attempt, lane="thread", retry=retry).compile()
    result = app.run(INPUT, mode=mode)
    assert ATTEMPTS == {"node": 3}
    assert result.state["log"] == ["handled after 3 calls, attempt 3"]


def succeeds_second_time(state: S) -> dict[str, Any]:
    ATTEMPTS["node"] = ATTEMPTS.get("node", 0) + 1
    if ATTEMPTS["node"] < 2:
        raise ConnectionError("dropped once")
    return {"log": ["ok"]}


def test_a_call_a_retry_saves_never_reaches_the_handler() -> None:
    ATTEMPTS.clear()
    retry = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=False)
    app = graph(succeeds_second_time, records_attempt, lane="thread", retry=retry).compile()
    assert app.run(INPUT).state["log"] == ["ok", "after"]


def raises(state: S, error: NodeError) -> dict[str, Any]:
    raise RuntimeError(f"the handler broke on {error.node}")


def test_a_handler_that_raises_fails_the_run(mode: str) -> None:
    """The run raises the handler's own error (as a node's), saying whose handler it was
    and what it was handling; no later step runs."""
    with pytest.raises(RuntimeError, match="the handler broke on node") as caught:
        graph(handler=raises).compile().run(INPUT, mode=mode)
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "error_handler" in notes and "node 'node'" in notes
    assert "ValueError: bad input n=0" in notes


async def test_a_handler_that_raises_is_a_node_error_naming_node_and_step() -> None:
    app = graph(handler=raises).compile()
    with pytest.raises(RuntimeError) as caught:
        await app.arun(INPUT)
    assert "step 0" in "\n".join(caught.value.__notes__)


def test_siblings_keep_their_writes_and_edges() -> None:
    """A handled call's sibling in the step writes and routes as ever; the handler's write
    merges in the failed task's place, (node, Send index) order."""
    g = graph(handler=lambda state, error: {"log": ["handled"]})
    g.add_node("z_sibling", sibling)
    g.add_edge(START, "z_sibling")
    g.add_edge("z_sibling", "after")
    result = g.compile().run(INPUT)
    assert result.state["log"] == ["handled", "sibling", "after"]
    assert steps(result) == [(0, "node"), (0, "z_sibling"), (1, "after")]


@pytest.mark.parametrize(
    ("handler", "log"),
    [
        (lambda state, error: {"log": ["plain update"]}, ["plain update"]),
        (lambda state, error: None, []),
        (lambda state: {"log": ["state only"]}, ["state only"]),
        (lambda state, error: Command(goto=END, update={"log": ["ended"]}), ["ended"]),
    ],
    ids=["dict", "none", "state-only", "goto-end"],
)
def test_without_a_goto_the_failed_nodes_branch_ends(handler: Any, log: list[str]) -> None:
    """As LangGraph: the node's edges are not followed; only a goto goes on."""
    result = graph(handler=handler).compile().run(INPUT)
    assert result.state["log"] == log
    assert steps(result) == [(0, "node")]


def fan_out(state: S) -> list[Send]:
    return [Send("node", {"log": [], "n": i}) for i in (1, 2)]


def per_send(state: S, error: NodeError) -> dict[str, Any]:
    return {"log": [f"handled n={state['n']}: {error.error}"]}


@pytest.mark.parametrize("lane", ["thread", "cpu"])
def test_each_send_is_handled_with_its_own_payload(lane: str, mode: str) -> None:
    g: Graph[S] = Graph(S)
    g.add_node("node", fails, lane=lane, error_handler=per_send)
    g.add_node("start", sibling)
    g.add_edge(START, "start")
    g.add_conditional_edges("start", fan_out)
    result = g.compile().run(INPUT, mode=mode)
    assert result.state["log"] == [
        "sibling",
        "handled n=1: bad input n=1",
        "handled n=2: bad input n=2",
    ]


def test_streams_show_the_handlers_update_under_its_name() -> None:
    """LangGraph's name for it: ``__error_handler__<node>``."""
    chunks = list(graph().compile().stream(INPUT, stream_mode="updates"))
    assert chunks == [
        {"__error_handler__node": {"log": [HANDLED]}},
        {"fallback": {"log": ["fallback"]}},
    ]


async def sleeps(state: S) -> dict[str, Any]:
    await asyncio.sleep(30)
    return {"log": ["never"]}


def on_timeout(state: S, error: NodeError) -> dict[str, Any]:
    assert isinstance(error.error, NodeTimeoutError)  # no exception of the node's own
    return {"log": [f"timed out: {error.node}"]}


def test_a_timeout_is_handled_like_any_failure() -> None:
    result = graph(sleeps, on_timeout, timeout=0.05).compile().run(INPUT)
    assert result.state["log"] == ["timed out: node"]


def reads_config(state: S, error: NodeError, config: dict[str, Any]) -> dict[str, Any]:
    return {"log": [f"{error.node} in {config['configurable']['thread_id']}"]}


async def async_handler(state: S, *, error: NodeError) -> Command[Any]:
    await asyncio.sleep(0)
    return Command(goto="fallback", update={"log": ["async handler"]})


def test_a_handler_takes_config_and_may_be_async() -> None:
    from engine.checkpoint import MemoryCheckpointer

    app = graph(handler=reads_config).compile(MemoryCheckpointer())
    assert app.run(INPUT, thread_id="t1").state["log"] == ["node in t1"]
    result = graph(handler=async_handler).compile().run(INPUT)
    assert result.state["log"] == ["async handler", "fallback"]


FLAKY = {"fail": True}


def flaky_sibling(state: S) -> dict[str, Any]:
    if FLAKY["fail"]:
        raise ConnectionError("sibling lost its connection")
    return {"log": ["sibling"]}


CALLED: list[str] = []


def counting_handler(state: S, error: NodeError) -> Command[Any]:
    CALLED.append(error.node)
    return Command(goto="fallback", update={"log": ["handled"]})


def test_a_step_that_fails_keeps_no_handled_write_and_resumes() -> None:
    """A sibling's unhandled failure fails the step: no handler runs, and on resume the
    failed node runs again, its handler with it, and the run goes where it said."""
    from engine.checkpoint import MemoryCheckpointer

    g = graph(handler=counting_handler, lane="thread")
    g.add_node("z_flaky", flaky_sibling, lane="thread")  # FLAKY is this process's
    g.add_edge(START, "z_flaky")
    app = g.compile(MemoryCheckpointer())
    FLAKY["fail"], CALLED[:] = True, []
    with pytest.raises(ConnectionError):
        app.run(INPUT, thread_id="t")
    assert CALLED == []
    FLAKY["fail"] = False
    result = app.run(None, thread_id="t")
    assert CALLED == ["node"]
    assert result.state["log"] == ["handled", "sibling", "fallback"]


def test_compile_counts_every_node_reachable_from_a_handled_node() -> None:
    """A node only a handler's goto reaches compiles; without the handler it is refused."""
    graph().compile()
    g: Graph[S] = Graph(S)
    g.add_node("node", fails)
    g.add_node("fallback", fallback)
    g.add_edge(START, "node")
    with pytest.raises(GraphError, match="cannot be reached"):
        g.compile()


def test_a_handler_that_cannot_take_the_error_is_refused_when_added() -> None:
    def misnamed(state: S, err: NodeError) -> None:
        return None

    with pytest.raises(GraphError, match=r"node 'node'.*def handler\(state, error\)"):
        Graph(S).add_node("node", fails, error_handler=misnamed)
    with pytest.raises(GraphError, match="not callable"):
        Graph(S).add_node("node", fails, error_handler="fallback")  # type: ignore[arg-type]


def test_node_error_error_is_what_the_node_raised() -> None:
    """``NodeError.error``: the node's own exception, or the NodeError itself when there is
    none (a timeout, a crash)."""
    cause = ValueError("x")
    raised = NodeError("m", node="n", step=0, lane="thread", attempt=1, raised=True)
    raised.__cause__ = cause
    assert raised.error is cause
    timed_out = NodeTimeoutError("t", node="n", step=0, lane="io", attempt=1)
    assert timed_out.error is timed_out


def asks(state: S, error: NodeError) -> dict[str, Any]:
    from engine import interrupt

    return {"log": [interrupt("what now?")]}


def test_a_handler_cannot_ask_a_person() -> None:
    """interrupt() in a handler fails the run saying where to ask instead."""
    from engine.checkpoint import MemoryCheckpointer

    app = graph(handler=asks).compile(MemoryCheckpointer())
    with pytest.raises(NodeError, match=r"interrupt\(\) cannot ask a person from an error"):
        app.run(INPUT, thread_id="t")


def test_under_engine_langgraph_a_timeout_is_langgraphs_class() -> None:
    """As under LangGraph: ``isinstance(error.error, NodeTimeoutError)`` with the class
    ``langgraph.errors`` (here ``engine.langgraph``) exports."""
    from engine import langgraph as lg

    seen: list[bool] = []

    def handler(state: S, error: lg.NodeError) -> dict[str, Any]:
        seen.append(isinstance(error.error, lg.NodeTimeoutError))
        return {"log": ["timed out"]}

    b = lg.StateGraph(S)
    b.add_node("node", sleeps, timeout=0.05, error_handler=handler)
    b.add_edge(START, "node")
    assert b.compile().invoke(INPUT)["log"] == ["timed out"]
    assert seen == [True]


def asks_sibling(state: S) -> dict[str, Any]:
    from engine import interrupt

    return {"log": [f"answer: {interrupt('go on?')}"]}


def test_a_step_stopped_by_a_question_runs_the_handled_node_again_on_resume() -> None:
    """A sibling's interrupt() stops the step after the handler ran; the checkpoint keeps
    no handled write, so the resume runs the node (and its handler) again."""
    from engine.checkpoint import MemoryCheckpointer

    g = graph(handler=counting_handler, lane="thread")
    g.add_node("z_asks", asks_sibling, lane="thread")
    g.add_edge(START, "z_asks")
    app = g.compile(MemoryCheckpointer())
    CALLED[:] = []
    first = app.run(INPUT, thread_id="t")
    assert first.interrupted and CALLED == ["node"]
    result = app.run(Command(resume="yes"), thread_id="t")
    assert CALLED == ["node", "node"]
    assert result.state["log"] == ["handled", "answer: yes", "fallback"]


def test_a_handlers_goto_to_no_node_is_a_graph_error_naming_it() -> None:
    handler = lambda state, error: Command(goto="nowhere")  # noqa: E731
    with pytest.raises(GraphError, match=r"the error_handler of node 'node' returned.*nowhere"):
        graph(handler=handler).compile().run(INPUT)


def crash_handler(state: S, error: NodeError) -> Command[Any]:
    return Command(goto="fallback", update={"log": [f"{type(error.error).__name__}"]})


def test_a_worker_that_keeps_crashing_is_handled_once_it_is_poison() -> None:
    """The engine runs a crashed call again (its own budget) before the call fails as
    poison; only then does the handler run, with the WorkerCrashedError."""
    from tests import crashers

    result = graph(crashers.hard_exit, crash_handler, lane="cpu").compile().run(INPUT)
    assert result.state["log"] == ["WorkerCrashedError", "fallback"]
    assert [c.attempt for c in result.trace.calls if c.node == "node"] == [1, 2, 3]


def test_a_subgraph_node_failing_inside_is_handled_by_the_parents_handler() -> None:
    """As LangGraph: the subgraph's node raised; the parent's handler of the subgraph's
    node gets that error, and streams name the handler in the parent's namespace."""
    from engine import langgraph as lg

    def handler(state: S, error: lg.NodeError) -> dict[str, Any]:
        return {"log": [f"{error.node}: {error.error!r}"]}

    inner = lg.StateGraph(S)
    inner.add_node("inner", fails)
    inner.add_edge(START, "inner")
    outer = lg.StateGraph(S)
    outer.add_node("sub", inner.compile(), error_handler=handler)
    outer.add_edge(START, "sub")
    chunks = list(outer.compile().stream(INPUT, stream_mode="updates", subgraphs=True))
    assert chunks == [((), {"__error_handler__sub": {"log": ["sub: ValueError('bad input n=0')"]}})]

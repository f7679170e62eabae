"""engine.langgraph beyond the conformance programs: where nodes run, errors as their own
type, config and runtime, what is refused for now."""

from __future__ import annotations

import operator
import os
import sys
import threading
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

import cloudpickle
import pytest

from engine.langgraph import (
    END,
    START,
    GraphRecursionError,
    StateGraph,
)
from engine.langgraph import Runtime as LGRuntime

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class S(TypedDict):
    n: int
    pids: Annotated[list[int], operator.add]
    threads: Annotated[list[str], operator.add]


def where(state: S) -> dict[str, Any]:
    return {"pids": [os.getpid()], "threads": [threading.current_thread().name]}


def two_nodes(**lane: Any) -> Any:
    b = StateGraph(S)
    b.add_node("a", where, **lane)
    b.add_node("b", where, **lane)
    b.add_edge(START, "a")
    b.add_edge(START, "b")
    b.add_edge(["a", "b"], END)
    return b


def test_sync_nodes_run_on_the_drivers_threads_by_default() -> None:
    out = two_nodes().compile().invoke({"n": 0})
    assert set(out["pids"]) == {os.getpid()}
    assert all(t.startswith("engine-thread") for t in out["threads"])


def test_lane_cpu_moves_a_node_to_worker_processes() -> None:
    out = two_nodes(lane="cpu").compile().invoke({"n": 0})
    assert os.getpid() not in out["pids"] and len(out["pids"]) == 2


def test_a_nodes_error_is_its_own_type_with_the_engines_details_as_notes() -> None:
    def boom(state: S) -> dict[str, Any]:
        raise KeyError("missing")

    b = StateGraph(S)
    b.add_node("boom", boom)
    b.add_edge(START, "boom")
    with pytest.raises(KeyError) as info:
        b.compile().invoke({"n": 0})
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "'boom'" in notes and "step 0" in notes and "lane 'thread'" in notes


def test_the_recursion_limit_is_langgraphs_and_config_can_lower_it() -> None:
    b = StateGraph(S)
    b.add_node("again", lambda s: {"n": s["n"] + 1})
    b.add_edge(START, "again")
    b.add_edge("again", "again")
    app = b.compile()
    with pytest.raises(GraphRecursionError):
        app.invoke({"n": 0}, {"recursion_limit": 5})
    seen = []
    with pytest.raises(GraphRecursionError):
        for chunk in app.stream({"n": 0}, {"recursion_limit": 7}, stream_mode="values"):
            seen.append(chunk["n"])
    assert seen == list(range(8))  # the input, then 7 steps: LangGraph's count


@dataclass
class Ctx:
    user: str


def test_config_and_runtime_reach_nodes_and_routers() -> None:
    seen: list[Any] = []

    def node(state: S, config: dict[str, Any]) -> dict[str, Any]:
        seen.append(config["configurable"]["tier"])
        return {"n": 1}

    def other(state: S, *, runtime: LGRuntime[Ctx]) -> dict[str, Any]:
        seen.append(runtime.context.user)
        return {"n": 2}

    def route(state: S, config: dict[str, Any]) -> str:
        return "other" if config["configurable"]["tier"] == "gold" else END

    b = StateGraph(S, context_schema=Ctx)
    b.add_node("node", node)
    b.add_node("other", other)
    b.add_edge(START, "node")
    b.add_conditional_edges("node", route, ["other", END])
    out = b.compile().invoke({"n": 0}, {"configurable": {"tier": "gold"}}, context={"user": "ada"})
    assert out["n"] == 2 and seen == ["gold", "ada"]


def test_lanes_auto_leaves_undeclared_sync_nodes_to_the_measured_policy() -> None:
    app = two_nodes().compile(lanes="auto")
    assert {n.decision.source for n in app.app.plan.nodes.values()} != {"declared"}
    plain = two_nodes().compile()
    assert {n.spec.lane for n in plain.app.plan.nodes.values()} == {"thread"}
    assert {n.spec.lane for n in app.app.plan.nodes.values()} == {None}


def test_an_error_handler_gets_langgraphs_node_error() -> None:
    """``error_handler=`` as LangGraph's: ``error: NodeError`` (the class the facade
    exports) with ``.node`` and ``.error``, what the node raised."""
    from engine.langgraph import NodeError

    seen: list[Any] = []

    def fails(state: S) -> dict[str, Any]:
        raise KeyError("missing")

    def handler(state: S, error: NodeError) -> dict[str, Any]:
        seen.append((isinstance(error, NodeError), error.node, error.error))
        return {"n": 7}

    b = StateGraph(S)
    b.add_node("d", fails, error_handler=handler)
    b.add_edge(START, "d")
    assert b.compile().invoke({"n": 0})["n"] == 7
    ((is_node_error, node, raised),) = seen
    assert is_node_error and node == "d"
    assert isinstance(raised, KeyError) and raised.args == ("missing",)


def test_mermaid_of_a_native_graph() -> None:
    from engine import Graph

    g: Graph[Any] = Graph(S)
    g.add_node("a", where)
    g.add_edge(START, "a")
    g.add_conditional_edges("a", lambda s: END, {"stop": END})
    text = g.compile().get_graph().draw_mermaid()
    assert "\t__start__ --> a;\n" in text
    assert "\ta -. &nbsp;stop&nbsp; .-> __end__;\n" in text

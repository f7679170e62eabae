"""Graph builder and compile-time validation: every GraphError names its culprit."""

from __future__ import annotations

import functools
import threading

import pytest
from pydantic import BaseModel

import engine
from engine import END, START, Graph, GraphError
from tests.support import State, append


def noop(state: State) -> None:
    return None


async def anoop(state: State) -> None:
    return None


def graph() -> Graph:
    g = Graph(State)
    g.add_node("a", noop)
    return g


class TestAddNode:
    def test_duplicate_name(self) -> None:
        """A second node with the same name is refused, naming it."""
        g = graph()
        with pytest.raises(GraphError, match="'a' is already in the graph"):
            g.add_node("a", noop)

    @pytest.mark.parametrize("name", [START, END])
    def test_reserved_name(self, name: str) -> None:
        """START and END cannot be node names."""
        with pytest.raises(GraphError, match="reserved"):
            graph().add_node(name, noop)

    def test_name_from_function(self) -> None:
        """add_node(fn) names the node after the function."""
        g = Graph(State)
        g.add_node(noop)
        assert "noop" in g.nodes

    def test_unknown_lane(self) -> None:
        """An unknown lane is refused and the valid ones are listed."""
        with pytest.raises(GraphError, match=r"unknown lane .gpu.*io, thread, cpu, inline"):
            graph().add_node("b", noop, lane="gpu")

    @pytest.mark.parametrize("lane", ["thread", "inline"])
    def test_async_on_sync_lane(self, lane: str) -> None:
        """An async def forced onto a lane that cannot run coroutines is refused."""
        with pytest.raises(GraphError, match=f"'b' is an async def, which lane '{lane}'"):
            graph().add_node("b", anoop, lane=lane)

    def test_unpicklable_cpu_node(self) -> None:
        """lane='cpu' on a function cloudpickle cannot serialize says why."""
        lock = threading.Lock()

        def holds_lock(state: State) -> None:
            with lock:
                return None

        with pytest.raises(GraphError, match=r"'locked'.*cannot serialize.*lock"):
            graph().add_node("locked", holds_lock, lane="cpu")

    @pytest.mark.parametrize("timeout", [0, -1.0])
    def test_bad_timeout(self, timeout: float) -> None:
        """A timeout must be positive."""
        with pytest.raises(GraphError, match="timeout must be > 0"):
            graph().add_node("b", noop, timeout=timeout)

    def test_reads_unknown_field(self) -> None:
        """reads= must name state fields."""
        with pytest.raises(GraphError, match="unknown fields"):
            graph().add_node("b", noop, reads=["nope"])

    def test_schema_must_be_model(self) -> None:
        """The state must be a pydantic model class."""
        with pytest.raises(GraphError, match="pydantic BaseModel subclass"):
            Graph(dict)  # type: ignore[arg-type]


class TestCompile:
    def test_unknown_edge_source(self) -> None:
        """An edge from a node never added names it."""
        g = graph()
        g.add_edge(START, "a")
        g.add_edge("ghost", "a")
        with pytest.raises(GraphError, match="unknown node 'ghost'"):
            g.compile()

    def test_unknown_edge_target(self) -> None:
        """An edge to a node never added names it."""
        g = graph()
        g.add_edge(START, "a")
        g.add_edge("a", "ghost")
        with pytest.raises(GraphError, match="ends at unknown node 'ghost'"):
            g.compile()

    def test_unknown_path_map_target(self) -> None:
        """A path_map naming a missing node is refused."""
        g = graph()
        g.add_edge(START, "a")
        g.add_conditional_edges("a", lambda s: "x", {"x": "ghost"})
        with pytest.raises(GraphError, match="unknown node 'ghost'"):
            g.compile()

    def test_no_entry(self) -> None:
        """A graph with nothing from START cannot run."""
        with pytest.raises(GraphError, match="no entry"):
            graph().compile()

    def test_unreachable(self) -> None:
        """A node no path from START reaches is named."""
        g = graph()
        g.add_node("island", noop)
        g.add_edge(START, "a")
        with pytest.raises(GraphError, match=r"\['island'\] cannot be reached"):
            g.compile()

    def test_branch_without_path_map_may_reach_all(self) -> None:
        """A router without path_map may reach any node, so none is unreachable."""
        g = graph()
        g.add_node("b", noop)
        g.add_edge(START, "a")
        g.add_conditional_edges("a", lambda s: "b")
        assert set(g.compile().plan.nodes) == {"a", "b"}

    def test_edge_into_start(self) -> None:
        """Nothing may point at START."""
        with pytest.raises(GraphError, match="cannot end at START"):
            graph().add_edge("a", START)

    def test_edge_from_end(self) -> None:
        """Nothing may leave END."""
        with pytest.raises(GraphError, match="cannot start at END"):
            graph().add_edge(END, "a")

    def test_empty_graph(self) -> None:
        """A graph without nodes is refused."""
        with pytest.raises(GraphError, match="no nodes"):
            Graph(State).compile()

    def test_partial_nodes_compile(self) -> None:
        """functools.partial of module functions are valid nodes on every lane."""
        g = Graph(State)
        g.add_node("p", functools.partial(append, "items", "x"), lane="cpu")
        g.add_edge(START, "p")
        assert g.compile().explain().lane_of("p") == "cpu"


def test_compiled_graph_runs_from_sync_code() -> None:
    """invoke runs a compiled graph without a running loop."""
    g = Graph(State)
    g.add_node("a", functools.partial(append, "items", "x"), lane="inline")
    g.add_edge(START, "a")
    out = g.compile().invoke({"topic": "t"})
    assert isinstance(out, State) and out.items == ["x"]


class Small(BaseModel):
    x: int = 0


def test_decorators_mark_lanes() -> None:
    """The lane decorators record the lane on the function."""

    @engine.thread
    def t(state: Small) -> None:
        return None

    g = Graph(Small)
    g.add_node("t", t)
    g.add_edge(START, "t")
    assert g.compile().explain().lane_of("t") == "thread"

"""Graph builder and compile-time validation: every GraphError names its culprit."""

from __future__ import annotations

import functools
import operator
import threading
from typing import Annotated, Any, TypedDict

import pytest
from pydantic import BaseModel

import engine
from engine import END, START, Graph, GraphError
from tests.support import State, append


def noop(state: State) -> None:
    return None


async def anoop(state: State) -> None:
    return None


def lock_closure() -> Any:
    """A sync function cloudpickle cannot serialize: it closes over a lock."""
    lock = threading.Lock()

    def holds_lock(state: State) -> None:
        with lock:
            return None

    return holds_lock


class LgState(TypedDict):
    """LangGraph's state for the same graphs (LangGraph is run to compare)."""

    log: Annotated[list[str], operator.add]


def graph() -> Graph:
    g = Graph(State)
    g.add_node("a", noop)
    return g


class TestGraph:
    def test_schema_must_be_model_class(self) -> None:
        """The state must be a pydantic model class, and the message says how to define one."""
        with pytest.raises(GraphError, match=r"pydantic BaseModel subclass, got <class 'dict'>"):
            Graph(dict)

    def test_schema_instance_is_refused(self) -> None:
        """A state instance instead of its class is refused."""
        with pytest.raises(GraphError, match="pass the class"):
            Graph(State())  # type: ignore[arg-type]

    def test_builder_methods_chain(self) -> None:
        """add_node and add_edge return the graph, so calls chain."""
        g = Graph(State).add_node("a", noop).add_edge(START, "a").add_edge("a", END)
        assert isinstance(g, Graph) and list(g.nodes) == ["a"]


class TestAddNode:
    def test_duplicate_name(self) -> None:
        """A second node with the same name is refused, naming it."""
        g = graph()
        with pytest.raises(GraphError, match="node 'a' is already in the graph"):
            g.add_node("a", noop)

    @pytest.mark.parametrize("name", [START, END])
    def test_reserved_name(self, name: str) -> None:
        """START and END cannot be node names; the message names the one used."""
        with pytest.raises(GraphError, match=f"'{name}' is reserved"):
            graph().add_node(name, noop)

    def test_empty_name(self) -> None:
        """A node name must be a non-empty string."""
        with pytest.raises(GraphError, match="non-empty string"):
            graph().add_node("", noop)

    def test_name_from_function(self) -> None:
        """add_node(fn) names the node after the function."""
        g = Graph(State)
        g.add_node(noop)
        assert list(g.nodes) == ["noop"] and g.nodes["noop"].fn is noop

    def test_name_without_function(self) -> None:
        """add_node('name') without a function says how to call it."""
        with pytest.raises(GraphError, match=r"add_node\('b'\) needs a function"):
            graph().add_node("b")

    def test_not_callable(self) -> None:
        """A node's function must be callable; the message names the node."""
        with pytest.raises(GraphError, match="node 'b': 42 is not callable"):
            graph().add_node("b", 42)  # type: ignore[arg-type]

    def test_unknown_lane(self) -> None:
        """An unknown lane is refused and the valid ones are listed."""
        with pytest.raises(
            GraphError, match=r"node 'b': unknown lane 'gpu'.*io, thread, cpu, inline"
        ):
            graph().add_node("b", noop, lane="gpu")

    def test_auto_lane_means_undeclared(self) -> None:
        """lane='auto' leaves the decision to the classifier."""
        g = graph()
        g.add_node("b", anoop, lane="auto")
        assert g.nodes["b"].lane is None

    @pytest.mark.parametrize("lane", ["thread", "inline"])
    def test_async_on_sync_lane(self, lane: str) -> None:
        """An async def forced onto a lane that cannot run coroutines is refused."""
        with pytest.raises(GraphError, match=f"node 'b' is an async def, which lane '{lane}'"):
            graph().add_node("b", anoop, lane=lane)

    def test_unpicklable_cpu_node(self) -> None:
        """lane='cpu' on a function cloudpickle cannot serialize names the node and says why."""
        with pytest.raises(GraphError, match=r"node 'locked'.*cannot serialize.*lock") as info:
            graph().add_node("locked", lock_closure(), lane="cpu")
        assert "lane='thread'" in str(info.value)  # and what to do instead

    def test_unpicklable_sync_node_without_lane_is_accepted(self) -> None:
        """Without a declared lane an unpicklable function is accepted (it goes to a thread)."""
        g = graph()
        g.add_node("locked", lock_closure())
        assert g.nodes["locked"].lane is None

    @pytest.mark.parametrize("timeout", [0, -1.0])
    def test_bad_timeout(self, timeout: float) -> None:
        """A timeout must be positive; the message names the node and the value."""
        with pytest.raises(
            GraphError, match=f"node 'b': timeout must be > 0 seconds, got {timeout}"
        ):
            graph().add_node("b", noop, timeout=timeout)

    def test_reads_unknown_field(self) -> None:
        """reads= must name state fields."""
        with pytest.raises(GraphError, match=r"node 'b': reads= names unknown fields \['nope'\]"):
            graph().add_node("b", noop, reads=["nope"])

    def test_spec_keeps_options(self) -> None:
        """The node spec records lane, retry and timeout as given."""
        policy = engine.RetryPolicy(max_attempts=2)
        g = graph()
        g.add_node("b", noop, lane="thread", retry=policy, timeout=2.5)
        spec = g.nodes["b"]
        assert (spec.lane, spec.retry, spec.timeout, spec.is_coroutine) == (
            "thread",
            policy,
            2.5,
            False,
        )


class TestDeclaredByDecorator:
    """A lane declared by decorator is as binding as lane=, so it is checked the same way."""

    @pytest.mark.parametrize("lane", ["thread", "inline"])
    def test_async_marked_for_sync_lane(self, lane: str) -> None:
        """An async def decorated @engine.thread or @engine.inline is refused at add_node."""

        async def marked(state: State) -> None:
            return None

        getattr(engine, lane)(marked)
        with pytest.raises(GraphError, match=f"node 'b' is an async def, which lane '{lane}'"):
            graph().add_node("b", marked)

    def test_unpicklable_marked_cpu(self) -> None:
        """A function decorated @engine.cpu that cloudpickle cannot serialize is refused."""
        with pytest.raises(GraphError, match=r"node 'locked'.*cannot serialize.*lock"):
            graph().add_node("locked", engine.cpu(lock_closure()))


class TestAddEdge:
    def test_edge_into_start(self) -> None:
        """Nothing may point at START."""
        with pytest.raises(GraphError, match="cannot end at START"):
            graph().add_edge("a", START)

    def test_edge_from_end(self) -> None:
        """Nothing may leave END."""
        with pytest.raises(GraphError, match="cannot start at END"):
            graph().add_edge(END, "a")

    def test_no_source(self) -> None:
        """An edge needs at least one source."""
        with pytest.raises(GraphError, match="at least one source"):
            graph().add_edge([], "a")

    def test_fan_in_repeats_source(self) -> None:
        """A fan-in naming a source twice is refused, listing the sources."""
        with pytest.raises(GraphError, match=r"repeat a node: \['a', 'a'\]"):
            graph().add_edge(["a", "a"], "b")

    def test_start_in_fan_in(self) -> None:
        """START cannot be one source among several."""
        with pytest.raises(GraphError, match="START cannot be one of several fan-in sources"):
            graph().add_edge([START, "a"], "b")

    def test_fan_in_added_twice(self) -> None:
        """The same fan-in edge twice is refused at compile, naming it."""
        g = graph()
        g.add_node("b", noop)
        g.add_node("c", noop)
        g.add_edge(START, "a")
        g.add_edge(START, "b")
        g.add_edge(["a", "b"], "c")
        g.add_edge(["b", "a"], "c")
        with pytest.raises(GraphError, match=r"fan-in edge \['a', 'b'\] -> 'c' is added twice"):
            g.compile()


class TestFanInToEnd:
    """``add_edge([a, b], END)``: the run ends once both finished, as in LangGraph."""

    @staticmethod
    def fan_in_to_end() -> Graph:
        g = Graph(State)
        g.add_node("a", functools.partial(append, "items", "a"))
        g.add_node("b", functools.partial(append, "items", "b"))
        g.add_node("c", functools.partial(append, "items", "c"))
        g.add_edge(START, "a")
        g.add_edge(START, "b")
        g.add_edge("b", "c")
        g.add_edge(["a", "c"], END)
        return g

    async def test_the_run_ends_after_all_sources(self, mode: str) -> None:
        """Every node runs once, then the run ends (it ended in a bare KeyError)."""
        result = await self.fan_in_to_end().compile().arun({}, mode=mode)
        assert result.state.items == ["a", "b", "c"]
        assert result.metrics.steps == 2

    async def test_langgraph_ends_in_the_same_state(self) -> None:
        """LangGraph, run on the same graph, ends in the same state."""
        lg = pytest.importorskip("langgraph.graph")
        g = lg.StateGraph(LgState)
        for name in "abc":
            g.add_node(name, lambda s, name=name: {"log": [name]})
        g.add_edge(lg.START, "a")
        g.add_edge(lg.START, "b")
        g.add_edge("b", "c")
        g.add_edge(["a", "c"], lg.END)
        theirs = await g.compile().ainvoke({"log": []})
        ours = await self.fan_in_to_end().compile().ainvoke({})
        assert ours.items == theirs["log"]

    async def test_a_checkpointed_thread_finishes_and_takes_new_input(self) -> None:
        """With a checkpointer the thread ends "done" with nothing left to run, so the next
        input runs (the thread was stuck: "unfinished run")."""
        from engine.checkpoint import MemoryCheckpointer

        cp = MemoryCheckpointer()
        app = self.fan_in_to_end().compile(checkpointer=cp)
        await app.arun({}, thread_id="t")
        latest = await cp.get_latest("t")
        assert latest is not None
        assert (latest.status, latest.next_tasks, latest.fanin) == ("done", [], {})
        again = await app.arun({}, thread_id="t")
        assert again.state.items == ["a", "b", "c"]


class TestRouterReturningNone:
    """A router that returns None (a branch that forgot to return) is an error, not an end."""

    @staticmethod
    def routed(route: Any, path_map: Any = None) -> Graph:
        g = Graph(State)
        g.add_node("a", functools.partial(append, "items", "a"))
        g.add_node("b", functools.partial(append, "items", "b"))
        g.add_edge(START, "a")
        g.add_conditional_edges("a", route, path_map)
        return g

    @pytest.mark.parametrize("result", [None, [None], ["b", None]])
    async def test_none_is_a_graph_error_that_says_to_return_end(self, result: Any) -> None:
        """The error names the edge's source and the step, and says to return END."""
        app = self.routed(lambda s: result).compile()
        with pytest.raises(GraphError, match="return END to end the run there") as info:
            await app.arun({})
        assert "conditional edge from 'a' returned None (routing after step 0)" in str(info.value)
        assert (info.value.node, info.value.step) == ("a", 0)

    async def test_end_and_an_empty_list_still_end_the_run(self) -> None:
        """END, or no target at all, ends the run quietly."""
        for result in (END, []):
            state = await self.routed(lambda s, r=result: r).compile().ainvoke({})
            assert state.items == ["a"]

    async def test_a_path_map_may_map_none(self) -> None:
        """A path_map with a None key says where None goes: that is honoured."""
        state = await self.routed(lambda s: None, {None: "b"}).compile().ainvoke({})
        assert state.items == ["a", "b"]


class TestAddConditionalEdges:
    def test_async_def_router(self) -> None:
        """An async def router is refused when it is added, naming the edge's source."""

        async def route(state: State) -> str:
            return END

        with pytest.raises(GraphError, match="router of the conditional edge from 'a' is async"):
            graph().add_conditional_edges("a", route)

    def test_from_end(self) -> None:
        """Conditional edges cannot leave END."""
        with pytest.raises(GraphError, match="cannot start at END"):
            graph().add_conditional_edges(END, noop)

    def test_route_not_callable(self) -> None:
        """A router must be callable; the message names the source."""
        with pytest.raises(GraphError, match="from 'a': route 'b' is not callable"):
            graph().add_conditional_edges("a", "b")  # type: ignore[arg-type]

    def test_path_map_list_maps_names_to_themselves(self) -> None:
        """A list path_map maps each name to itself."""
        g = graph()
        g.add_conditional_edges("a", noop, ["x", "y"])
        assert g.branches[0].path_map == {"x": "x", "y": "y"}


class TestCompile:
    def test_unknown_edge_source(self) -> None:
        """An edge from a node never added names it and lists the known nodes."""
        g = graph()
        g.add_edge(START, "a")
        g.add_edge("ghost", "a")
        with pytest.raises(GraphError, match=r"starts at unknown node 'ghost'.*known: \['a'\]"):
            g.compile()

    def test_unknown_fan_in_source(self) -> None:
        """A fan-in source never added is named."""
        g = graph()
        g.add_node("b", noop)
        g.add_edge(START, "a")
        g.add_edge(["a", "ghost"], "b")
        with pytest.raises(GraphError, match="starts at unknown node 'ghost'"):
            g.compile()

    def test_unknown_edge_target(self) -> None:
        """An edge to a node never added names it."""
        g = graph()
        g.add_edge(START, "a")
        g.add_edge("a", "ghost")
        with pytest.raises(GraphError, match="ends at unknown node 'ghost'"):
            g.compile()

    def test_unknown_conditional_source(self) -> None:
        """A conditional edge from a node never added names it."""
        g = graph()
        g.add_edge(START, "a")
        g.add_conditional_edges("ghost", noop)
        with pytest.raises(GraphError, match="conditional edge starts at unknown node 'ghost'"):
            g.compile()

    def test_unknown_path_map_target(self) -> None:
        """A path_map naming a missing node names the key, the node and the source."""
        g = graph()
        g.add_edge(START, "a")
        g.add_conditional_edges("a", noop, {"x": "ghost"})
        with pytest.raises(
            GraphError, match=r"from 'a': path_map\['x'\] names unknown node 'ghost'"
        ):
            g.compile()

    def test_path_map_may_name_end(self) -> None:
        """END is a valid path_map target."""
        g = graph()
        g.add_edge(START, "a")
        g.add_conditional_edges("a", noop, {"stop": END})
        assert list(g.compile().plan.nodes) == ["a"]

    def test_no_entry(self) -> None:
        """A graph with nothing from START cannot run, and the message says how to add one."""
        with pytest.raises(GraphError, match=r"no entry.*add_edge\(START, 'first_node'\)"):
            graph().compile()

    def test_conditional_entry_counts(self) -> None:
        """A conditional edge from START is an entry."""
        g = graph()
        g.add_conditional_edges(START, noop, ["a"])
        assert set(g.compile().plan.nodes) == {"a"}

    def test_unreachable(self) -> None:
        """A node no path from START reaches is named."""
        g = graph()
        g.add_node("island", noop)
        g.add_node("lagoon", noop)
        g.add_edge(START, "a")
        g.add_edge("island", "lagoon")
        with pytest.raises(
            GraphError, match=r"\['island', 'lagoon'\] cannot be reached from START"
        ):
            g.compile()

    def test_path_map_limits_reach(self) -> None:
        """With a path_map, only the nodes it names are reachable through the router."""
        g = graph()
        g.add_node("b", noop)
        g.add_node("c", noop)
        g.add_edge(START, "a")
        g.add_conditional_edges("a", noop, {"go": "b"})
        with pytest.raises(GraphError, match=r"\['c'\] cannot be reached"):
            g.compile()

    def test_branch_without_path_map_may_reach_all(self) -> None:
        """A router without path_map may reach any node, so none is unreachable."""
        g = graph()
        g.add_node("b", noop)
        g.add_edge(START, "a")
        g.add_conditional_edges("a", noop)
        assert set(g.compile().plan.nodes) == {"a", "b"}

    def test_empty_graph(self) -> None:
        """A graph without nodes is refused."""
        with pytest.raises(GraphError, match="no nodes"):
            Graph(State).compile()

    def test_plan_records_edges(self) -> None:
        """The plan keeps static edges by source, fan-ins, and branches by source."""
        g = Graph(State)
        for name in ("a", "b", "c"):
            g.add_node(name, noop)
        g.add_edge(START, "a")
        g.add_edge(START, "b")
        g.add_edge("a", "c")
        g.add_edge("a", "c")  # a repeated static edge is one edge
        g.add_edge(["a", "b"], "c")
        g.add_conditional_edges("c", noop, {"end": END})
        plan = g.compile().plan
        assert plan.edges[START] == ("a", "b") and plan.edges["a"] == ("c",)
        assert [(f.sources, f.target) for f in plan.fanins] == [(frozenset({"a", "b"}), "c")]
        assert [f.target for f in plan.fanins_by_source["b"]] == ["c"]
        assert len(plan.branches["c"]) == 1

    def test_plan_is_frozen(self) -> None:
        """The compiled plan cannot be changed."""
        g = graph()
        g.add_edge(START, "a")
        plan = g.compile().plan
        with pytest.raises(TypeError):
            plan.nodes["b"] = plan.nodes["a"]  # type: ignore[index]

    def test_partial_nodes_compile(self) -> None:
        """functools.partial of a module function is a valid cpu node."""
        g = Graph(State)
        g.add_node("p", functools.partial(append, "items", "x"), lane="cpu")
        g.add_edge(START, "p")
        assert g.compile().explain().lane_of("p") == "cpu"


class Small(BaseModel):
    x: int = 0


def test_decorators_mark_lanes() -> None:
    """A lane decorator decides the node's lane at compile."""

    @engine.thread
    def t(state: Small) -> None:
        return None

    g = Graph(Small)
    g.add_node("t", t)
    g.add_edge(START, "t")
    assert g.compile().explain().lane_of("t") == "thread"

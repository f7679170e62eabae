"""Super-step semantics, the same in every mode: edges, fan-in, routers, Send, cycles."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from pydantic import ValidationError

from engine import (
    END,
    START,
    Graph,
    InvalidUpdateError,
    NodeError,
    NodeTimeoutError,
    RecursionLimitError,
    RetryPolicy,
    Send,
)
from tests.support import State, append, async_append, fail


def add(g: Graph, name: str, value: str | None = None, lane: str = "cpu", **kw: Any) -> None:
    g.add_node(name, functools.partial(append, "items", value or name), lane=lane, **kw)


class TestEdges:
    async def test_fan_out_and_in(self, mode: str) -> None:
        """START fans out to three nodes; the fan-in target runs once after all of them."""
        g = Graph(State)
        for n in ("a", "b", "c"):
            add(g, n)
            g.add_edge(START, n)
        add(g, "join", lane="inline")
        g.add_edge(["a", "b", "c"], "join")
        g.add_edge("join", END)
        r = await g.compile().arun({}, mode=mode)
        assert r.state.items == ["a", "b", "c", "join"]
        assert [c.node for c in r.trace.calls if c.step == 1] == ["join"]
        assert r.metrics.steps == 2

    async def test_fan_in_across_steps(self, mode: str) -> None:
        """Sources finishing in different steps: the target runs once, after the last."""
        g = Graph(State)
        add(g, "short")
        add(g, "long1")
        add(g, "long2")
        add(g, "join", lane="inline")
        g.add_edge(START, "short")
        g.add_edge(START, "long1")
        g.add_edge("long1", "long2")
        g.add_edge(["short", "long2"], "join")
        r = await g.compile().arun({}, mode=mode)
        joins = [c for c in r.trace.calls if c.node == "join"]
        assert len(joins) == 1 and joins[0].step == 2
        assert r.state.items == ["long1", "short", "long2", "join"]

    async def test_merge_order_ignores_completion_order(self, mode: str) -> None:
        """The alphabetically first node finishing last still merges first."""
        g = Graph(State)
        g.add_node("a", functools.partial(async_append, "items", "a", 0.2))
        g.add_node("b", functools.partial(async_append, "items", "b", 0.0))
        g.add_edge(START, "a")
        g.add_edge(START, "b")
        r = await g.compile().arun({}, mode=mode)
        assert r.state.items == ["a", "b"]
        if mode != "sequential":
            a, b = r.trace.for_node("a")[0], r.trace.for_node("b")[0]
            assert b.end < a.end  # b really finished first

    async def test_none_update(self, mode: str) -> None:
        """A node returning None changes nothing."""
        g = Graph(State)
        g.add_node("n", functools.partial(lambda s: None), lane="inline")
        g.add_edge(START, "n")
        r = await g.compile().arun({"topic": "t"}, mode=mode)
        assert r.state == State(topic="t")


def route_on_count(state: State) -> str:
    return "again" if state.count < 3 else END


def bump(state: State) -> dict[str, Any]:
    return {"count": state.count + 1, "items": [f"n{state.count}"]}


def fan_sends(state: State) -> list[Send]:
    return [Send("worker", {"doc": d}) for d in ("x", "y", "z")]


def worker(payload: dict[str, str]) -> dict[str, Any]:
    return {"items": [payload["doc"].upper()]}


class TestRouting:
    async def test_cycle_ends_by_router(self, mode: str) -> None:
        """A cycle runs until its router returns END."""
        g = Graph(State)
        g.add_node("again", bump)
        g.add_edge(START, "again")
        g.add_conditional_edges("again", route_on_count)
        r = await g.compile().arun({}, mode=mode)
        assert r.state.count == 3 and r.state.items == ["n0", "n1", "n2"]

    async def test_recursion_limit(self, mode: str) -> None:
        """An endless cycle stops at recursion_limit with a RecursionLimitError."""
        g = Graph(State)
        g.add_node("loop", bump, lane="inline")
        g.add_edge(START, "loop")
        g.add_edge("loop", "loop")
        with pytest.raises(RecursionLimitError, match="recursion_limit=5"):
            await g.compile().arun({}, mode=mode, recursion_limit=5)

    async def test_send_fan_out(self, mode: str) -> None:
        """Each Send is its own task with its own payload, merged in Send order."""
        g = Graph(State)
        g.add_node("plan", lambda s: None, lane="inline")
        g.add_node("worker", worker, lane="cpu")
        g.add_edge(START, "plan")
        g.add_conditional_edges("plan", fan_sends)
        r = await g.compile().arun({}, mode=mode)
        assert r.state.items == ["X", "Y", "Z"]
        assert sorted(c.index for c in r.trace.for_node("worker")) == [0, 1, 2]

    async def test_router_list_and_path_map(self, mode: str) -> None:
        """A router may return a list of names, mapped through path_map."""
        g = Graph(State)
        g.add_node("start", lambda s: None, lane="inline")
        add(g, "left")
        add(g, "right")
        g.add_edge(START, "start")
        g.add_conditional_edges("start", lambda s: ["L", "R"], {"L": "left", "R": "right"})
        r = await g.compile().arun({}, mode=mode)
        assert r.state.items == ["left", "right"]

    async def test_router_end_stops(self, mode: str) -> None:
        """A router returning END triggers nothing and the run ends."""
        g = Graph(State)
        add(g, "only", lane="inline")
        add(g, "never", lane="inline")
        g.add_edge(START, "only")
        g.add_conditional_edges("only", lambda s: END, {"go": "never", END: END})
        r = await g.compile().arun({}, mode=mode)
        assert r.state.items == ["only"]

    async def test_conditional_entry(self, mode: str) -> None:
        """A router from START picks the first nodes from the input."""
        g = Graph(State)
        add(g, "x", lane="inline")
        add(g, "y", lane="inline")
        g.add_conditional_edges(START, lambda s: "y" if s.topic == "why" else "x")
        r = await g.compile().arun({"topic": "why"}, mode=mode)
        assert r.state.items == ["y"]


def mutate_items(state: State) -> dict[str, Any]:
    state.items.append("mutated")
    return {"report": ",".join(state.items)}


def read_items(state: State) -> dict[str, Any]:
    return {"topic": ",".join(state.items)}


class TestIsolation:
    async def test_node_input_is_a_private_copy(self, mode: str) -> None:
        """A node mutating its input affects neither its sibling nor the state."""
        g = Graph(State)
        g.add_node("m", mutate_items, lane="inline")
        g.add_node("r", read_items, lane="inline")
        g.add_edge(START, "m")
        g.add_edge(START, "r")
        r = await g.compile().arun({"items": ["x"]}, mode=mode)
        assert r.state.items == ["x"] and r.state.topic == "x"
        assert r.state.report == "x,mutated"


class TestErrors:
    async def test_bad_input_runs_nothing(self, mode: str) -> None:
        """Invalid input raises ValidationError before any node runs."""
        seen: list[str] = []
        g = Graph(State)
        g.add_node("a", lambda s: seen.append("ran"), lane="inline")
        g.add_edge(START, "a")
        with pytest.raises(ValidationError):
            await g.compile().arun({"count": "many"}, mode=mode)
        assert seen == []

    async def test_two_writers_of_plain_field(self, mode: str) -> None:
        """Two nodes of one step writing a plain field name both nodes and the field."""
        g = Graph(State)
        g.add_node("a", lambda s: {"report": "a"}, lane="inline")
        g.add_node("b", lambda s: {"report": "b"}, lane="inline")
        g.add_edge(START, "a")
        g.add_edge(START, "b")
        with pytest.raises(InvalidUpdateError, match="'a' and 'b' both wrote field 'report'"):
            await g.compile().arun({}, mode=mode)

    async def test_unknown_field_update(self, mode: str) -> None:
        """Writing an unknown key names node, step and key."""
        g = Graph(State)
        g.add_node("a", lambda s: {"nope": 1}, lane="inline")
        g.add_edge(START, "a")
        with pytest.raises(InvalidUpdateError, match=r"'a' \(step 0\) wrote unknown field 'nope'"):
            await g.compile().arun({}, mode=mode)

    async def test_node_error_from_worker(self, mode: str) -> None:
        """A failing cpu node is a NodeError with where, what, and the traceback text."""
        g = Graph(State)
        g.add_node("boom", functools.partial(fail, "kaput"), lane="cpu")
        g.add_edge(START, "boom")
        with pytest.raises(NodeError) as info:
            await g.compile().arun({}, mode=mode)
        err = info.value
        assert (err.node, err.step, err.lane, err.attempt) == ("boom", 0, "cpu", 1)
        assert err.error_type == "RuntimeError" and err.error_message == "kaput"
        assert "in fail" in err.traceback_text and "kaput" in str(err)

    async def test_retry_then_succeed(self, mode: str) -> None:
        """A ConnectionError is retried per policy; attempts show in the trace."""
        attempts: list[int] = []

        async def flaky(state: State) -> dict[str, Any]:
            attempts.append(1)
            if len(attempts) < 3:
                raise ConnectionError("reset")
            return {"report": "ok"}

        g = Graph(State)
        g.add_node("f", flaky, retry=RetryPolicy(max_attempts=3, initial_interval=0.01))
        g.add_edge(START, "f")
        r = await g.compile().arun({}, mode=mode)
        assert r.state.report == "ok"
        assert [c.attempt for c in r.trace.for_node("f")] == [1, 2, 3]
        assert [c.ok for c in r.trace.for_node("f")] == [False, False, True]

    async def test_value_error_not_retried(self, mode: str) -> None:
        """A ValueError is a bug: the default policy does not retry it."""
        calls: list[int] = []

        async def buggy(state: State) -> None:
            calls.append(1)
            raise ValueError("bad")

        g = Graph(State)
        g.add_node("b", buggy, retry=RetryPolicy(initial_interval=0.01))
        g.add_edge(START, "b")
        with pytest.raises(NodeError, match="ValueError: bad"):
            await g.compile().arun({}, mode=mode)
        assert len(calls) == 1

    async def test_io_timeout(self, mode: str) -> None:
        """An io node past its timeout is a NodeTimeoutError."""
        g = Graph(State)
        g.add_node("slow", functools.partial(async_append, "items", "x", 5.0), timeout=0.1)
        g.add_edge(START, "slow")
        with pytest.raises(NodeTimeoutError, match=r"timeout of 0\.1 s"):
            await g.compile().arun({}, mode=mode)

"""Super-step semantics, the same in every mode: edges, fan-in, routers, Send, cycles,
merge order, isolation, and the errors a run raises."""

from __future__ import annotations

import functools
import gc
import itertools
import warnings
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from engine import (
    END,
    START,
    Graph,
    GraphError,
    InvalidUpdateError,
    NodeError,
    NodeFailed,
    NodeFinished,
    NodeTimeoutError,
    RecursionLimitError,
    RetryPolicy,
    Send,
)
from engine.errors import node_error_of
from tests.nodes import (
    bump,
    flaky,
    mutate_and_log,
    mutate_items,
    read_items,
    returns,
    route_on_count,
    send_worker,
    sleep_append,
    sync_send_worker,
)
from tests.support import State, append, async_append, fail, thread_probe

FAST_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=False)


def add(g: Graph, name: str, value: str | None = None, lane: str = "cpu", **kw: Any) -> None:
    """A node that appends ``value`` (its name by default) to ``items``."""
    g.add_node(name, functools.partial(append, "items", value or name), lane=lane, **kw)


def steps_of(result: Any, node: str) -> list[int]:
    return [c.step for c in result.trace.for_node(node)]


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
        assert sorted((c.step, c.node) for c in r.trace.calls) == [
            (0, "a"),
            (0, "b"),
            (0, "c"),
            (1, "join"),
        ]
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
        assert steps_of(r, "join") == [2]
        assert r.state.items == ["long1", "short", "long2", "join"]

    async def test_fan_in_runs_again_after_fresh_sources(self, mode: str) -> None:
        """In a cycle, a fan-in target runs once per round of all its sources."""
        g = Graph(State)
        g.add_node("a", bump, lane="inline")
        add(g, "b", lane="inline")
        add(g, "join", lane="inline")
        g.add_edge(START, "a")
        g.add_edge(START, "b")
        g.add_edge(["a", "b"], "join")
        g.add_edge("join", "b")
        g.add_conditional_edges("join", functools.partial(route_on_count, 2, "a"))
        r = await g.compile().arun({}, mode=mode)
        assert steps_of(r, "join") == [1, 3]
        assert r.state.count == 2

    async def test_static_chain(self, mode: str) -> None:
        """Static edges run one node per step, in order."""
        g = Graph(State)
        for name in ("a", "b", "c"):
            add(g, name, lane="thread")
        g.add_edge(START, "a")
        g.add_edge("a", "b")
        g.add_edge("b", "c")
        r = await g.compile().arun({}, mode=mode)
        assert r.state.items == ["a", "b", "c"]
        assert [(c.node, c.step) for c in r.trace.calls] == [("a", 0), ("b", 1), ("c", 2)]

    async def test_run_ends_when_nothing_is_triggered(self, mode: str) -> None:
        """A node without outgoing edges ends the run after its step."""
        g = Graph(State)
        add(g, "only", lane="inline")
        g.add_edge(START, "only")
        r = await g.compile().arun({}, mode=mode)
        assert r.metrics.steps == 1 and r.state.items == ["only"]

    @pytest.mark.parametrize("lane", ["io", "thread", "cpu"])
    async def test_merge_order_ignores_completion_order(self, mode: str, lane: str) -> None:
        """The alphabetically first node finishing last still merges first."""
        g = Graph(State)
        for name, delay in (("a", 0.3), ("b", 0.0), ("c", 0.0)):
            if lane == "io":
                fn = functools.partial(async_append, "items", name, delay)
            else:
                fn = functools.partial(sleep_append, "items", name, delay)
            g.add_node(name, fn, lane=lane)
            g.add_edge(START, name)
        r = await g.compile().arun({}, mode=mode)
        assert r.state.items == ["a", "b", "c"]
        if mode != "sequential":
            a, b = r.trace.for_node("a")[0], r.trace.for_node("b")[0]
            assert b.end < a.end  # b really finished first

    async def test_none_update(self, mode: str) -> None:
        """A node returning None changes nothing, and the run goes on."""
        g = Graph(State)
        g.add_node("n", functools.partial(returns, None), lane="cpu")
        add(g, "after", lane="inline")
        g.add_edge(START, "n")
        g.add_edge("n", "after")
        r = await g.compile().arun({"topic": "t"}, mode=mode)
        assert r.state == State(topic="t", items=["after"])

    async def test_custom_reducer(self, mode: str) -> None:
        """A custom reducer merges the writes of one step into the input's value."""
        g = Graph(State)
        for name in ("p", "q"):
            g.add_node(name, functools.partial(thread_probe, name), lane="thread")
            g.add_edge(START, name)
        r = await g.compile().arun({"probes": {"given": 1}}, mode=mode)
        assert set(r.state.probes) == {"given", "p", "q"}


class TestRouting:
    async def test_cycle_ends_by_router(self, mode: str) -> None:
        """A cycle runs until its router returns END."""
        g = Graph(State)
        g.add_node("again", bump)
        g.add_edge(START, "again")
        g.add_conditional_edges("again", functools.partial(route_on_count, 3, "again"))
        r = await g.compile().arun({}, mode=mode)
        assert r.state.count == 3 and r.state.items == ["n0", "n1", "n2"]
        assert steps_of(r, "again") == [0, 1, 2]

    async def test_recursion_limit(self, mode: str) -> None:
        """An endless cycle stops at recursion_limit with a RecursionLimitError."""
        g = Graph(State)
        g.add_node("loop", bump, lane="inline")
        g.add_edge(START, "loop")
        g.add_edge("loop", "loop")
        with pytest.raises(RecursionLimitError, match=r"recursion_limit=5.*\['loop'\]"):
            await g.compile().arun({}, mode=mode, recursion_limit=5)

    @pytest.mark.parametrize(("limit", "ok"), [(3, True), (2, False)])
    async def test_recursion_limit_counts_steps(self, limit: int, ok: bool) -> None:
        """A run of exactly recursion_limit steps finishes; one more step is an error."""
        g = Graph(State)
        g.add_node("again", bump, lane="inline")
        g.add_edge(START, "again")
        g.add_conditional_edges("again", functools.partial(route_on_count, 3, "again"))
        app = g.compile()
        if ok:
            assert (await app.arun({}, recursion_limit=limit)).metrics.steps == 3
        else:
            with pytest.raises(RecursionLimitError):
                await app.arun({}, recursion_limit=limit)

    @pytest.mark.parametrize("lane", ["io", "cpu"])
    async def test_send_fan_out(self, mode: str, lane: str) -> None:
        """Each Send is its own task with its own payload, merged in Send index order
        even when Send 0 finishes last."""
        delays = {"s0": 0.3, "s1": 0.1, "s2": 0.0}

        def fan(state: State) -> list[Send]:
            return [Send("worker", {"doc": d, "delay": t}) for d, t in delays.items()]

        g = Graph(State)
        add(g, "plan", lane="inline")
        g.add_node("worker", send_worker if lane == "io" else sync_send_worker, lane=lane)
        g.add_edge(START, "plan")
        g.add_conditional_edges("plan", fan)
        r = await g.compile().arun({}, mode=mode)
        assert r.state.items == ["plan", "s0", "s1", "s2"]
        calls = r.trace.for_node("worker")
        assert sorted(c.index for c in calls) == [0, 1, 2] and {c.step for c in calls} == {1}
        if mode != "sequential":
            by_index = {c.index: c for c in calls}
            assert by_index[2].end < by_index[0].end  # Send 0 really finished last

    async def test_send_payload_replaces_state(self, mode: str) -> None:
        """A Send's target gets the payload, not the state."""
        g = Graph(State)
        add(g, "plan", lane="inline")
        g.add_node("show", read_items, lane="cpu")
        g.add_edge(START, "plan")
        g.add_conditional_edges("plan", lambda s: [Send("show", State(items=["payload"]))])
        r = await g.compile().arun({"items": ["state"]}, mode=mode)
        assert r.state.topic == "payload"

    async def test_router_list_and_path_map(self, mode: str) -> None:
        """A router may return a list of names, mapped through path_map."""
        g = Graph(State)
        add(g, "start", lane="inline")
        add(g, "left")
        add(g, "right")
        add(g, "other")
        g.add_edge(START, "start")
        g.add_conditional_edges(
            "start", lambda s: ["L", "R"], {"L": "left", "R": "right", "O": "other"}
        )
        r = await g.compile().arun({}, mode=mode)
        assert r.state.items == ["start", "left", "right"]
        assert steps_of(r, "left") == steps_of(r, "right") == [1]

    async def test_router_end_stops(self, mode: str) -> None:
        """A router returning END triggers nothing and the run ends."""
        g = Graph(State)
        add(g, "only", lane="inline")
        add(g, "never", lane="inline")
        g.add_edge(START, "only")
        g.add_conditional_edges("only", lambda s: END, {"go": "never", END: END})
        r = await g.compile().arun({}, mode=mode)
        assert r.state.items == ["only"] and r.metrics.steps == 1

    async def test_path_map_to_end(self, mode: str) -> None:
        """A path_map value END stops that branch."""
        g = Graph(State)
        add(g, "only", lane="inline")
        add(g, "never", lane="inline")
        g.add_edge(START, "only")
        g.add_conditional_edges("only", lambda s: "stop", {"go": "never", "stop": END})
        r = await g.compile().arun({}, mode=mode)
        assert r.state.items == ["only"]

    async def test_router_sees_merged_state(self, mode: str) -> None:
        """A router reads the state after its step's writes merged."""
        g = Graph(State)
        add(g, "a", lane="cpu")
        add(g, "b", lane="cpu")
        add(g, "yes", lane="inline")
        add(g, "no", lane="inline")
        g.add_edge(START, "a")
        g.add_edge(START, "b")
        g.add_conditional_edges("a", lambda s: "yes" if s.items == ["a", "b"] else "no")
        r = await g.compile().arun({}, mode=mode)
        assert r.state.items == ["a", "b", "yes"]

    async def test_conditional_entry(self, mode: str) -> None:
        """A router from START picks the first nodes from the input."""
        g = Graph(State)
        add(g, "x", lane="inline")
        add(g, "y", lane="inline")
        g.add_conditional_edges(START, lambda s: "y" if s.topic == "why" else "x")
        r = await g.compile().arun({"topic": "why"}, mode=mode)
        assert r.state.items == ["y"]


class TestRouterErrors:
    """A router returning something that is not a node fails the run, naming the source."""

    @pytest.mark.parametrize(
        ("route", "path_map", "pattern"),
        [
            (lambda s: "ghost", None, r"router of 'a' returned 'ghost', which is not a node"),
            (lambda s: "maybe", {"yes": "b"}, r"router of 'a' returned 'maybe'.*path_map"),
            (lambda s: [Send("ghost", {})], None, r"router of 'a' sent to unknown node 'ghost'"),
        ],
        ids=["unknown-name", "not-in-path-map", "send-to-unknown"],
    )
    async def test_bad_route(self, route: Any, path_map: Any, pattern: str) -> None:
        """A router's unknown target is a GraphError naming the source and the value."""
        g = Graph(State)
        add(g, "a", lane="inline")
        add(g, "b", lane="inline")
        g.add_edge(START, "a")
        g.add_conditional_edges("a", route, path_map)
        with pytest.raises(GraphError, match=pattern):
            await g.compile().arun({})

    async def test_async_router(self) -> None:
        """Routers must be plain functions; one that returns a coroutine names its source."""

        async def decide(state: State) -> str:
            return END

        def route(state: State) -> Any:
            return decide(state)  # looks sync, so add_conditional_edges cannot tell

        g = Graph(State)
        add(g, "a", lane="inline")
        g.add_edge(START, "a")
        g.add_conditional_edges("a", route)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with pytest.raises(
                GraphError, match="router of the conditional edge from 'a' is async"
            ):
                await g.compile().arun({})
            gc.collect()
        # The router's coroutine is closed, not left to warn 'never awaited' later.
        assert [str(w.message) for w in seen if "never awaited" in str(w.message)] == []


class TestIsolation:
    @pytest.mark.parametrize("lane", ["inline", "thread", "cpu"])
    async def test_node_input_is_a_private_copy(self, mode: str, lane: str) -> None:
        """A node mutating its input affects neither its sibling nor the state."""
        g = Graph(State)
        g.add_node("m", mutate_items, lane=lane)
        g.add_node("r", read_items, lane=lane)
        g.add_edge(START, "m")
        g.add_edge(START, "r")
        r = await g.compile().arun({"items": ["x"]}, mode=mode)
        assert r.state.items == ["x"] and r.state.topic == "x"
        assert r.state.report == "x,mutated"

    async def test_send_payload_is_a_private_copy(self, mode: str) -> None:
        """Two Sends of one payload object each get their own copy."""
        shared = State(items=["x"])
        g = Graph(State)
        add(g, "plan", lane="inline")
        g.add_node("m", mutate_and_log, lane="inline")
        g.add_edge(START, "plan")
        g.add_conditional_edges("plan", lambda s: [Send("m", shared), Send("m", shared)])
        r = await g.compile().arun({}, mode=mode)
        assert r.state.items == ["plan", "x,mutated", "x,mutated"]
        assert shared.items == ["x"]


class TestInvalidUpdates:
    """A bad update names node, step and field, in every mode and across processes."""

    def two_step(self, bad: Any) -> Graph:
        g = Graph(State)
        add(g, "first", lane="inline")
        g.add_node("bad", functools.partial(returns, bad), lane="cpu")
        g.add_edge(START, "first")
        g.add_edge("first", "bad")
        return g

    async def test_unknown_field(self, mode: str) -> None:
        """Writing an unknown key names node, step and key."""
        with pytest.raises(
            InvalidUpdateError, match=r"'bad' \(step 1\) wrote unknown field 'nope'"
        ) as e:
            await self.two_step({"nope": 1}).compile().arun({}, mode=mode)
        assert (e.value.node, e.value.step, e.value.field) == ("bad", 1, "nope")

    async def test_rejected_value(self, mode: str) -> None:
        """A value the schema rejects names node, step and field."""
        with pytest.raises(InvalidUpdateError, match=r"'bad' \(step 1\).*field 'count'") as e:
            await self.two_step({"count": "many"}).compile().arun({}, mode=mode)
        assert (e.value.node, e.value.step, e.value.field) == ("bad", 1, "count")

    async def test_non_dict(self, mode: str) -> None:
        """A node returning something other than a dict or None is named."""
        with pytest.raises(InvalidUpdateError, match=r"'bad' \(step 1\) returned list"):
            await self.two_step(["items"]).compile().arun({}, mode=mode)

    async def test_two_writers_of_plain_field(self, mode: str) -> None:
        """Two nodes of one step writing a plain field name both nodes and the field."""
        g = Graph(State)
        g.add_node("b", functools.partial(returns, {"report": "b"}), lane="cpu")
        g.add_node("a", functools.partial(returns, {"report": "a"}), lane="cpu")
        g.add_edge(START, "a")
        g.add_edge(START, "b")
        with pytest.raises(
            InvalidUpdateError, match=r"'a' and 'b' both wrote field 'report' in step 0"
        ) as e:
            await g.compile().arun({}, mode=mode)
        assert e.value.nodes == ("a", "b") and e.value.field == "report"

    async def test_bad_update_is_not_retried(self) -> None:
        """An invalid update would fail the same way again: no retry, whatever the policy."""
        g = Graph(State)
        g.add_node("bad", functools.partial(returns, {"nope": 1}), lane="inline", retry=FAST_RETRY)
        g.add_edge(START, "bad")
        events: list[Any] = []
        with pytest.raises(InvalidUpdateError):
            await g.compile().arun({}, on_event=events.append)
        failed = [e for e in events if isinstance(e, NodeFailed)]
        assert [(e.attempt, e.will_retry) for e in failed] == [(1, False)]


class TestInput:
    async def test_bad_input_runs_nothing(self, mode: str) -> None:
        """Invalid input raises ValidationError before any node runs."""
        seen: list[str] = []
        events: list[Any] = []
        g = Graph(State)
        g.add_node("a", lambda s: seen.append("ran"), lane="inline")
        g.add_edge(START, "a")
        with pytest.raises(ValidationError, match="count"):
            await g.compile().arun({"count": "many"}, mode=mode, on_event=events.append)
        assert seen == [] and events == []


class TestNodeErrors:
    async def test_node_error(self, mode: str) -> None:
        """A failing cpu node raises its own exception; where, what and the traceback
        text are its notes, and the engine's NodeError record is kept."""
        g = Graph(State)
        add(g, "first", lane="inline")
        g.add_node("boom", functools.partial(fail, "kaput"), lane="cpu")
        g.add_edge(START, "first")
        g.add_edge("first", "boom")
        with pytest.raises(RuntimeError, match="kaput") as info:
            await g.compile().arun({}, mode=mode)
        assert type(info.value) is RuntimeError
        notes = "\n".join(info.value.__notes__)
        assert "During task with name 'boom' (step 1, lane 'cpu', attempt 1)" in notes
        err = node_error_of(info.value)
        assert err is not None
        assert (err.node, err.step, err.lane, err.attempt) == ("boom", 1, "cpu", 1)
        assert err.error_type == "RuntimeError" and err.error_message == "kaput"
        assert "in fail" in err.traceback_text
        assert "'boom' (step 1, lane 'cpu', attempt 1) raised RuntimeError: kaput" in str(err)
        if mode == "parallel":  # it came back from a worker: the worker's traceback is a note
            assert "Traceback in the worker process" in notes and "in fail" in notes

    async def test_every_failure_of_a_step_is_reported(self, mode: str) -> None:
        """Two failing nodes of one step: the first by name is raised, noting the other."""
        g = Graph(State)
        for name in ("b", "a"):
            g.add_node(name, functools.partial(fail, name), lane="thread")
            g.add_edge(START, name)
        with pytest.raises(RuntimeError) as info:
            await g.compile().arun({}, mode=mode)
        assert str(info.value) == "a" and node_error_of(info.value).node == "a"  # type: ignore[union-attr]
        assert any("'b' also failed" in note for note in info.value.__notes__)

    async def test_retry_then_succeed(self, mode: str) -> None:
        """An io node failing with ConnectionError twice succeeds on attempt 3."""
        attempts: list[int] = []

        async def unsteady(state: State) -> dict[str, Any]:
            attempts.append(1)
            if len(attempts) < 3:
                raise ConnectionError("reset")
            return {"report": "ok"}

        g = Graph(State)
        g.add_node("f", unsteady, retry=FAST_RETRY)
        g.add_edge(START, "f")
        r = await g.compile().arun({}, mode=mode)
        assert r.state.report == "ok" and len(attempts) == 3
        assert [(c.attempt, c.ok, c.error) for c in r.trace.for_node("f")] == [
            (1, False, "ConnectionError"),
            (2, False, "ConnectionError"),
            (3, True, None),
        ]

    async def test_retry_across_processes(self, mode: str, tmp_path: Path) -> None:
        """A cpu node's ConnectionError is retried too, wherever the node runs."""
        g = Graph(State)
        g.add_node(
            "f", functools.partial(flaky, str(tmp_path / "n"), 2), lane="cpu", retry=FAST_RETRY
        )
        g.add_edge(START, "f")
        r = await g.compile().arun({}, mode=mode)
        assert r.state.report == "ok after 3"
        assert [c.attempt for c in r.trace.for_node("f")] == [1, 2, 3]

    async def test_retries_exhausted(self, tmp_path: Path) -> None:
        """When every attempt fails the error names the last attempt."""
        g = Graph(State)
        g.add_node(
            "f", functools.partial(flaky, str(tmp_path / "n"), 5), lane="thread", retry=FAST_RETRY
        )
        g.add_edge(START, "f")
        with pytest.raises(ConnectionError) as info:
            await g.compile().arun({})
        assert any("attempt 3" in note for note in info.value.__notes__)
        err = node_error_of(info.value)
        assert err is not None and err.attempt == 3 and err.error_type == "ConnectionError"

    async def test_value_error_not_retried(self, mode: str) -> None:
        """A ValueError is a bug: the default policy does not retry it."""
        calls: list[int] = []

        async def buggy(state: State) -> None:
            calls.append(1)
            raise ValueError("bad")

        g = Graph(State)
        g.add_node("b", buggy, retry=RetryPolicy(initial_interval=0.01))
        g.add_edge(START, "b")
        with pytest.raises(ValueError, match="bad") as info:
            await g.compile().arun({}, mode=mode)
        assert len(calls) == 1 and node_error_of(info.value).attempt == 1  # type: ignore[union-attr]

    async def test_io_timeout(self, mode: str) -> None:
        """An io node past its timeout is a NodeTimeoutError naming node, step and lane."""
        events: list[Any] = []
        g = Graph(State)
        g.add_node("slow", functools.partial(async_append, "items", "x", 5.0), timeout=0.1)
        g.add_edge(START, "slow")
        with pytest.raises(
            NodeTimeoutError, match=r"'slow' \(step 0, lane 'io'.*timeout of 0\.1 s"
        ):
            await g.compile().arun({}, mode=mode, on_event=events.append)
        assert not any(isinstance(e, NodeFinished) for e in events)
        failed = [e for e in events if isinstance(e, NodeFailed)]
        assert [(e.node, e.will_retry) for e in failed] == [("slow", False)]


def test_dispatch_order_is_sorted() -> None:
    """Sequential mode calls a step's tasks in (node, Send index) order."""
    g = Graph(State)
    for name in ("c", "a", "b"):
        g.add_node(name, functools.partial(thread_probe, name), lane="inline")
        g.add_edge(START, name)
    r = g.compile().run({}, mode="sequential")
    starts = sorted(r.trace.calls, key=lambda c: c.start)
    assert [c.node for c in starts] == ["a", "b", "c"]
    assert all(x.end <= y.start for x, y in itertools.pairwise(starts))


class TestOwnCancellation:
    async def test_a_node_that_cancels_itself_fails_its_step_not_the_run(self) -> None:
        """An async def raising CancelledError when nobody cancelled the run: a NodeError
        (error_type CancelledError) with the node named; the run is not cancelled."""
        import asyncio

        async def gives_up(state: State) -> dict[str, Any]:
            raise asyncio.CancelledError("gave up")

        g = Graph(State)
        g.add_node("quitter", gives_up)
        g.add_edge(START, "quitter")
        with pytest.raises(NodeError, match=r"'quitter'.*cancelled by its own code") as info:
            await g.compile().arun({})
        assert info.value.error_type == "CancelledError" and info.value.node == "quitter"


class TestContext:
    @pytest.mark.parametrize("width", [1, 2])
    async def test_a_node_cannot_change_the_callers_context(self, width: int) -> None:
        """A contextvar a node sets stays in that call, in a step of one call or many."""
        import contextvars

        var: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="unset")

        async def setter(state: State) -> None:
            var.set("set by a node")

        async def reader(state: State) -> dict[str, Any]:
            return {"report": var.get()}

        g = Graph(State)
        for i in range(width):
            g.add_node(f"s{i}", setter)
            g.add_edge(START, f"s{i}")
        g.add_node("r", reader)
        g.add_edge([f"s{i}" for i in range(width)], "r")
        r = await g.compile().arun({}, mode="parallel")
        assert r.state.report == "unset" and var.get() == "unset"


class TestClock:
    async def test_retry_waits_are_taken_on_the_runs_clock(self, tmp_path: Path) -> None:
        """A node failing twice under a policy that waits 30 s, then 60 s: on a FakeClock the
        run takes no real time, and its events show both waits on that clock."""
        import time

        from engine import NodeStarted, RunOptions
        from engine.resources import FakeClock

        g = Graph(State)
        policy = RetryPolicy(max_attempts=3, initial_interval=30.0, jitter=False)
        g.add_node(
            "f", functools.partial(flaky, str(tmp_path / "n"), 2), lane="inline", retry=policy
        )
        g.add_edge(START, "f")
        clock = FakeClock()
        events: list[Any] = []
        t0 = time.monotonic()
        r = await g.compile().arun({}, RunOptions(clock=clock, on_event=events.append))
        assert time.monotonic() - t0 < 5.0 and r.state.report == "ok after 3"
        starts = [e.time for e in events if isinstance(e, NodeStarted)]
        assert [round(b - a, 6) for a, b in itertools.pairwise(starts)] == [30.0, 60.0]
        assert clock.monotonic() == pytest.approx(90.0)

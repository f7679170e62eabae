"""Typed events: their order, failure and retry reporting, and observers that cannot
break a run."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import pydantic
import pytest

from engine import (
    START,
    Event,
    Graph,
    NodeFailed,
    NodeFinished,
    NodeStarted,
    RetryPolicy,
    RunFinished,
    RunStarted,
    StepFinished,
    StepStarted,
)
from tests.nodes import flaky
from tests.support import State, append, fail

NODE_EVENTS = (NodeStarted, NodeFinished, NodeFailed)


def chain() -> Graph:
    """Step 0: a (cpu) and b (inline); step 1: c (thread), a fan-in of both."""
    g = Graph(State)
    g.add_node("a", functools.partial(append, "items", "a"), lane="cpu")
    g.add_node("b", functools.partial(append, "items", "b"), lane="inline")
    g.add_node("c", functools.partial(append, "items", "c"), lane="thread")
    g.add_edge(START, "a")
    g.add_edge(START, "b")
    g.add_edge(["a", "b"], "c")
    return g


def steps(events: list[Any]) -> list[list[Any]]:
    """The events between each StepStarted and its StepFinished, both included."""
    out: list[list[Any]] = []
    for e in events:
        if isinstance(e, StepStarted):
            out.append([])
        if out:
            out[-1].append(e)
    return out


class TestOrder:
    async def test_run_events_frame_the_run(self, mode: str) -> None:
        """astream yields RunStarted first and RunFinished last, once each, for one run."""
        events = [e async for e in chain().compile().astream({}, mode=mode)]
        assert isinstance(events[0], RunStarted) and events[0].mode == mode
        assert isinstance(events[-1], RunFinished)
        assert events[-1].status == "done" and events[-1].steps == 2 and events[-1].error is None
        assert sum(isinstance(e, RunStarted | RunFinished) for e in events) == 2
        assert len({e.run_id for e in events}) == 1

    async def test_step_events_in_order(self, mode: str) -> None:
        """Each step is StepStarted, then per node NodeStarted before its NodeFinished, then
        StepFinished; every event of a step carries its number."""
        events = [e async for e in chain().compile().astream({}, mode=mode)]
        per_step = steps(events[1:-1])
        assert sum(len(s) for s in per_step) == len(events) - 2  # nothing outside a step
        expected_nodes = [["a", "b"], ["c"]]
        for number, (step_events, nodes) in enumerate(zip(per_step, expected_nodes, strict=True)):
            first, last = step_events[0], step_events[-1]
            assert isinstance(first, StepStarted) and first.step == number
            assert first.nodes == nodes
            assert isinstance(last, StepFinished) and last.step == number and last.ok
            middle = step_events[1:-1]
            assert all(isinstance(e, NODE_EVENTS) and e.step == number for e in middle)
            for node in nodes:
                kinds = [type(e) for e in middle if e.node == node]
                assert kinds == [NodeStarted, NodeFinished], (node, kinds)

    async def test_events_carry_lane_and_pid(self) -> None:
        """Node events name the lane; NodeFinished has the pid that ran the call."""
        events = [e async for e in chain().compile().astream({}, mode="parallel")]
        finished = {e.node: e for e in events if isinstance(e, NodeFinished)}
        assert {n: e.lane for n, e in finished.items()} == {
            "a": "cpu",
            "b": "inline",
            "c": "thread",
        }
        assert finished["a"].pid != os.getpid() and finished["b"].pid == os.getpid()
        assert all(
            e.duration_s >= 0 and e.attempt == 1 and e.index == -1 for e in finished.values()
        )

    async def test_astream_matches_on_event(self) -> None:
        """on_event sees the same events astream yields, in the same order."""
        seen: list[Any] = []
        events = [e async for e in chain().compile().astream({}, on_event=seen.append)]
        assert seen == events


class TestFailure:
    async def test_failure_events_then_error(self, mode: str) -> None:
        """A failing node yields NodeFailed, then iterating raises its own exception."""
        g = Graph(State)
        g.add_node("x", functools.partial(fail, "nope"), lane="cpu")
        g.add_edge(START, "x")
        seen: list[Any] = []
        with pytest.raises(RuntimeError, match="nope"):
            async for e in g.compile().astream({}, mode=mode):
                seen.append(e)
        failed = [e for e in seen if isinstance(e, NodeFailed)]
        assert len(failed) == 1
        assert (failed[0].node, failed[0].lane, failed[0].will_retry) == ("x", "cpu", False)
        assert "RuntimeError" in failed[0].error
        assert not any(isinstance(e, NodeFinished) for e in seen)
        assert isinstance(seen[-2], StepFinished) and not seen[-2].ok
        assert isinstance(seen[-1], RunFinished) and seen[-1].status == "failed"
        assert seen[-1].error is not None and "NodeError" in seen[-1].error

    async def test_retries_show_as_events(self, tmp_path: Path, mode: str) -> None:
        """Each failed attempt is a NodeFailed that will retry; the last attempt finishes."""
        g = Graph(State)
        policy = RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=False)
        g.add_node(
            "f", functools.partial(flaky, str(tmp_path / "n"), 2), lane="thread", retry=policy
        )
        g.add_edge(START, "f")
        events = [e async for e in g.compile().astream({}, mode=mode)]
        node_events = [(type(e).__name__, e.attempt) for e in events if isinstance(e, NODE_EVENTS)]
        assert node_events == [
            ("NodeStarted", 1), ("NodeFailed", 1),
            ("NodeStarted", 2), ("NodeFailed", 2),
            ("NodeStarted", 3), ("NodeFinished", 3),
        ]  # fmt: skip
        assert [e.will_retry for e in events if isinstance(e, NodeFailed)] == [True, True]
        assert all("ConnectionError" in e.error for e in events if isinstance(e, NodeFailed))


class TestObservers:
    async def test_broken_sink_is_dropped(self) -> None:
        """An observer that raises is dropped after its first event; the run completes."""
        calls: list[Any] = []

        def sink(event: Any) -> None:
            calls.append(event)
            raise RuntimeError("observer bug")

        r = await chain().compile().arun({}, on_event=sink)
        assert r.state.items == ["a", "b", "c"]
        assert len(calls) == 1 and isinstance(calls[0], RunStarted)

    async def test_broken_sink_does_not_break_astream(self) -> None:
        """A raising on_event passed to astream is dropped; the stream still yields every
        event up to RunFinished."""

        def sink(event: Any) -> None:
            raise RuntimeError("observer bug")

        events = [e async for e in chain().compile().astream({}, on_event=sink)]
        assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunFinished)
        assert sum(isinstance(e, NodeFinished) for e in events) == 3

    async def test_stopping_the_stream_cancels_the_run(self) -> None:
        """Leaving astream early cancels the run; RunFinished says so."""
        seen: list[Any] = []
        # concurrent: a cancelled parallel cpu call would cost a worker process.
        stream = chain().compile().astream({}, mode="concurrent", on_event=seen.append)
        async for event in stream:
            if isinstance(event, StepStarted):
                break
        await stream.aclose()
        assert isinstance(seen[-1], RunFinished) and seen[-1].status == "cancelled"


class TestEventModels:
    async def test_frozen(self) -> None:
        """Events are frozen once emitted."""
        events = [e async for e in chain().compile().astream({})]
        event = events[0]
        with pytest.raises(pydantic.ValidationError):
            event.run_id = "other"

    async def test_round_trip_by_type(self) -> None:
        """Every event serializes to JSON and back into the same typed event."""
        adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(Event)
        events = [e async for e in chain().compile().astream({})]
        for e in events:
            assert adapter.validate_json(e.model_dump_json()) == e

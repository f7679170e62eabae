"""Settling attempts (engine.attempts): a node that returned an un-awaited coroutine is told
it missed an ``await``."""

from __future__ import annotations

import asyncio
import gc
import warnings
from typing import Any

import pytest
from pydantic import BaseModel

from engine import START, Graph, InvalidUpdateError


class S(BaseModel):
    x: int = 0


async def fetch() -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"x": 1}


async def returns_the_call(state: S) -> Any:
    return fetch()  # the bug: 'return await fetch()'


def sync_returns_the_call(state: S) -> Any:
    return fetch()  # the bug: a plain def cannot await


@pytest.mark.parametrize(
    ("fn", "lane"),
    [(returns_the_call, "io"), (sync_returns_the_call, "inline")],
)
@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_a_returned_coroutine_names_the_missing_await(fn: Any, lane: str, mode: str) -> None:
    """The error names the node, the step, the coroutine and the fix; the coroutine is
    closed, so Python adds no 'never awaited' warning of its own."""
    g = Graph(S)
    g.add_node("lookup", fn, lane=lane)
    g.add_edge(START, "lookup")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(InvalidUpdateError) as info:
            g.compile().run({}, mode=mode)
        gc.collect()
    message = str(info.value)
    assert "node 'lookup' (step 0)" in message
    assert "returned fetch() un-awaited" in message
    assert "missing 'await'" in message and "return await fetch(...)" in message
    assert (info.value.node, info.value.step) == ("lookup", 0)
    assert not [w for w in seen if "never awaited" in str(w.message)]


def test_any_other_bad_return_keeps_its_own_message() -> None:
    """A node that returns a non-awaitable wrong type is not told about await."""
    g = Graph(S)
    g.add_node("bad", lambda s: 42, lane="inline")
    g.add_edge(START, "bad")
    with pytest.raises(InvalidUpdateError, match="returned int") as info:
        g.compile().run({})
    assert "await" not in str(info.value)


class Loose(BaseModel):
    x: Any = None


async def stores_the_call(state: Loose) -> dict[str, Any]:
    return {"x": fetch()}  # the bug: '"x": await fetch()'


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_a_coroutine_written_to_a_field_names_the_missing_await(mode: str) -> None:
    """A coroutine in an update (a field typed Any takes it) fails the node that wrote it,
    naming the field and the fix, instead of the next node failing to read or pickle it;
    the coroutine is closed, so Python adds no 'never awaited' warning."""
    g = Graph(Loose)
    g.add_node("lookup", stores_the_call)
    g.add_node("after", lambda s: {"x": s.x}, lane="cpu")
    g.add_edge(START, "lookup")
    g.add_edge("lookup", "after")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(InvalidUpdateError) as info:
            g.compile().run({}, mode=mode)
        gc.collect()
    message = str(info.value)
    assert "node 'lookup' (step 0) wrote fetch() un-awaited to field 'x'" in message
    assert "missing 'await'" in message and "await fetch(...)" in message
    assert (info.value.node, info.value.step, info.value.field) == ("lookup", 0, "x")
    assert not [w for w in seen if "never awaited" in str(w.message)]


def test_a_chunks_outcomes_settled_together_keep_the_order_they_came_in() -> None:
    """``settle_many``: successes taken the short way and a failure among them are kept
    in the trace in the order they came back, as one by one ``settle`` keeps them, and
    the successes' writes are the step's."""
    from engine.attempts import StepAttempts
    from engine.lanes.calls import Call, NodeRaised, Outcome
    from engine.recorder import Nobody, Recorder
    from engine.resources import SystemClock
    from engine.spec import Task
    from engine.trace import call_record

    class X(BaseModel):
        x: int = 0

    g = Graph(X)
    g.add_node("w", lambda s: {"x": 1})
    g.add_edge(START, "w")
    plan = g.compile().plan

    def outcome(i: int) -> Outcome:
        call = Call(Task("w", i, None, True), 0)
        ok = i != 1
        record = call_record(
            "w", 0, "cpu", 1, i, 1, 1, "h", 0.0, 1.0, 0.0, 0, 0, ok,
            None if ok else "ValueError", 0.0, 0.0,
        )  # fmt: skip
        if ok:
            return Outcome(call, record, {"x": i})
        return Outcome(call, record, None, NodeRaised("boom", ValueError("boom"), "ValueError"))

    outs = [outcome(i) for i in range(4)]
    orders = []
    for many in (True, False):
        rec = Recorder("r", thread_id=None, mode="parallel", sink=Nobody(), clock=SystemClock())
        # Nobody watches call by call (another test may have configured logging): the
        # short way is taken.
        rec.tells_calls = False
        attempts = StepAttempts(plan, 0, rec)
        if many:
            assert attempts.settle_many(outs) == []
        else:
            assert [attempts.settle(o) for o in outs] == [None] * 4
        orders.append([c.index for c in rec.calls])
        assert set(attempts.writes) == {("w", 0), ("w", 2), ("w", 3)}
        assert set(attempts.failed) == {("w", 1)}
    assert orders[0] == orders[1] == [0, 1, 2, 3]

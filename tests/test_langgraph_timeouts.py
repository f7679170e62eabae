"""engine.langgraph's add_node(timeout=...): LangGraph's forms and error class, and what
the engine adds (a sync node stopped in a worker process)."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any, TypedDict

import pytest

from engine.errors import NodeError
from engine.langgraph import END, START, NodeTimeoutError, StateGraph, TimeoutPolicy


class S(TypedDict):
    result: str


async def slow(state: S) -> dict[str, Any]:
    await asyncio.sleep(30)
    return {"result": "never"}


def sync(state: S) -> dict[str, Any]:
    return {"result": "sync"}


def one(fn: Any, **options: Any) -> Any:
    b = StateGraph(S)
    b.add_node("n", fn, **options)
    b.add_edge(START, "n")
    b.add_edge("n", END)
    return b.compile()


@pytest.mark.parametrize(
    "timeout",
    [0.05, datetime.timedelta(milliseconds=50), TimeoutPolicy(run_timeout=0.05)],
    ids=["seconds", "timedelta", "policy"],
)
def test_an_async_node_past_its_timeout_raises_langgraphs_node_timeout_error(
    timeout: Any,
) -> None:
    with pytest.raises(NodeTimeoutError) as caught:
        one(slow, timeout=timeout).invoke({"result": ""})
    err = caught.value
    assert not isinstance(err, TimeoutError)  # LangGraph's class is no builtin TimeoutError
    assert isinstance(err, NodeError)  # the engine's details stay readable
    assert (err.node, err.timeout, err.lane) == ("n", 0.05, "io")


def test_a_sync_node_takes_a_timeout_only_in_a_worker_process() -> None:
    with pytest.raises(ValueError, match="lane='cpu'"):
        StateGraph(S).add_node("n", sync, timeout=1.0)
    app = one(sync, timeout=5.0, lane="cpu")
    assert app.app.plan.nodes["n"].spec.timeout == 5.0
    assert app.invoke({"result": ""}) == {"result": "sync"}


def test_what_the_engine_cannot_do_says_so() -> None:
    with pytest.raises(NotImplementedError, match="idle_timeout"):
        StateGraph(S).add_node("n", slow, timeout=TimeoutPolicy(idle_timeout=1.0))

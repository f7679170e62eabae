"""A run's config and context reach every node and router that asks for them, on every
lane (a cpu worker included) and in every mode; invoke(config=...) sets the run's thread,
checkpoint and recursion limit; batch and abatch; add_sequence; retry_policy=."""

from __future__ import annotations

import asyncio
import operator
import os
import threading
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

import pytest
from pydantic import BaseModel

from engine import END, START, Graph, RetryPolicy
from engine.checkpoint import MemoryCheckpointer
from engine.context import Runtime, get_config, get_runtime
from engine.options import RunOptions

LANES = ("io", "thread", "inline", "cpu")
MODES = ("sequential", "concurrent", "parallel")


@dataclass
class Ctx:
    user: str


class S(TypedDict):
    x: int
    log: Annotated[list[str], operator.add]


def with_config(state: S, config: dict[str, Any]) -> dict[str, Any]:
    c = config["configurable"]
    seen = (
        f"config:{c.get('thread_id')}:{c.get('k')}:{config['tags']}:{config['metadata'].get('m')}"
        f":{config['recursion_limit']}:{config.get('run_name')}:{os.getpid()}"
    )
    return {"x": state["x"] + 1, "log": [seen]}


async def async_with_config(state: S, config: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0)
    return with_config(state, config)


def with_runtime(state: S, *, runtime: Runtime[Ctx]) -> dict[str, Any]:
    return {"log": [f"runtime:{runtime.context.user}:{get_config()['configurable']['k']}"]}


def route(state: S, config: dict[str, Any]) -> str:
    return "b" if config["configurable"]["k"] == 1 else END


def graph(lane: str, fn: Any = with_config) -> Graph[S]:
    g = Graph(S, context_schema=Ctx)
    g.add_node("a", fn, lane=lane)
    g.add_node("b", with_runtime, lane=lane)
    g.add_edge(START, "a")
    g.add_conditional_edges("a", route, ["b", END])
    g.add_edge("b", END)
    return g


@pytest.mark.parametrize("lane", LANES)
async def test_config_and_runtime_reach_every_lane_in_every_mode(lane: str) -> None:
    """(state, config) and (state, *, runtime) nodes and a (state, config) router, on each
    lane and mode: the config as given, thread_id, recursion_limit and tags inside, and the
    context made the context_schema; a cpu node in parallel mode runs in a worker."""
    app = graph(lane).compile(checkpointer=MemoryCheckpointer())
    config = {
        "configurable": {"thread_id": f"t-{lane}", "k": 1},
        "tags": ["t"],
        "metadata": {"m": "meta"},
        "run_name": "named",
        "recursion_limit": 9,
    }
    for mode in MODES:
        out = await app.ainvoke(
            {"x": 1, "log": []}, config=config, context={"user": "u"}, mode=mode
        )
        first, second = out["log"][-2:]
        assert first.startswith(f"config:t-{lane}:1:['t']:meta:9:named:"), (mode, first)
        assert second == "runtime:u:1", mode
        pid = int(first.rsplit(":", 1)[1])
        assert (pid != os.getpid()) == (lane == "cpu" and mode == "parallel"), mode


async def test_an_async_node_takes_config_too() -> None:
    app = graph("io", async_with_config).compile()
    out = await app.ainvoke({"x": 1, "log": []}, config={"configurable": {"k": 2}})
    assert out["x"] == 2 and out["log"][0].startswith("config:None:2:[]:None:10007:None:")


async def test_config_sets_the_runs_thread_and_recursion_limit() -> None:
    """invoke(input, config={"configurable": {"thread_id": ...}, "recursion_limit": n}):
    the run saves to that thread and stops past n steps."""
    cp = MemoryCheckpointer()
    app = graph("inline").compile(checkpointer=cp)
    await app.ainvoke({"x": 1, "log": []}, config={"configurable": {"thread_id": "th", "k": 0}})
    latest = await cp.get_latest("th")
    assert latest is not None and latest.status == "done"
    opts = RunOptions(config={"configurable": {"thread_id": "th"}, "recursion_limit": 3})
    assert (opts.thread_id, opts.recursion_limit) == ("th", 3)
    with pytest.raises(ValueError, match="thread_id is 'a' but config says 'b'"):
        RunOptions(thread_id="a", config={"configurable": {"thread_id": "b"}})


async def test_get_config_and_get_runtime_outside_a_run_say_so() -> None:
    with pytest.raises(RuntimeError, match="outside of a run"):
        get_config()
    with pytest.raises(RuntimeError, match="outside of a run"):
        get_runtime()


async def test_a_context_a_worker_cannot_get_is_refused_before_the_run() -> None:
    app = graph("cpu").compile()
    with pytest.raises(TypeError, match="cannot be pickled for a cpu-lane worker"):
        await app.ainvoke(
            {"x": 1, "log": []},
            config={"configurable": {"k": 1}},
            context=Ctx(user=threading.Lock()),  # type: ignore[arg-type]
            mode="parallel",
        )


def test_invoke_inside_a_running_loop_passes_config() -> None:
    """invoke from sync code called by a coroutine (a Jupyter cell, an async handler)."""
    app = graph("thread").compile()

    async def handler() -> Any:
        return app.invoke(
            {"x": 1, "log": []}, config={"configurable": {"k": 1}}, context={"user": "j"}
        )

    out = asyncio.run(handler())
    assert out["log"][-1] == "runtime:j:1"


async def test_abatch_and_batch_keep_the_inputs_order_with_one_config_each() -> None:
    app = graph("inline").compile()
    configs = [{"configurable": {"k": 0}}, {"configurable": {"k": 1}}]
    outs = await app.abatch(
        [{"x": 1, "log": []}, {"x": 5, "log": []}], configs=configs, context={"user": "b"}
    )
    assert [o["x"] for o in outs] == [2, 6] and [len(o["log"]) for o in outs] == [1, 2]
    sync = await asyncio.to_thread(
        app.batch, [{"x": 7, "log": []}], config={"configurable": {"k": 0}}
    )
    assert sync[0]["x"] == 8


def boom(state: S) -> dict[str, Any]:
    raise KeyError("missing")


async def test_abatch_return_exceptions_gives_each_runs_own_error() -> None:
    g = Graph(S)
    g.add_node(boom)
    g.add_edge(START, "boom")
    outs = await g.compile().abatch([{"x": 1, "log": []}], return_exceptions=True)
    assert isinstance(outs[0], KeyError)


def one(state: S) -> dict[str, Any]:
    return {"log": ["one"]}


def two(state: S) -> dict[str, Any]:
    return {"log": ["two"]}


async def test_add_sequence_and_add_node_by_function() -> None:
    """add_node(fn) is named after fn; add_sequence chains functions and (name, fn) pairs,
    as LangGraph's does (the same final state, checked against LangGraph)."""
    langgraph = pytest.importorskip("langgraph.graph")
    g = Graph(S)
    g.add_sequence([one, ("second", two), ("third", one)])
    g.add_edge(START, "one")
    assert list(g.nodes) == ["one", "second", "third"]
    out = await g.compile().ainvoke({"x": 0, "log": []})
    lg = langgraph.StateGraph(S)
    lg.add_sequence([one, ("second", two), ("third", one)])
    lg.add_edge(langgraph.START, "one")
    assert out == lg.compile().invoke({"x": 0, "log": []}) == {"x": 0, "log": ["one", "two", "one"]}


def test_retry_policy_is_langgraphs_name_for_retry() -> None:
    policy = RetryPolicy(max_attempts=2)
    g = Graph(S)
    g.add_node("a", one, retry_policy=policy)
    assert g.nodes["a"].retry is policy
    with pytest.raises(ValueError, match="retry= or retry_policy=, not both"):
        g.add_node("b", one, retry=policy, retry_policy=RetryPolicy(max_attempts=3))


def test_stream_takes_config_and_context_too() -> None:
    app = graph("thread").compile()
    chunks = list(
        app.stream(
            {"x": 1, "log": []},
            config={"configurable": {"k": 1}},
            context={"user": "s"},
            stream_mode="updates",
        )
    )
    assert [next(iter(c)) for c in chunks] == ["a", "b"]
    assert chunks[1]["b"] == {"log": ["runtime:s:1"]}


class P(BaseModel):
    x: int = 0
    log: Annotated[list[str], operator.add] = []


def model_with_config(state: P, config: dict[str, Any]) -> dict[str, Any]:
    return {"x": state.x + config["configurable"]["step"], "log": [type(state).__name__]}


@pytest.mark.parametrize("lane", LANES)
async def test_a_pydantic_state_node_takes_config_on_every_lane(lane: str) -> None:
    g = Graph(P)
    g.add_node("m", model_with_config, lane=lane)
    g.add_edge(START, "m")
    app = g.compile()
    for mode in MODES:
        out = await app.ainvoke(P(x=1), config={"configurable": {"step": 2}}, mode=mode)
        assert out == P(x=3, log=["P"]), mode


def item_with_config(arg: dict[str, int], config: dict[str, Any]) -> dict[str, Any]:
    return {"log": [f"{arg['i']}:{config['configurable']['k']}:{os.getpid() != arg['driver']}"]}


def fan_out(state: S) -> list[Any]:
    from engine import Send

    return [Send("item", {"i": i, "driver": os.getpid()}) for i in range(40)]


async def test_a_batched_cpu_fan_out_gets_the_config_in_its_workers() -> None:
    """Short cpu calls of a Send fan-out go to the pool in chunks; each call gets the config."""
    g = Graph(S)
    g.add_node("item", item_with_config, lane="cpu")
    g.add_conditional_edges(START, fan_out, ["item"])
    result = await g.compile().arun({"x": 0, "log": []}, config={"configurable": {"k": 7}})
    assert result.state["log"] == [f"{i}:7:True" for i in range(40)]


async def test_a_config_thread_without_a_checkpointer_is_only_a_name() -> None:
    """As in LangGraph: nothing to save to, so the run goes on; nodes still see it.
    The engine's own thread_id= option still needs a checkpointer."""
    app = graph("inline").compile()
    out = await app.ainvoke(
        {"x": 1, "log": []}, config={"configurable": {"thread_id": "n", "k": 0}}
    )
    assert out["log"][0].startswith("config:n:0:")
    with pytest.raises(ValueError, match="needs a checkpointer"):
        await app.ainvoke({"x": 1, "log": []}, thread_id="n")

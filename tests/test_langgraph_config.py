"""engine.langgraph's config and runtime are the engine's own: every lane (a cpu-lane node
in a worker process included) sees the same run-wide config and context, plus LangGraph's
per-task keys, computed only for the nodes that read them."""

from __future__ import annotations

import operator
import os
import sys
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

import cloudpickle
import pytest

from engine.langgraph import (
    END,
    START,
    InMemorySaver,
    Runtime,
    Send,
    StateGraph,
    get_config,
    get_runtime,
    get_stream_writer,
)

cloudpickle.register_pickle_by_value(sys.modules[__name__])

TASK_KEYS = ("langgraph_step", "langgraph_node", "langgraph_triggers", "langgraph_path")


@dataclass(frozen=True)
class Ctx:
    user: str


class S(TypedDict):
    seen: Annotated[list[dict[str, Any]], operator.add]


def record(config: dict[str, Any], runtime: Runtime[Ctx]) -> dict[str, Any]:
    """What a node saw, split into the run-wide part and the task's own keys."""
    configurable = dict(config["configurable"])
    ns = configurable.pop("checkpoint_ns")
    metadata = dict(config["metadata"])
    task = {key: metadata.pop(key) for key in (*TASK_KEYS, "langgraph_checkpoint_ns")}
    return {
        "run": {
            "configurable": configurable,
            "tags": config.get("tags"),
            "metadata": metadata,
            "keys": sorted(config),
            "context": repr(runtime.context),
        },
        "task": task,
        "ns": ns,
        "same_as_get_config": get_config() == config,
        "same_context_as_get_runtime": get_runtime().context == runtime.context,
        "pid": os.getpid(),
    }


def on_cpu(state: S, config: dict[str, Any], runtime: Runtime[Ctx]) -> dict[str, Any]:
    return {"seen": [{"node": "on_cpu", **record(config, runtime)}]}


async def on_io(state: S, config: dict[str, Any], runtime: Runtime[Ctx]) -> dict[str, Any]:
    return {"seen": [{"node": "on_io", **record(config, runtime)}]}


def both_lanes() -> Any:
    b = StateGraph(S, context_schema=Ctx)
    b.add_node("on_cpu", on_cpu, lane="cpu")
    b.add_node("on_io", on_io)
    b.add_edge(START, "on_cpu")
    b.add_edge(START, "on_io")
    b.add_edge("on_cpu", END)
    b.add_edge("on_io", END)
    return b.compile(checkpointer=InMemorySaver())


CONFIG = {
    "configurable": {"thread_id": "th-cpu", "tier": "gold"},
    "tags": ["support"],
    "metadata": {"team": "blue"},
}


@pytest.mark.parametrize("streamed", [False, True], ids=["invoke", "stream"])
def test_a_cpu_lane_node_sees_the_config_and_runtime_an_io_node_sees(streamed: bool) -> None:
    app = both_lanes()
    if streamed:
        values = list(
            app.stream({"seen": []}, CONFIG, context={"user": "ada"}, stream_mode="values")
        )
        out = values[-1]
    else:
        out = app.invoke({"seen": []}, CONFIG, context={"user": "ada"})
    seen = {s["node"]: s for s in out["seen"]}
    cpu, io = seen["on_cpu"], seen["on_io"]
    assert cpu["pid"] != os.getpid() and io["pid"] == os.getpid()
    assert cpu["run"] == io["run"]
    assert cpu["run"]["configurable"] == {
        "thread_id": "th-cpu",
        "tier": "gold",
        "checkpoint_id": None,
    }
    assert cpu["run"]["tags"] == ["support"]
    assert cpu["run"]["metadata"] == {"team": "blue", "thread_id": "th-cpu"}
    assert cpu["run"]["context"] == repr(Ctx("ada"))
    for name, s in seen.items():  # each its own task: its own keys, on every lane
        assert s["task"]["langgraph_node"] == name and s["task"]["langgraph_step"] == 1
        assert s["task"]["langgraph_triggers"] == (f"branch:to:{name}",)
        assert s["ns"] == s["task"]["langgraph_checkpoint_ns"] and s["ns"].startswith(f"{name}:")
        assert s["same_as_get_config"] and s["same_context_as_get_runtime"]
    assert cpu["ns"] != io["ns"]


class F(TypedDict):
    items: list[int]
    seen: Annotated[list[dict[str, Any]], operator.add]


def fan(state: F) -> list[Send]:
    return [Send("work", {"items": [i], "seen": []}) for i in state["items"]]


def work(state: F) -> dict[str, Any]:
    config = get_config()  # no config parameter: read from inside the call
    meta = config["metadata"]
    return {
        "seen": [
            {
                "item": state["items"][0],
                "ns": config["configurable"]["checkpoint_ns"],
                "triggers": meta["langgraph_triggers"],
                "path": meta["langgraph_path"],
                "step": meta["langgraph_step"],
                "pid": os.getpid(),
            }
        ]
    }


@pytest.mark.parametrize("lane", ["cpu", "thread"])
def test_each_send_task_gets_its_own_checkpoint_ns_from_get_config(lane: str) -> None:
    b = StateGraph(F)
    b.add_node("work", work, lane=lane)
    b.add_conditional_edges(START, fan, ["work"])
    b.add_edge("work", END)
    out = b.compile().invoke({"items": [1, 2, 3], "seen": []})
    seen = sorted(out["seen"], key=lambda s: s["item"])
    assert [s["item"] for s in seen] == [1, 2, 3]
    assert {s["triggers"] for s in seen} == {("__pregel_push",)}
    assert sorted(s["path"] for s in seen) == [("__pregel_push", i, False) for i in range(3)]
    assert {s["step"] for s in seen} == {1}
    assert len({s["ns"] for s in seen}) == 3 and all(s["ns"].startswith("work:") for s in seen)
    assert ({s["pid"] for s in seen} != {os.getpid()}) == (lane == "cpu")


def test_a_node_that_does_not_read_its_config_has_no_task_identity_set() -> None:
    """The per-call cost is paid by the nodes that read their config, not by the others."""
    app = both_lanes()
    routes = {name: "config" in node.spec.takes for name, node in app.app.plan.nodes.items()}
    assert routes == {"on_cpu": True, "on_io": True}
    from engine.context import asks_for_config

    def plain(state: S) -> dict[str, Any]:
        return {}

    def reads(state: S) -> dict[str, Any]:
        return {"seen": [get_config()["metadata"]]}

    assert not asks_for_config(plain, ())
    assert asks_for_config(reads, ())
    assert asks_for_config(on_cpu, ("config", "runtime"))


def test_get_stream_writer_outside_a_run_raises_and_inside_an_unstreamed_run_drops() -> None:
    with pytest.raises(RuntimeError):
        get_stream_writer()
    with pytest.raises(RuntimeError):
        get_config()

    def writes(state: S) -> dict[str, Any]:
        get_stream_writer()({"dropped": True})
        return {"seen": [{"wrote": True}]}

    for lane in ("cpu", "thread"):
        b = StateGraph(S)
        b.add_node("writes", writes, lane=lane)
        b.add_edge(START, "writes")
        b.add_edge("writes", END)
        assert b.compile().invoke({"seen": []}) == {"seen": [{"wrote": True}]}


class R(TypedDict):
    ns: str


def source(state: R, config: dict[str, Any]) -> dict[str, Any]:
    return {"ns": config["configurable"]["checkpoint_ns"]}


def test_a_router_reading_its_config_sees_its_nodes_task() -> None:
    """As LangGraph runs a router inside the task of the node it follows."""
    seen: list[dict[str, Any]] = []

    def route(state: R, config: dict[str, Any]) -> str:
        seen.append(config)
        return END

    b = StateGraph(R)
    b.add_node("source", source)
    b.add_edge(START, "source")
    b.add_conditional_edges("source", route, [END])
    out = b.compile().invoke({"ns": ""}, {"tags": ["x"]})
    (config,) = seen
    assert config["configurable"]["checkpoint_ns"] == out["ns"]
    assert config["metadata"]["langgraph_node"] == "source"
    assert config["metadata"]["langgraph_step"] == 1
    assert config["tags"] == ["x"]

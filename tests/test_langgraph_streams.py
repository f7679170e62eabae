"""engine.langgraph's stream options against LangGraph's on the same program: the tasks
mode, version="v2" parts, invoke(stream_mode=...), invoke(version="v2"), the writer
outside a run."""

from __future__ import annotations

import dataclasses
import importlib
import operator
from typing import Annotated, Any, TypedDict

import pytest


class S(TypedDict):
    q: str
    steps: Annotated[list[str], operator.add]


def _graph(module: str) -> Any:
    graph = importlib.import_module(f"{module}.graph" if module == "langgraph" else module)
    config = importlib.import_module(f"{module}.config" if module == "langgraph" else module)

    def plan(s: S) -> dict[str, Any]:
        config.get_stream_writer()({"stage": "plan"})
        return {"steps": ["plan"]}

    def skip(s: S) -> None:
        return None

    b = graph.StateGraph(S)
    b.add_node("plan", plan)
    b.add_node("skip", skip)
    b.add_edge(graph.START, "plan")
    b.add_edge("plan", "skip")
    b.add_edge("skip", graph.END)
    return b.compile()


INPUT = {"q": "why?", "steps": []}


def _no_ids(value: Any) -> Any:
    """Task ids differ run to run: replaced by a marker, everything else kept."""
    if isinstance(value, dict):
        return {k: "<id>" if k == "id" else _no_ids(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_no_ids(v) for v in value)
    return value


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stream_mode": "tasks"},
        {"stream_mode": ["tasks", "custom"]},
        {"stream_mode": ["updates", "custom"], "version": "v2"},
        {"stream_mode": "values", "version": "v2"},
        {"stream_mode": "debug", "version": "v2"},
    ],
    ids=repr,
)
def test_stream_options_yield_langgraphs_chunks(kwargs: dict[str, Any]) -> None:
    expected = list(_graph("langgraph").stream(INPUT, **kwargs))
    got = list(_graph("engine.langgraph").stream(INPUT, **kwargs))

    def plain(chunks: list[Any]) -> list[Any]:
        out = _no_ids(chunks)
        for c in out:  # a debug chunk's time
            data = c.get("data") if isinstance(c, dict) else None
            if isinstance(data, dict):
                data.pop("timestamp", None)
        return out

    assert plain(got) == plain(expected)


@pytest.mark.parametrize(
    "kwargs", [{"stream_mode": "updates"}, {"version": "v2"}, {"output_keys": "steps"}], ids=repr
)
def test_invoke_options_return_what_langgraph_returns(kwargs: dict[str, Any]) -> None:
    expected = _graph("langgraph").invoke(INPUT, **kwargs)
    got = _graph("engine.langgraph").invoke(INPUT, **kwargs)
    if dataclasses.is_dataclass(expected):
        assert type(got).__name__ == type(expected).__name__
        assert dataclasses.asdict(got) == dataclasses.asdict(expected)  # type: ignore[arg-type]
    else:
        assert got == expected


@pytest.mark.parametrize("module", ["langgraph.config", "engine.langgraph"])
def test_the_writer_outside_a_run_raises(module: str) -> None:
    with pytest.raises(RuntimeError):
        importlib.import_module(module).get_stream_writer()


def test_a_bad_version_says_which_there_are() -> None:
    with pytest.raises(ValueError, match="'v1' or 'v2'"):
        list(_graph("engine.langgraph").stream(INPUT, version="v3"))

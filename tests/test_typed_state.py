"""TypedDict and dataclass states on ``engine.Graph``: every lane, every mode, checkpoints,
and the same final state as LangGraph gives for the same graph."""

from __future__ import annotations

import dataclasses
import functools
import operator
import os
import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

import cloudpickle
import pytest
from pydantic import BaseModel

from engine import END, START, Graph, InvalidUpdateError, Send
from engine.checkpoint import SqliteCheckpointer

cloudpickle.register_pickle_by_value(sys.modules[__name__])

MODES = ("sequential", "concurrent", "parallel")


class Doc(TypedDict):
    topic: str
    parts: Annotated[list[str], operator.add]
    pids: Annotated[list[int], operator.add]
    summary: str


@dataclasses.dataclass
class DocDC:
    topic: str = ""
    parts: Annotated[list[str], operator.add] = dataclasses.field(default_factory=list)
    pids: Annotated[list[int], operator.add] = dataclasses.field(default_factory=list)
    summary: str = ""


def _get(state: Any, key: str) -> Any:
    return state[key] if isinstance(state, dict) else getattr(state, key)


def plan(state: Any) -> dict[str, Any]:
    return {"parts": [f"plan:{_get(state, 'topic')}"]}


def write(section: str, state: Any) -> dict[str, Any]:
    # Changing the argument in place must not leak into the run's state.
    _get(state, "parts").append("leaked")
    return {"parts": [f"{section}({len(_get(state, 'parts')) - 1})"], "pids": [os.getpid()]}


def summarise(state: Any) -> dict[str, Any]:
    return {"summary": " | ".join(_get(state, "parts"))}


def fan(send: type, state: Any) -> list[Any]:
    return [send("item", {"n": i}) for i in range(3)]


def item(arg: dict[str, int]) -> dict[str, Any]:
    return {"parts": [f"item{arg['n']}"], "pids": [os.getpid()]}


def build(state_type: type, lane: str) -> Graph[Any]:
    g: Graph[Any] = Graph(state_type)
    g.add_node("plan", plan)
    g.add_node("intro", functools.partial(write, "intro"), lane=lane)
    g.add_node("body", functools.partial(write, "body"), lane=lane)
    g.add_node("item", item, lane=lane)
    g.add_node("summarise", summarise)
    g.add_edge(START, "plan")
    g.add_edge("plan", "intro")
    g.add_edge("plan", "body")
    g.add_conditional_edges("plan", functools.partial(fan, Send), ["item"])
    g.add_edge(["intro", "body", "item"], "summarise")
    g.add_edge("summarise", END)
    return g


EXPECTED_PARTS = ["start", "plan:t", "body(2)", "intro(2)", "item0", "item1", "item2"]


@pytest.mark.parametrize("lane", ["io", "thread", "cpu"])
async def test_a_typeddict_state_runs_on_every_lane_and_mode_to_the_same_dict(lane: str) -> None:
    app = build(Doc, lane).compile()
    finals = []
    for mode in MODES:
        result = await app.arun({"topic": "t", "parts": ["start"]}, mode=mode)
        state = result.state
        assert isinstance(state, dict)
        finals.append({k: v for k, v in state.items() if k != "pids"})
        if lane == "cpu" and mode == "parallel":
            assert os.getpid() not in state["pids"]  # the cpu calls ran in workers
    assert finals[0] == finals[1] == finals[2]
    assert finals[0]["parts"] == EXPECTED_PARTS
    assert finals[0]["summary"] == " | ".join(EXPECTED_PARTS)


async def test_a_dataclass_state_comes_back_as_an_instance() -> None:
    app = build(DocDC, "cpu").compile()
    results = [(await app.arun(DocDC(topic="t", parts=["start"]), mode=m)).state for m in MODES]
    assert all(isinstance(r, DocDC) for r in results)
    assert [r.parts for r in results] == [EXPECTED_PARTS] * 3
    assert results[0].summary == results[2].summary


async def test_same_final_state_as_langgraph() -> None:
    from langgraph.graph import END as LG_END
    from langgraph.graph import START as LG_START
    from langgraph.graph import StateGraph
    from langgraph.types import Send as LGSend

    lg = StateGraph(Doc)
    lg.add_node("plan", plan)
    lg.add_node("intro", functools.partial(write, "intro"))
    lg.add_node("body", functools.partial(write, "body"))
    lg.add_node("item", item)
    lg.add_node("summarise", summarise)
    lg.add_edge(LG_START, "plan")
    lg.add_edge("plan", "intro")
    lg.add_edge("plan", "body")
    lg.add_conditional_edges("plan", functools.partial(fan, LGSend), ["item"])
    lg.add_edge(["intro", "body", "item"], "summarise")
    lg.add_edge("summarise", LG_END)
    theirs = lg.compile().invoke({"topic": "t", "parts": ["start"]})
    ours = (await build(Doc, "cpu").compile().arun({"topic": "t", "parts": ["start"]})).state
    drop = {"pids"}
    # LangGraph passes each node the state itself: the "leaked" appends show in its
    # later reads, so only compare what does not depend on that.
    assert {k: v for k, v in ours.items() if k not in drop | {"summary", "parts"}} == {
        k: v for k, v in theirs.items() if k not in drop | {"summary", "parts"}
    }
    assert sorted(ours) == sorted(theirs)
    assert [p.split("(")[0] for p in ours["parts"]] == [
        p.split("(")[0] for p in theirs["parts"] if p != "leaked"
    ]


async def test_reads_gives_a_typeddict_node_a_dict_of_those_keys() -> None:
    seen: list[Any] = []

    def peek(state: Any) -> dict[str, Any]:
        seen.append(state)
        return {}

    g: Graph[Any] = Graph(Doc)
    g.add_node("peek", peek, reads=["topic"], lane="thread")
    g.add_edge(START, "peek")
    await g.compile().arun({"topic": "t", "parts": []})
    assert seen == [{"topic": "t"}]


async def test_an_unknown_key_is_refused_naming_the_node() -> None:
    g: Graph[Any] = Graph(Doc)
    g.add_node("bad", lambda s: {"nope": 1})
    g.add_edge(START, "bad")
    with pytest.raises(InvalidUpdateError, match=r"'bad'.*nope"):
        await g.compile().arun({"topic": "t"})


class Flaky(TypedDict):
    done: Annotated[list[str], operator.add]


def maybe_fail(marker: str, state: Any) -> dict[str, Any]:
    if not Path(marker).exists():
        Path(marker).write_text("failed once")
        raise RuntimeError("first try fails")
    return {"done": ["b"]}


async def test_a_typeddict_thread_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    g: Graph[Any] = Graph(Flaky)
    g.add_node("a", lambda s: {"done": ["a"]})
    g.add_node("b", functools.partial(maybe_fail, str(marker)), lane="cpu")
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    app = g.compile(checkpointer=SqliteCheckpointer(tmp_path / "cp.db"))
    with pytest.raises(Exception, match="first try fails"):
        await app.arun({"done": ["in"]}, thread_id="t1", mode="parallel")
    result = await app.arun(None, thread_id="t1", mode="parallel")
    assert result.state == {"done": ["in", "a", "b"]}


class Full(TypedDict):
    question: str
    answer: str


class Ask(TypedDict):
    question: str


class Reply(TypedDict):
    answer: str


class Scratch(TypedDict):
    scratch: str


def think(state: Ask) -> dict[str, Any]:
    return {"scratch": f"thinking about {state['question']}"}


def respond(state: Scratch) -> dict[str, Any]:
    return {"answer": f"{state['scratch']}: 42"}


def _io_graph(builder: Any, start: Any, end: Any) -> Any:
    builder.add_node("think", think)
    builder.add_node("respond", respond)
    builder.add_edge(start, "think")
    builder.add_edge("think", "respond")
    builder.add_edge("respond", end)
    return builder


@pytest.mark.parametrize("lane", ["inline", "cpu"])
async def test_input_output_schemas_and_a_private_channel_as_langgraph(lane: str) -> None:
    """Graph(State, input_schema=, output_schema=): the input writes only its keys, the
    run returns only the output's, and a key only a node's input schema declares (its first
    parameter's annotation) is a private channel between nodes; the same as LangGraph."""
    lg = pytest.importorskip("langgraph.graph")
    theirs = _io_graph(lg.StateGraph(Full, input_schema=Ask, output_schema=Reply), lg.START, lg.END)
    expected = theirs.compile().invoke({"question": "life"})
    g = Graph(Full, input_schema=Ask, output_schema=Reply)
    _io_graph(g, START, END)
    for name in g.nodes:  # the same graph on the lane under test
        g.nodes[name] = dataclasses.replace(g.nodes[name], lane=lane)  # type: ignore[arg-type]
    assert set(g.schema.channels) == {"question", "answer", "scratch"}
    app = g.compile()
    for mode in MODES:
        out = await app.ainvoke({"question": "life"}, mode=mode)
        assert out == expected == {"answer": "thinking about life: 42"}, mode


class FullModel(BaseModel):
    question: str = ""
    answer: str = ""


class ScratchModel(BaseModel):
    scratch: str = ""


def think_model(state: FullModel) -> dict[str, Any]:
    return {"scratch": f"about {state.question}"}


def respond_model(state: ScratchModel) -> dict[str, Any]:
    return {"answer": f"{state.scratch}: 42"}


async def test_a_pydantic_state_with_a_private_channel_as_langgraph() -> None:
    """A node whose input is another model (a private channel) on a pydantic state: the
    run holds channel values, the node sees its own model, the result is the state's."""
    lg = pytest.importorskip("langgraph.graph")

    def build(builder: Any, start: Any) -> Any:
        builder.add_node("think", think_model)
        builder.add_node("respond", respond_model)
        builder.add_edge(start, "think")
        builder.add_edge("think", "respond")
        return builder

    theirs = build(lg.StateGraph(FullModel), lg.START).compile().invoke({"question": "life"})
    g = build(Graph(FullModel), START)
    assert g.schema.held == "values"
    for mode in MODES:
        out = await g.compile().ainvoke({"question": "life"}, mode=mode)
        assert out == FullModel(**theirs) == FullModel(question="life", answer="about life: 42")

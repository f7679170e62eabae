"""Stream modes (values, updates, custom, debug, lists); get_stream_writer in and out of a run."""

import operator
from typing import Annotated, TypedDict

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph


class State(TypedDict):
    question: str
    steps: Annotated[list[str], operator.add]
    answer: str


def plan(state: State) -> dict:
    writer = get_stream_writer()
    writer({"stage": "plan", "progress": 0.5})
    writer("plain text chunk")
    return {"steps": ["plan"]}


def skip(state: State) -> None:
    # Writes nothing: what does each stream mode say about such a node?
    return None


def answer(state: State) -> dict:
    writer = get_stream_writer()
    for word in ("forty", "two"):
        writer({"token": word})
    return {"steps": ["answer"], "answer": f"{state['question']} -> 42"}


builder = StateGraph(State)
builder.add_node("plan", plan)
builder.add_node("skip", skip)
builder.add_node("answer", answer)
builder.add_edge(START, "plan")
builder.add_edge("plan", "skip")
builder.add_edge("skip", "answer")
builder.add_edge("answer", END)
graph = builder.compile()
saved = builder.compile(checkpointer=InMemorySaver())

INPUT = {"question": "meaning?", "steps": []}


def scenario(rec):
    for mode in ("values", "updates", "custom", "debug"):
        rec.stream(f"stream {mode}", graph.stream(INPUT, stream_mode=mode))
    rec.stream("stream default mode", graph.stream(INPUT))
    rec.stream("stream [updates, custom]", graph.stream(INPUT, stream_mode=["updates", "custom"]))
    rec.stream("stream [values]", graph.stream(INPUT, stream_mode=["values"]))
    rec.stream("stream [debug, values]", graph.stream(INPUT, stream_mode=["debug", "values"]))
    rec.stream(
        "stream v2 [updates, custom]",
        graph.stream(INPUT, stream_mode=["updates", "custom"], version="v2"),
    )
    rec.stream("stream v2 values", graph.stream(INPUT, stream_mode="values", version="v2"))
    rec("invoke", graph.invoke(INPUT))
    rec("invoke stream_mode=updates", graph.invoke(INPUT, stream_mode="updates"))
    rec("invoke v2", graph.invoke(INPUT, version="v2"))
    rec("invoke output_keys=answer", graph.invoke(INPUT, output_keys="answer"))
    config = {"configurable": {"thread_id": "debug"}}
    rec.stream("stream debug, checkpointer", saved.stream(INPUT, config, stream_mode="debug"))
    rec.stream(
        "stream [checkpoints, tasks], checkpointer",
        saved.stream(
            INPUT, {"configurable": {"thread_id": "ct"}}, stream_mode=["checkpoints", "tasks"]
        ),
    )
    rec.call("get_stream_writer outside a run", get_stream_writer, message=False)

"""Map-reduce with Send: fan out one task per document, reduce with operator.add, then combine."""

import operator
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send


class Overall(TypedDict):
    topic: str
    documents: list[str]
    summaries: Annotated[list[str], operator.add]
    report: str


class DocumentTask(TypedDict):
    document: str
    index: int


def plan(state: Overall) -> dict:
    topics = state["topic"].split()
    return {"documents": [f"notes on {t} " + "x" * (3 * i) for i, t in enumerate(topics)]}


def fan_out(state: Overall) -> list[Send]:
    return [
        Send("summarise", {"document": d, "index": i}) for i, d in enumerate(state["documents"])
    ]


def summarise(task: DocumentTask) -> dict:
    words = task["document"].split()
    return {"summaries": [f"{task['index']}:{words[2]}:{len(task['document'])}"]}


def combine(state: Overall) -> dict:
    return {"report": " | ".join(state["summaries"])}


builder = StateGraph(Overall)
builder.add_node("plan", plan)
builder.add_node("summarise", summarise)
builder.add_node("combine", combine)
builder.add_edge(START, "plan")
builder.add_conditional_edges("plan", fan_out, ["summarise"])
builder.add_edge("summarise", "combine")
builder.add_edge("combine", END)
graph = builder.compile()

INPUT = {"topic": "rivers lakes seas deltas fjords", "documents": [], "summaries": []}


def node_of(chunk: dict) -> str:
    (node,) = chunk
    return node


def scenario(rec):
    rec("invoke", graph.invoke(INPUT))
    rec.stream("stream values", graph.stream(INPUT, stream_mode="values"))
    # The five summarise tasks run in one step; LangGraph yields their
    # updates as they finish, so their order among themselves is not compared.
    rec.stream("stream updates", graph.stream(INPUT, stream_mode="updates"), unordered=node_of)
    # No Send at all: nothing runs after plan, not even combine.
    rec("empty fan-out", graph.invoke({"topic": "", "documents": [], "summaries": []}))

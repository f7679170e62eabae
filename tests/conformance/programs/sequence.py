"""add_sequence with functions and (name, function) pairs; add_node(fn) takes the function name."""

import operator
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph


class State(TypedDict):
    text: str
    trail: Annotated[list[str], operator.add]


def strip(state: State) -> dict:
    return {"text": state["text"].strip(), "trail": ["strip"]}


def lower(state: State) -> dict:
    return {"text": state["text"].lower(), "trail": ["lower"]}


def count(state: State) -> dict:
    return {"trail": [f"count={len(state['text'])}"]}


def shout(state: State) -> dict:
    return {"text": state["text"].upper() + "!", "trail": ["shout"]}


builder = StateGraph(State)
builder.add_sequence([strip, lower, ("measure", count)])
builder.add_node(shout)
builder.add_edge(START, "strip")
builder.add_edge("measure", "shout")
builder.add_edge("shout", END)
graph = builder.compile()


def scenario(rec):
    rec("nodes", sorted(graph.nodes))
    rec("invoke", graph.invoke({"text": "  Hello World  ", "trail": []}))
    rec.stream("stream updates", graph.stream({"text": " Ab ", "trail": []}, stream_mode="updates"))
    rec("mermaid", graph.get_graph().draw_mermaid())

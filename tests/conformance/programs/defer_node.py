"""defer=True: a node reached from branches of different lengths runs once, after all of them."""

import operator
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph


class State(TypedDict):
    items: Annotated[list[str], operator.add]
    summary: str


def make(name: str):
    def node(state: State) -> dict:
        return {"items": [name]}

    node.__name__ = name
    return node


def aggregate(state: State) -> dict:
    return {"summary": f"{len(state['items'])} items: {','.join(state['items'])}"}


def build(deferred: bool):
    builder = StateGraph(State)
    for name in ("a", "b_1", "b_2", "c"):
        builder.add_node(name, make(name))
    builder.add_node("aggregate", aggregate, defer=deferred)
    builder.add_edge(START, "a")
    builder.add_edge(START, "b_1")
    builder.add_edge("b_1", "b_2")
    builder.add_edge("b_2", "c")
    builder.add_edge("a", "aggregate")
    builder.add_edge("c", "aggregate")
    builder.add_edge("aggregate", END)
    return builder.compile()


deferred = build(True)
not_deferred = build(False)


def step_of(chunk: dict) -> str:
    (node,) = chunk
    return "step 1" if node in ("a", "b_1") else node


def scenario(rec):
    rec("deferred", deferred.invoke({"items": []}))
    rec.stream(
        "deferred, stream updates",
        deferred.stream({"items": []}, stream_mode="updates"),
        unordered=step_of,
    )
    rec("not deferred", not_deferred.invoke({"items": []}))
    rec.stream("deferred, stream values", deferred.stream({"items": []}, stream_mode="values"))
    # Without defer, aggregate runs as soon as "a" is done, and again after "c".
    rec.stream(
        "not deferred, stream values", not_deferred.stream({"items": []}, stream_mode="values")
    )

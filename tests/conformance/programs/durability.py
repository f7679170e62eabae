"""durability="sync" | "async" | "exit": the checkpoints a run leaves; resuming after a failure."""

import operator
from typing import Annotated, TypedDict

from langgraph.checkpoint.memory import MemorySaver
from langgraph.graph import END, START, StateGraph


class State(TypedDict):
    log: Annotated[list[str], operator.add]


FAIL = {"at_c": False}


def a(state: State) -> dict:
    return {"log": ["a"]}


def b(state: State) -> dict:
    return {"log": ["b"]}


def c(state: State) -> dict:
    if FAIL["at_c"]:
        raise ConnectionError("c lost its connection")
    return {"log": ["c"]}


builder = StateGraph(State)
builder.add_node("a", a)
builder.add_node("b", b)
builder.add_node("c", c)
builder.add_edge(START, "a")
builder.add_edge("a", "b")
builder.add_edge("b", "c")
builder.add_edge("c", END)
graph = builder.compile(checkpointer=MemorySaver())  # the older name of InMemorySaver


def history(config) -> list:
    return [
        (s.metadata["source"], s.metadata["step"], s.next, s.values)
        for s in graph.get_state_history(config)
    ]


def scenario(rec):
    for durability in ("sync", "async", "exit"):
        config = {"configurable": {"thread_id": durability}}
        rec(f"{durability}: invoke", graph.invoke({"log": []}, config, durability=durability))
        rec(f"{durability}: history", history(config))

    FAIL["at_c"] = True
    for durability in ("sync", "exit"):
        config = {"configurable": {"thread_id": f"{durability}-fails"}}
        with rec.raises(f"{durability}: failing run"):
            graph.invoke({"log": []}, config, durability=durability)
        rec(f"{durability}: history after the failure", history(config))
        rec(f"{durability}: state after the failure", graph.get_state(config))
    FAIL["at_c"] = False
    rec(
        "sync: resume after the failure",
        graph.invoke(None, {"configurable": {"thread_id": "sync-fails"}}),
    )
    rec(
        "exit: resume after the failure",
        graph.invoke(None, {"configurable": {"thread_id": "exit-fails"}}),
    )

"""A graph that never stops hits LangGraph's default recursion limit (no limit given)."""

from typing import TypedDict

from langgraph.errors import GraphRecursionError
from langgraph.graph import START, StateGraph


class State(TypedDict):
    turns: int


def again(state: State) -> dict:
    return {"turns": state["turns"] + 1}


builder = StateGraph(State)
builder.add_node("again", again)
builder.add_edge(START, "again")
builder.add_edge("again", "again")
graph = builder.compile()

# About 10,000 super-steps: over a second on a quiet machine.
SLOW = True


def scenario(rec):
    turns = []
    try:
        for chunk in graph.stream({"turns": 0}, stream_mode="values"):
            turns.append(chunk["turns"])
    except GraphRecursionError as exc:
        rec("error", exc)
    rec("steps run before the error", {"chunks": len(turns), "last": turns[-1]})

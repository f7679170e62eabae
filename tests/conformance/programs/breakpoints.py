"""Static breakpoints: interrupt_before/after at compile time and per call, then invoke(None)."""

import operator
from typing import Annotated, TypedDict

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph


class State(TypedDict):
    plan: str
    log: Annotated[list[str], operator.add]


def draft(state: State) -> dict:
    return {"plan": "draft plan", "log": ["draft"]}


def execute(state: State) -> dict:
    return {"log": [f"execute {state['plan']}"]}


def report(state: State) -> dict:
    return {"log": ["report"]}


builder = StateGraph(State)
builder.add_node("draft", draft)
builder.add_node("execute", execute)
builder.add_node("report", report)
builder.add_edge(START, "draft")
builder.add_edge("draft", "execute")
builder.add_edge("execute", "report")
builder.add_edge("report", END)
saver = InMemorySaver()
graph = builder.compile(
    checkpointer=saver, interrupt_before=["execute"], interrupt_after=["execute"]
)
plain = builder.compile(checkpointer=saver)


def scenario(rec):
    config = {"configurable": {"thread_id": "bp"}}
    rec("stops before execute", graph.invoke({"plan": "", "log": []}, config))
    rec("state before execute", graph.get_state(config))
    # A person edits the plan while the run is paused.
    rec("edit while paused", graph.update_state(config, {"plan": "reviewed plan"}))
    rec("next after the edit", graph.get_state(config).next)
    rec("stops after execute", graph.invoke(None, config))
    rec("state after execute", graph.get_state(config))
    rec("runs to the end", graph.invoke(None, config))

    config = {"configurable": {"thread_id": "per-call"}}
    rec.stream(
        "per call interrupt_before=[report], stream updates",
        plain.stream(
            {"plan": "", "log": []}, config, interrupt_before=["report"], stream_mode="updates"
        ),
    )
    rec("per call: next", plain.get_state(config).next)
    rec("per call: resume", plain.invoke(None, config))

    config = {"configurable": {"thread_id": "all"}}
    rec("interrupt_before='*'", plain.invoke({"plan": "", "log": []}, config, interrupt_before="*"))
    rec("interrupt_before='*': next", plain.get_state(config).next)

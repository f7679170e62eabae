"""A conditional loop: a critic sends a draft back until it passes, routed through a path map."""

from typing import Literal, TypedDict

from langgraph.graph import END, START, StateGraph


class State(TypedDict):
    text: str
    revisions: int
    verdict: str


def write(state: State) -> dict:
    return {"text": state["text"] + "!", "revisions": state["revisions"] + 1}


def critic(state: State) -> dict:
    return {"verdict": "pass" if state["text"].count("!") >= 3 else "fail"}


def route(state: State) -> Literal["again", "done"]:
    return "done" if state["verdict"] == "pass" else "again"


builder = StateGraph(State)
builder.add_node("write", write)
builder.add_node("critic", critic)
builder.add_edge(START, "write")
builder.add_edge("write", "critic")
builder.add_conditional_edges("critic", route, {"again": "write", "done": END})
graph = builder.compile()


def scenario(rec):
    rec("invoke", graph.invoke({"text": "hi", "revisions": 0, "verdict": ""}))
    rec("invoke, already passing", graph.invoke({"text": "hi!!!", "revisions": 0, "verdict": ""}))
    rec.stream(
        "stream updates",
        graph.stream({"text": "hi", "revisions": 0, "verdict": ""}, stream_mode="updates"),
    )
    rec("mermaid", graph.get_graph().draw_mermaid())

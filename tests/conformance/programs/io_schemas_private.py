"""Input and output schemas, and a private channel passed between two nodes."""

from typing import TypedDict

from langgraph.graph import END, START, StateGraph


class InputState(TypedDict):
    question: str


class OutputState(TypedDict):
    answer: str


class OverallState(InputState, OutputState):
    notes: str


class PrivateState(TypedDict):
    scratch: str


def research(state: InputState) -> PrivateState:
    # Reads only the input keys; writes a channel that is in no public schema.
    return {"scratch": f"looked up {state['question']}"}


def draft(state: PrivateState) -> OverallState:
    return {"notes": state["scratch"].upper(), "answer": "draft"}


def finish(state: OverallState) -> OutputState:
    return {"answer": f"{state['notes']} -> {state['question']}"}


builder = StateGraph(OverallState, input_schema=InputState, output_schema=OutputState)
builder.add_node("research", research)
builder.add_node("draft", draft)
builder.add_node("finish", finish)
builder.add_edge(START, "research")
builder.add_edge("research", "draft")
builder.add_edge("draft", "finish")
builder.add_edge("finish", END)
graph = builder.compile()


def scenario(rec):
    rec("invoke", graph.invoke({"question": "why?"}))
    rec(
        "invoke with a key outside the input schema",
        graph.invoke({"question": "how?", "notes": "x"}),
    )
    rec.stream("stream values", graph.stream({"question": "why?"}, stream_mode="values"))
    rec.stream(
        "stream values, a key outside the input schema",
        graph.stream({"question": "how?", "notes": "x"}, stream_mode="values"),
    )
    rec.stream("stream updates", graph.stream({"question": "why?"}, stream_mode="updates"))

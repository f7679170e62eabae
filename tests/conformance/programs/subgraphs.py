"""Subgraphs: a compiled graph as a node, a node invoking a subgraph, subgraphs=True."""

import operator
from typing import Annotated, TypedDict

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph


class Shared(TypedDict):
    topic: str
    notes: Annotated[list[str], operator.add]


class Parent(TypedDict):
    topic: str
    notes: Annotated[list[str], operator.add]
    verdict: str


# A team that shares the parent's keys: added as a node directly.
def gather(state: Shared) -> dict:
    return {"notes": [f"gathered {state['topic']}"]}


def condense(state: Shared) -> dict:
    return {"notes": [f"condensed {len(state['notes'])}"]}


team_builder = StateGraph(Shared)
team_builder.add_node("gather", gather)
team_builder.add_node("condense", condense)
team_builder.add_edge(START, "gather")
team_builder.add_edge("gather", "condense")
team_builder.add_edge("condense", END)
team = team_builder.compile()


# A grader with its own schema: called from a node that maps state in and out.
class Grading(TypedDict):
    text: str
    grade: str


def grade(state: Grading) -> dict:
    return {"grade": "A" if "condensed" in state["text"] else "C"}


grader_builder = StateGraph(Grading)
grader_builder.add_node("grade", grade)
grader_builder.add_edge(START, "grade")
grader = grader_builder.compile()


def judge(state: Parent) -> dict:
    result = grader.invoke({"text": " / ".join(state["notes"]), "grade": ""})
    return {"verdict": result["grade"]}


builder = StateGraph(Parent)
builder.add_node("team", team)
builder.add_node("judge", judge)
builder.add_edge(START, "team")
builder.add_edge("team", "judge")
builder.add_edge("judge", END)
graph = builder.compile(checkpointer=InMemorySaver())

# A note already in the parent: the subgraph returns its whole list, which the
# parent's reducer adds again (the seed shows up twice).
INPUT = {"topic": "bees", "notes": ["seed"], "verdict": ""}


def scenario(rec):
    config = {"configurable": {"thread_id": "bees"}}
    rec("invoke", graph.invoke(INPUT, config))
    rec("get_state", graph.get_state(config))
    rec("get_state subgraphs=True", graph.get_state(config, subgraphs=True))
    rec("history length", len(list(graph.get_state_history(config))))
    rec.stream(
        "stream updates",
        graph.stream(INPUT, {"configurable": {"thread_id": "s1"}}, stream_mode="updates"),
    )
    rec.stream(
        "stream updates subgraphs=True",
        graph.stream(
            INPUT, {"configurable": {"thread_id": "s2"}}, stream_mode="updates", subgraphs=True
        ),
    )
    rec.stream(
        "stream [values, updates] subgraphs=True",
        graph.stream(
            INPUT,
            {"configurable": {"thread_id": "s3"}},
            stream_mode=["values", "updates"],
            subgraphs=True,
        ),
    )
    rec.stream(
        "stream v2 updates subgraphs=True",
        graph.stream(
            INPUT,
            {"configurable": {"thread_id": "s4"}},
            stream_mode="updates",
            subgraphs=True,
            version="v2",
        ),
    )

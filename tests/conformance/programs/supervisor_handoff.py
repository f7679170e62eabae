"""Supervisor handoff: Command(goto=..., update=...) to workers that hand back; Send in goto."""

import operator
from typing import Annotated, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, Send


class State(TypedDict):
    task: str
    done: Annotated[list[str], operator.add]
    handoffs: Annotated[list[str], operator.add]


PLAN = ["researcher", "writer"]


def supervisor(state: State) -> Command[Literal["researcher", "writer", "reviewers", "__end__"]]:
    remaining = [agent for agent in PLAN if agent not in state["done"]]
    if remaining:
        return Command(goto=remaining[0], update={"handoffs": [f"supervisor->{remaining[0]}"]})
    if "review" not in " ".join(state["done"]):
        # Two reviewers in parallel, each with its own payload.
        return Command(
            goto=[
                Send("reviewers", {"task": "style", "done": [], "handoffs": []}),
                Send("reviewers", {"task": "facts", "done": [], "handoffs": []}),
            ]
        )
    return Command(goto=END, update={"handoffs": ["supervisor->end"]})


def researcher(state: State) -> Command[Literal["supervisor"]]:
    return Command(
        goto="supervisor", update={"done": ["researcher"], "handoffs": ["researcher->supervisor"]}
    )


def writer(state: State) -> Command[Literal["supervisor"]]:
    return Command(
        goto="supervisor", update={"done": ["writer"], "handoffs": ["writer->supervisor"]}
    )


def reviewers(state: State) -> dict:
    # A plain dict return: the static edge below takes it back to the supervisor.
    return {"done": [f"review:{state['task']}"]}


builder = StateGraph(State)
builder.add_node("supervisor", supervisor)
builder.add_node("researcher", researcher)
builder.add_node("writer", writer)
builder.add_node("reviewers", reviewers)
builder.add_edge(START, "supervisor")
builder.add_edge("reviewers", "supervisor")
graph = builder.compile()


def step_of(chunk: dict) -> str:
    (node,) = chunk
    return node


def scenario(rec):
    rec("invoke", graph.invoke({"task": "essay", "done": [], "handoffs": []}))
    rec.stream(
        "stream updates",
        graph.stream({"task": "essay", "done": [], "handoffs": []}, stream_mode="updates"),
        unordered=step_of,
    )
    rec("mermaid", graph.get_graph().draw_mermaid())

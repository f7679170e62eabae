"""Command(graph=Command.PARENT): an agent inside a subgraph hands off to a node of its parent."""

import operator
from typing import Annotated, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import Command


class State(TypedDict):
    request: str
    log: Annotated[list[str], operator.add]


def triage(state: State) -> Command[Literal["escalate", "answer"]]:
    if "refund" in state["request"]:
        # Leave the subgraph: go to the parent's "billing" node, with an update.
        return Command(graph=Command.PARENT, goto="billing", update={"log": ["triage: to billing"]})
    return Command(goto="answer", update={"log": ["triage: answering"]})


def escalate(state: State) -> dict:
    return {"log": ["escalate"]}


def answer(state: State) -> dict:
    return {"log": ["answer"]}


desk_builder = StateGraph(State)
desk_builder.add_node("triage", triage)
desk_builder.add_node("escalate", escalate)
desk_builder.add_node("answer", answer)
desk_builder.add_edge(START, "triage")
desk_builder.add_edge("answer", END)
desk_builder.add_edge("escalate", END)
desk = desk_builder.compile()


def billing(state: State) -> dict:
    return {"log": ["billing"]}


def wrap_up(state: State) -> dict:
    return {"log": ["wrap_up"]}


builder = StateGraph(State)
builder.add_node("desk", desk, destinations=("billing",))
builder.add_node("billing", billing)
builder.add_node("wrap_up", wrap_up)
builder.add_edge(START, "desk")
builder.add_edge("desk", "wrap_up")
builder.add_edge("billing", END)
builder.add_edge("wrap_up", END)
graph = builder.compile()


# billing (the Command's goto) and wrap_up (desk's static edge) both run in step 2.
STEP = {"desk": 1, "triage": 1, "billing": 2, "wrap_up": 2}


def step_of(chunk: tuple) -> int:
    _namespace, update = chunk
    (node,) = update
    return STEP[node]


def scenario(rec):
    rec("refund: leaves through the parent", graph.invoke({"request": "refund please", "log": []}))
    rec("question: stays in the subgraph", graph.invoke({"request": "hours?", "log": []}))
    rec.stream(
        "refund: stream updates subgraphs=True",
        graph.stream(
            {"request": "refund please", "log": []}, stream_mode="updates", subgraphs=True
        ),
        unordered=step_of,
    )
    rec("mermaid", graph.get_graph().draw_mermaid())

"""Parallel interrupts in one step resumed by id; one node asking twice; finished siblings kept."""

import operator
from typing import Annotated, TypedDict

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt


class State(TypedDict):
    answers: Annotated[list[str], operator.add]


RUNS: list[str] = []  # node runs since the last invoke recorded them


def runs() -> list[str]:
    """The node runs of the last invoke, sorted: nodes of one step run at once, on
    threads, in an order neither framework fixes."""
    out = sorted(RUNS)
    RUNS.clear()
    return out


def ask_budget(state: State) -> dict:
    RUNS.append("ask_budget")
    return {"answers": [f"budget={interrupt('budget?')}"]}


def ask_deadline(state: State) -> dict:
    RUNS.append("ask_deadline")
    return {"answers": [f"deadline={interrupt({'field': 'deadline'})}"]}


def compute(state: State) -> dict:
    RUNS.append("compute")  # finishes in the same step as the two questions
    return {"answers": ["computed"]}


def confirm(state: State) -> dict:
    RUNS.append("confirm")
    first = interrupt("first name?")
    last = interrupt("last name?")
    return {"answers": [f"name={first} {last}"]}


builder = StateGraph(State)
builder.add_node("ask_budget", ask_budget)
builder.add_node("ask_deadline", ask_deadline)
builder.add_node("compute", compute)
builder.add_node("confirm", confirm)
for node in ("ask_budget", "ask_deadline", "compute"):
    builder.add_edge(START, node)
builder.add_edge(["ask_budget", "ask_deadline", "compute"], "confirm")
builder.add_edge("confirm", END)
graph = builder.compile(checkpointer=InMemorySaver())


# Interrupts raised in one step are listed in the order their nodes stopped,
# which LangGraph leaves open: the scenario sorts them before recording.
def in_order(interrupts) -> list:
    return sorted(interrupts, key=lambda i: str(i.value))


def with_sorted_interrupts(result: dict) -> dict:
    return {**result, "__interrupt__": in_order(result.get("__interrupt__", ()))}


def snapshot_fields(snapshot) -> dict:
    return {
        "values": snapshot.values,
        "next": snapshot.next,
        "tasks": snapshot.tasks,
        "interrupts": in_order(snapshot.interrupts),
        "metadata": snapshot.metadata,
        "config": snapshot.config,
        "parent_config": snapshot.parent_config,
    }


def scenario(rec):
    config = {"configurable": {"thread_id": "plan"}}
    rec("first invoke", with_sorted_interrupts(graph.invoke({"answers": []}, config)))
    rec("runs of the first invoke", runs())
    snapshot = graph.get_state(config)
    rec("state with two interrupts", snapshot_fields(snapshot))
    rec.call("resume with one bare value", graph.invoke, Command(resume="?"), config, message=False)
    by_value = {
        i.value if isinstance(i.value, str) else "deadline": i.id for i in snapshot.interrupts
    }
    # Answer only the budget question: the deadline one stays pending.
    rec("resume one by id", graph.invoke(Command(resume={by_value["budget?"]: "10k"}), config))
    rec("runs of the first resume", runs())
    rec("state after one answer", snapshot_fields(graph.get_state(config)))
    pending = graph.get_state(config).interrupts
    rec("resume the other by id", graph.invoke(Command(resume={pending[0].id: "friday"}), config))
    rec("runs of the second resume", runs())
    rec("confirm asks its first question", graph.get_state(config).interrupts)
    rec("answer the first name", graph.invoke(Command(resume="Ada"), config))
    rec("runs of the first name", runs())
    rec("answer the last name", graph.invoke(Command(resume="Lovelace"), config))
    rec("runs of the last name", runs())
    rec("final state", graph.get_state(config))
    rec("node runs left", runs())

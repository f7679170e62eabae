"""An interrupt inside a subgraph, saved to SQLite, resumed from a new process."""

import operator
from typing import Annotated, TypedDict

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

PHASES = ("ask", "resume")

RUNS: list[str] = []  # node runs in this process


class State(TypedDict):
    claim: str
    trail: Annotated[list[str], operator.add]


def draft(state: State) -> dict:
    RUNS.append("draft")
    return {"trail": [f"drafted {state['claim']}"]}


def sign_off(state: State) -> dict:
    RUNS.append("sign_off")
    answer = interrupt({"sign": state["claim"], "so_far": state["trail"]})
    return {"trail": [f"signed: {answer}"]}


def file(state: State) -> dict:
    RUNS.append("file")
    return {"trail": ["filed"]}


approvals_builder = StateGraph(State)
approvals_builder.add_node("draft", draft)
approvals_builder.add_node("sign_off", sign_off)
approvals_builder.add_node("file", file)
approvals_builder.add_edge(START, "draft")
approvals_builder.add_edge("draft", "sign_off")
approvals_builder.add_edge("sign_off", "file")
approvals_builder.add_edge("file", END)
approvals = approvals_builder.compile()


def intake(state: State) -> dict:
    RUNS.append("intake")
    return {"trail": ["intake"]}


def notify(state: State) -> dict:
    RUNS.append("notify")
    return {"trail": ["notified"]}


builder = StateGraph(State)
builder.add_node("intake", intake)
builder.add_node("approvals", approvals)
builder.add_node("notify", notify)
builder.add_edge(START, "intake")
builder.add_edge("intake", "approvals")
builder.add_edge("approvals", "notify")
builder.add_edge("notify", END)

CONFIG = {"configurable": {"thread_id": "claim-7"}}


def scenario(rec, phase, workdir):
    with SqliteSaver.from_conn_string(str(workdir / "threads.sqlite")) as saver:
        graph = builder.compile(checkpointer=saver)
        if phase == "ask":
            rec("invoke", graph.invoke({"claim": "laptop", "trail": []}, CONFIG))
        else:
            rec.stream(
                "resume, stream updates subgraphs=True",
                graph.stream(Command(resume="yes"), CONFIG, stream_mode="updates", subgraphs=True),
            )
        snapshot = graph.get_state(CONFIG, subgraphs=True)
        rec("get_state subgraphs=True", snapshot)
        rec("get_state", graph.get_state(CONFIG))
        if snapshot.tasks and snapshot.tasks[0].state is not None:
            rec("subgraph snapshot config", snapshot.tasks[0].state.config)
            inner = graph.get_state(snapshot.tasks[0].state.config)
            rec("subgraph state by its config", (inner.values, inner.next, inner.interrupts))
        rec(
            "history",
            [
                (s.metadata["source"], s.metadata["step"], s.next)
                for s in graph.get_state_history(CONFIG)
            ],
        )
        rec("node runs in this process", RUNS)

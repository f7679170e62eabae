"""State API: get_state, get_state_history, update_state(as_node) and a time-travel fork."""

import asyncio
import operator
from typing import Annotated, TypedDict

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph


class State(TypedDict):
    topic: str
    drafts: Annotated[list[str], operator.add]
    verdict: str


def write(state: State) -> dict:
    return {"drafts": [f"draft {len(state['drafts']) + 1} on {state['topic']}"]}


def review(state: State) -> dict:
    return {"verdict": "ok" if len(state["drafts"]) >= 2 else "again"}


def route(state: State) -> str:
    return END if state["verdict"] == "ok" else "write"


builder = StateGraph(State)
builder.add_node("write", write)
builder.add_node("review", review)
builder.add_edge(START, "write")
builder.add_edge("write", "review")
builder.add_conditional_edges("review", route, ["write", END])
graph = builder.compile(checkpointer=InMemorySaver())
unsaved = builder.compile()


def scenario(rec):
    config = {"configurable": {"thread_id": "t1"}}
    rec("invoke", graph.invoke({"topic": "owls", "drafts": [], "verdict": ""}, config))
    rec("get_state", graph.get_state(config))
    history = list(graph.get_state_history(config))
    rec("history", history)
    rec("history limit=2", graph.get_state_history(config, limit=2))
    rec("history filter source=input", graph.get_state_history(config, filter={"source": "input"}))

    # update_state as a node: the next nodes follow that node's edges.
    updated = graph.update_state(config, {"drafts": ["a human draft"]}, as_node="write")
    rec("update_state as write", updated)
    rec("state after update", graph.get_state(config))
    rec("continue after update", graph.invoke(None, config))

    # update_state without as_node on a finished thread: the last node that wrote is used.
    rec("update_state no as_node", graph.update_state(config, {"verdict": "edited"}))
    rec("state after plain update", graph.get_state(config))

    # Time travel: re-run from the checkpoint taken before the first review.
    before_review = next(s for s in reversed(history) if s.next == ("review",))
    rec("checkpoint picked", before_review.config)
    rec("fork invoke", graph.invoke(None, before_review.config))
    rec("state after fork", graph.get_state(config))
    rec("history length after fork", len(list(graph.get_state_history(config))))

    # Fork with an edit: update_state on a past checkpoint makes a new branch.
    branch = graph.update_state(before_review.config, {"topic": "bats"})
    rec("branch config", branch)
    rec("branch state", graph.get_state(branch))
    rec("branch invoke", graph.invoke(None, branch))

    # A thread nobody ran, then one that starts with an update instead of a run.
    rec("empty thread", graph.get_state({"configurable": {"thread_id": "nobody"}}))
    fresh = {"configurable": {"thread_id": "fresh"}}
    rec("update_state on a new thread", graph.update_state(fresh, {"topic": "moths"}))
    rec("state of the new thread", graph.get_state(fresh))

    # Misuse.
    rec.call("update_state as an unknown node", graph.update_state, config, {}, as_node="nope")
    rec.call("get_state without a checkpointer", unsaved.get_state, config, message=False)
    rec.call("invoke without a thread_id", graph.invoke, {"topic": "x"}, message=False)

    # The async twins see the same thread.
    async def main():
        rec("aget_state values", (await graph.aget_state(config)).values)
        rec("aget_state_history length", len([s async for s in graph.aget_state_history(config)]))
        new = await graph.aupdate_state(config, {"verdict": "async edit"}, as_node="review")
        rec("aupdate_state then aget_state", (await graph.aget_state(new)).values)

    asyncio.run(main())

"""batch/abatch, ainvoke/astream with async and sync nodes, invoke inside a running loop."""

import asyncio
import os
from typing import TypedDict

from langgraph.graph import END, START, StateGraph

PID = os.getpid()


class State(TypedDict):
    n: int
    out: str
    same_process: bool


def square(state: State) -> dict:
    if state["n"] < 0:
        raise ValueError(f"negative: {state['n']}")
    return {"n": state["n"] ** 2, "same_process": os.getpid() == PID}


def describe(state: State) -> dict:
    return {"out": f"n={state['n']}"}


builder = StateGraph(State)
builder.add_node("square", square)
builder.add_node("describe", describe)
builder.add_edge(START, "square")
builder.add_edge("square", "describe")
builder.add_edge("describe", END)
graph = builder.compile()


async def fetch(state: State) -> dict:
    await asyncio.sleep(0)
    return {"out": f"fetched {state['n']}"}


def annotate(state: State) -> dict:
    return {"out": state["out"] + " (sync)", "same_process": os.getpid() == PID}


mixed_builder = StateGraph(State)
mixed_builder.add_node("fetch", fetch)
mixed_builder.add_node("annotate", annotate)
mixed_builder.add_edge(START, "fetch")
mixed_builder.add_edge("fetch", "annotate")
mixed_builder.add_edge("annotate", END)
mixed = mixed_builder.compile()


def inputs(*ns: int) -> list[dict]:
    return [{"n": n, "out": "", "same_process": False} for n in ns]


def scenario(rec):
    rec("batch", graph.batch(inputs(1, 2, 3)))
    rec.call("batch, one fails", graph.batch, inputs(1, -2, 3))
    rec("batch return_exceptions", graph.batch(inputs(1, -2, 3), return_exceptions=True))
    rec(
        "batch with a config per input",
        graph.batch(inputs(4, 5), [{"recursion_limit": 10}, {"tags": ["second"]}]),
    )

    async def main():
        rec("abatch", await graph.abatch(inputs(6, 7)))
        rec("ainvoke, sync nodes", await graph.ainvoke(inputs(8)[0]))
        rec("ainvoke, async node", await mixed.ainvoke(inputs(9)[0]))
        await rec.astream("astream updates", mixed.astream(inputs(10)[0], stream_mode="updates"))
        # A web handler or notebook cell calling the sync API while its loop runs.
        rec("invoke inside a running loop", graph.invoke(inputs(11)[0]))
        rec.stream(
            "stream inside a running loop", graph.stream(inputs(12)[0], stream_mode="values")
        )
        rec("abatch return_exceptions", await graph.abatch(inputs(-1, 2), return_exceptions=True))

    asyncio.run(main())

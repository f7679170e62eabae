"""Fan-out to three parallel nodes and fan-in: custom reducers, a waiting join, a plain join."""

import operator
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph


def merge_scores(left: dict[str, int], right: dict[str, int]) -> dict[str, int]:
    merged = dict(left)
    for name, score in right.items():
        merged[name] = max(merged.get(name, 0), score)
    return merged


class State(TypedDict):
    query: str
    hits: Annotated[list[str], operator.add]
    scores: Annotated[dict[str, int], merge_scores]
    total: Annotated[int, operator.add]
    joined_by: Annotated[list[str], operator.add]
    summary: str


def web(state: State) -> dict:
    return {"hits": [f"web:{state['query']}"], "scores": {"web": 3, "shared": 1}, "total": 1}


def papers(state: State) -> dict:
    return {"hits": [f"papers:{state['query']}"], "scores": {"papers": 5, "shared": 4}, "total": 10}


def slow_lane(state: State) -> dict:
    return {"hits": ["slow:first"], "total": 100}


def slow_lane_2(state: State) -> dict:
    return {"hits": ["slow:second"], "total": 1000}


def join_all(state: State) -> dict:
    # Runs once, after web, papers AND slow_lane_2 have all finished.
    return {
        "joined_by": ["join_all"],
        "summary": f"{len(state['hits'])} hits, total {state['total']}",
    }


def eager(state: State) -> dict:
    # Plain edges from web and papers: runs in the step after either of them.
    return {"joined_by": [f"eager saw {len(state['hits'])}"]}


builder = StateGraph(State)
for name, fn in [
    ("web", web),
    ("papers", papers),
    ("slow_lane", slow_lane),
    ("slow_lane_2", slow_lane_2),
    ("join_all", join_all),
    ("eager", eager),
]:
    builder.add_node(name, fn)
builder.add_edge(START, "web")
builder.add_edge(START, "papers")
builder.add_edge(START, "slow_lane")
builder.add_edge("slow_lane", "slow_lane_2")
builder.add_edge(["web", "papers", "slow_lane_2"], "join_all")
builder.add_edge("web", "eager")
builder.add_edge("papers", "eager")
builder.add_edge("join_all", END)
builder.add_edge("eager", END)
graph = builder.compile()

INPUT = {"query": "owls", "hits": [], "scores": {}, "total": 0, "joined_by": []}
STEP = {"web": 1, "papers": 1, "slow_lane": 1, "eager": 2, "slow_lane_2": 2, "join_all": 3}


def step_of(chunk: dict) -> int:
    (node,) = chunk
    return STEP[node]


def scenario(rec):
    rec("invoke", graph.invoke(INPUT))
    rec.stream("stream values", graph.stream(INPUT, stream_mode="values"))
    rec.stream("stream updates", graph.stream(INPUT, stream_mode="updates"), unordered=step_of)

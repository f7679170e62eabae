"""Node caching: CachePolicy + InMemoryCache, a hit on the second run, key_func, clear_cache."""

import operator
from typing import Annotated, TypedDict

from langgraph.cache.memory import InMemoryCache
from langgraph.graph import END, START, StateGraph
from langgraph.types import CachePolicy


class State(TypedDict):
    text: str
    user: str
    vector: list[int]
    log: Annotated[list[str], operator.add]


CALLS: list[str] = []


def embed(state: State) -> dict:
    CALLS.append(f"embed:{state['text']}")
    return {"vector": [ord(c) % 7 for c in state["text"]], "log": ["embedded"]}


def personalise(state: State) -> dict:
    CALLS.append(f"personalise:{state['user']}")
    return {"log": [f"for {state['user']}"]}


def by_user(state: State) -> str:
    # Cache per user only: the text does not change this node's result.
    return state["user"]


builder = StateGraph(State)
builder.add_node("embed", embed, cache_policy=CachePolicy())
builder.add_node("personalise", personalise, cache_policy=CachePolicy(key_func=by_user, ttl=3600))
builder.add_edge(START, "embed")
builder.add_edge("embed", "personalise")
builder.add_edge("personalise", END)
graph = builder.compile(cache=InMemoryCache())


def run(text: str, user: str) -> dict:
    return {"text": text, "user": user, "vector": [], "log": []}


def scenario(rec):
    rec("first run", graph.invoke(run("hello", "ada")))
    rec("calls after first run", list(CALLS))
    rec("second run, same input", graph.invoke(run("hello", "ada")))
    rec("calls after second run", list(CALLS))
    rec.stream(
        "stream updates of a cached run", graph.stream(run("hello", "ada"), stream_mode="updates")
    )
    rec("new text, same user", graph.invoke(run("world", "ada")))
    rec("calls after new text", list(CALLS))
    graph.clear_cache()
    rec("after clear_cache", graph.invoke(run("hello", "ada")))
    rec("calls after clear_cache", list(CALLS))
    graph.clear_cache(nodes=["embed"])
    rec("after clearing embed only", graph.invoke(run("hello", "bob")))
    rec("calls at the end", list(CALLS))

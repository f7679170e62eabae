"""Errors: node exceptions keep their type; conflicting writes; bad returns; recursion limit."""

import operator
from typing import Annotated, TypedDict

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.errors import GraphRecursionError, InvalidUpdateError
from langgraph.graph import END, START, StateGraph


class InventoryError(Exception):
    """An application's own error type."""


class State(TypedDict):
    sku: str
    stock: int
    log: Annotated[list[str], operator.add]
    owner: str


STOCK = {"apple": 3}
WAREHOUSE = {"open": False}
LOOKUPS: list[str] = []


def lookup(state: State) -> dict:
    LOOKUPS.append(state["sku"])
    return {"stock": STOCK[state["sku"]], "log": ["lookup"]}  # KeyError for an unknown sku


def reserve(state: State) -> dict:
    if not WAREHOUSE["open"]:
        raise InventoryError(f"warehouse closed, {state['stock']} {state['sku']} waiting")
    return {"log": ["reserve"]}


builder = StateGraph(State)
builder.add_node("lookup", lookup)
builder.add_node("reserve", reserve)
builder.add_edge(START, "lookup")
builder.add_edge("lookup", "reserve")
builder.add_edge("reserve", END)
shop = builder.compile(checkpointer=InMemorySaver())


def claim_a(state: State) -> dict:
    return {"owner": "a"}


def claim_b(state: State) -> dict:
    return {"owner": "b"}


conflict = StateGraph(State)
conflict.add_node("claim_a", claim_a)
conflict.add_node("claim_b", claim_b)
conflict.add_edge(START, "claim_a")
conflict.add_edge(START, "claim_b")
conflicting = conflict.compile(checkpointer=InMemorySaver())


def not_a_dict(state: State) -> str:
    return "done"


def unknown_key(state: State) -> dict:
    return {"colour": "red", "log": ["unknown_key"]}


odd = StateGraph(State)
odd.add_node("unknown_key", unknown_key)
odd.add_node("not_a_dict", not_a_dict)
odd.add_edge(START, "unknown_key")
odd.add_edge("unknown_key", "not_a_dict")
odd_graph = odd.compile()

CALLS: list[int] = []


def spin(state: State) -> dict:
    CALLS.append(state["stock"])
    return {"stock": state["stock"] + 1}


loop = StateGraph(State)
loop.add_node("spin", spin)
loop.add_edge(START, "spin")
loop.add_edge("spin", "spin")
looping = loop.compile(checkpointer=InMemorySaver())


def scenario(rec):
    config = {"configurable": {"thread_id": "unknown-sku"}}
    try:
        shop.invoke({"sku": "pear", "stock": 0, "log": []}, config)
    except KeyError as exc:
        rec("KeyError caught as KeyError", exc)
    rec("state after KeyError", shop.get_state(config))

    config = {"configurable": {"thread_id": "low-stock"}}
    rec.stream(
        "stream until InventoryError", shop.stream({"sku": "apple", "stock": 0, "log": []}, config)
    )
    rec("state after InventoryError", shop.get_state(config))
    WAREHOUSE["open"] = True
    rec("resume after fixing the cause", shop.invoke(None, config))
    rec("lookups (the resume does not repeat it)", LOOKUPS)

    config = {"configurable": {"thread_id": "conflict"}}
    try:
        conflicting.invoke({"sku": "x", "stock": 0, "log": []}, config)
    except InvalidUpdateError as exc:
        rec("conflicting writes", exc)
    # The pending writes are saved; applying them to show the state fails the same way.
    rec.call("state after conflict", conflicting.get_state, config)

    rec.stream(
        "unknown key ignored, then not a dict",
        odd_graph.stream({"sku": "x", "stock": 0, "log": []}),
    )

    for limit in (1, 4):
        CALLS.clear()
        config = {"configurable": {"thread_id": f"spin-{limit}"}, "recursion_limit": limit}
        try:
            looping.invoke({"sku": "x", "stock": 0, "log": []}, config)
        except GraphRecursionError as exc:
            rec(f"recursion_limit={limit}", {"error": exc, "calls": list(CALLS)})
        snapshot = looping.get_state(config)
        rec(
            f"recursion_limit={limit}: state",
            {
                "step": snapshot.metadata["step"],
                "next": snapshot.next,
                "stock": snapshot.values["stock"],
            },
        )
    try:
        looping.invoke(
            {"sku": "x", "stock": 0, "log": []},
            {"configurable": {"thread_id": "rec"}, "recursion_limit": 3},
        )
    except RecursionError as exc:
        rec("GraphRecursionError is a RecursionError", type(exc).__name__)

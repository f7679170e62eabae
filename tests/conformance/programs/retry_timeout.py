"""retry_policy (attempts, retry_on), timeout= on an async node, and error_handler= recovery."""

import asyncio
import operator
from typing import Annotated, TypedDict

from langgraph.errors import NodeError, NodeTimeoutError
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, RetryPolicy


class State(TypedDict):
    attempts: Annotated[list[str], operator.add]
    result: str


ATTEMPTS: dict[str, int] = {}


def flaky(state: State) -> dict:
    ATTEMPTS["flaky"] = ATTEMPTS.get("flaky", 0) + 1
    if ATTEMPTS["flaky"] < 3:
        raise ConnectionError(f"attempt {ATTEMPTS['flaky']} dropped")
    return {"attempts": [f"flaky ok after {ATTEMPTS['flaky']}"]}


def picky(state: State) -> dict:
    ATTEMPTS["picky"] = ATTEMPTS.get("picky", 0) + 1
    raise ValueError("bad input, retrying will not help")


async def slow(state: State) -> dict:
    ATTEMPTS["slow"] = ATTEMPTS.get("slow", 0) + 1
    await asyncio.sleep(30)
    return {"result": "never"}


def recover(state: State, error: NodeError) -> Command:
    return Command(goto="fallback", update={"attempts": [f"handled {error.node}: {error.error!r}"]})


def fallback(state: State) -> dict:
    return {"result": "fallback answer"}


fast_retry = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=False)


def build(second, **options):
    builder = StateGraph(State)
    builder.add_node("flaky", flaky, retry_policy=fast_retry)
    builder.add_node("second", second, **options)
    builder.add_node("fallback", fallback)
    builder.add_edge(START, "flaky")
    builder.add_edge("flaky", "second")
    builder.add_edge("second", END)
    builder.add_edge("fallback", END)
    return builder.compile()


def scenario(rec):
    graph = build(picky, retry_policy=fast_retry)
    rec.call("ValueError is not retried by default", graph.invoke, {"attempts": []})
    rec("attempts", dict(ATTEMPTS))

    ATTEMPTS.clear()
    graph = build(
        picky,
        retry_policy=RetryPolicy(
            max_attempts=2, initial_interval=0.0, jitter=False, retry_on=ValueError
        ),
    )
    rec.call("retry_on=ValueError", graph.invoke, {"attempts": []})
    rec("attempts with retry_on", dict(ATTEMPTS))

    ATTEMPTS.clear()
    graph = build(picky, error_handler=recover)
    rec("error_handler routes to fallback", graph.invoke({"attempts": []}))
    rec.stream(
        "error_handler, stream updates",
        build(picky, error_handler=recover).stream({"attempts": []}, stream_mode="updates"),
    )

    ATTEMPTS.clear()
    graph = build(slow, timeout=0.05)
    try:
        asyncio.run(graph.ainvoke({"attempts": []}))
    except NodeTimeoutError as exc:
        rec("timeout", exc)
    rec("attempts with timeout", dict(ATTEMPTS))
    rec.call("timeout on a sync node", build, picky, timeout=1.0, message=False)

"""Memory grows with the graph, not faster: a fan-out and a chain at two sizes.

A ratio of peak traced memory (tracemalloc) between a run and one twice its
size, not a timed test: what it catches is something kept per step or per
call that grows with the run (records holding states, events kept by
nobody). Time is checked the same way by ``benchmarks/micro.py --scale``.
"""

from __future__ import annotations

import gc
import itertools
import operator
import tracemalloc
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from engine import END, START, Graph, Send

pytestmark = pytest.mark.timeout(120)


class Count(BaseModel):
    items: list[int] = []
    total: Annotated[int, operator.add] = 0


async def one(arg: Any) -> dict[str, int]:
    return {"total": 1}


def fan(n: int) -> Any:
    g = Graph(Count)
    g.add_node("work", one)
    g.add_conditional_edges(START, lambda s: [Send("work", i) for i in range(n)])
    g.add_edge("work", END)
    return g.compile()


def chain(n: int) -> Any:
    g = Graph(Count)
    names = [f"n{i}" for i in range(n)]
    for name in names:
        g.add_node(name, one)
    g.add_edge(START, names[0])
    for a, b in itertools.pairwise(names):
        g.add_edge(a, b)
    g.add_edge(names[-1], END)
    return g.compile()


async def peak(app: Any, n: int) -> int:
    await app.arun(Count(items=list(range(100))), recursion_limit=n + 1)  # warm
    gc.collect()
    tracemalloc.start()
    try:
        result = await app.arun(Count(items=list(range(100))), recursion_limit=n + 1)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        assert result.state.total == n


@pytest.mark.parametrize(("build", "n"), [(fan, 2000), (chain, 400)])
async def test_twice_the_graph_takes_about_twice_the_memory(build: Any, n: int) -> None:
    """Peak memory of a run twice as big is at most 2.3x (linear, with a little to spare)."""
    small, big = await peak(build(n), n), await peak(build(2 * n), 2 * n)
    assert big / small <= 2.3, (small, big)

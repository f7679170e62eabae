"""Microbenchmarks: what the scheduler and the cpu lane cost per node, per call, per byte.

- scheduler overhead per trivial async node: 1,000 nodes fanned out by ``Send``
  in one step, and a chain of 200 nodes (200 steps);
- cpu-lane dispatch: one call's round trip and the throughput of 200 calls at
  once through the engine's lane, against raw ``loop.run_in_executor`` on the
  same loky pool and on a stdlib ``ProcessPoolExecutor``;
- state size (1 KB to 10 MB) against the cpu lane's round trip;
- lean dispatch: a cpu node that reads one small field
  (``add_node(..., reads=["small"])``) of a 10 MB state, against the same node
  on a tiny state and against sending it the whole 10 MB state.

Node functions live at module level: worker processes import this module by
name (loky hands its ``sys.path`` to them), so the engine and the raw calls
pickle the same functions the same way, by reference.
"""

from __future__ import annotations

import asyncio
import operator
from concurrent.futures import Executor
from typing import Annotated, Any

import pytest
from micro import Counter, add_one, chain_app, fanout_app, trivial  # benchmarks/micro.py
from pydantic import BaseModel

from engine import END, START, Graph
from engine.lanes import Call, Lanes
from engine.spec import Task


class Blob(BaseModel):
    blob: str = ""
    total: Annotated[int, operator.add] = 0


class Lean(BaseModel):
    small: str = "x"
    blob: str = ""
    total: Annotated[int, operator.add] = 0


def _fanout_graph(n: int) -> Any:
    return fanout_app(add_one, n, "io")


def _chain_graph(n: int) -> Any:
    return chain_app(n)


# -- scheduler overhead per node ---------------------------------------------------


def test_send_fanout_1000_async(benchmark: Any, run: Any, per_op: Any) -> None:
    """1,000 trivial async nodes in one step via Send: scheduler cost per node."""
    app = _fanout_graph(1000)
    result = benchmark.pedantic(
        lambda: run(app.arun(Counter(), mode="parallel")), rounds=10, warmup_rounds=2
    )
    assert result.state.total == 1000
    per_op("send_fanout_1000_async", 1000)


def test_chain_200_async(benchmark: Any, run: Any, per_op: Any) -> None:
    """A 200-node chain (200 steps): per-step cost of merge, route and barrier."""
    app = _chain_graph(200)
    result = benchmark.pedantic(
        lambda: run(app.arun(Counter(), mode="parallel", recursion_limit=250)),
        rounds=10,
        warmup_rounds=2,
    )
    assert result.state.total == 200
    per_op("chain_200_async", 200)


# -- cpu-lane dispatch: round trip ---------------------------------------------------

ROUND_TRIPS = 50


async def _engine_round_trips(pool: Executor, state: Any, n: int) -> None:
    lanes = Lanes("parallel", pool)
    try:
        for _ in range(n):
            out = await lanes.cpu.run(Call(Task("trivial"), 0), trivial, state)
            assert out.ok
    finally:
        await lanes.aclose()


async def _raw_round_trips(pool: Executor, state: Any, n: int) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(n):
        await loop.run_in_executor(pool, trivial, state)


def test_dispatch_engine_lane(benchmark: Any, run: Any, loky_pool: Executor, per_op: Any) -> None:
    """One cpu-lane call after another through the engine's lane (pickle, submit, unpickle)."""
    benchmark.pedantic(
        lambda: run(_engine_round_trips(loky_pool, Counter(), ROUND_TRIPS)),
        rounds=15,
        warmup_rounds=2,
    )
    per_op("dispatch_engine_lane", ROUND_TRIPS)


def test_dispatch_raw_loky(benchmark: Any, run: Any, loky_pool: Executor, per_op: Any) -> None:
    """The same calls as raw loop.run_in_executor on the same loky pool."""
    benchmark.pedantic(
        lambda: run(_raw_round_trips(loky_pool, Counter(), ROUND_TRIPS)),
        rounds=15,
        warmup_rounds=2,
    )
    per_op("dispatch_raw_loky", ROUND_TRIPS)


def test_dispatch_raw_stdlib(benchmark: Any, run: Any, stdlib_pool: Executor, per_op: Any) -> None:
    """The same calls as raw loop.run_in_executor on a stdlib ProcessPoolExecutor."""
    benchmark.pedantic(
        lambda: run(_raw_round_trips(stdlib_pool, Counter(), ROUND_TRIPS)),
        rounds=15,
        warmup_rounds=2,
    )
    per_op("dispatch_raw_stdlib", ROUND_TRIPS)


def test_dispatch_engine_arun(benchmark: Any, run: Any, loky_pool: Executor, per_op: Any) -> None:
    """A whole one-node graph run in parallel mode: lane plus scheduler, for context."""
    g = Graph(Counter)
    g.add_node("trivial", trivial, lane="cpu")
    g.add_edge(START, "trivial")
    g.add_edge("trivial", END)
    app = g.compile()

    async def runs() -> None:
        for _ in range(ROUND_TRIPS):
            await app.arun(Counter(), mode="parallel", executor=loky_pool)

    benchmark.pedantic(lambda: run(runs()), rounds=10, warmup_rounds=2)
    per_op("dispatch_engine_arun_1_node", ROUND_TRIPS)


# -- cpu-lane dispatch: throughput ---------------------------------------------------

AT_ONCE = 200


async def _engine_at_once(pool: Executor, n: int) -> None:
    lanes = Lanes("parallel", pool)
    try:
        outs = await asyncio.gather(
            *(lanes.cpu.run(Call(Task("trivial", i), 0), trivial, i) for i in range(n))
        )
        assert all(o.ok for o in outs)
    finally:
        await lanes.aclose()


async def _raw_at_once(pool: Executor, n: int) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(pool, trivial, i) for i in range(n)))


def test_throughput_engine_lane(benchmark: Any, run: Any, loky_pool: Executor, per_op: Any) -> None:
    """200 cpu-lane calls submitted at once through the engine's lane."""
    benchmark.pedantic(lambda: run(_engine_at_once(loky_pool, AT_ONCE)), rounds=10, warmup_rounds=2)
    per_op("throughput_engine_lane", AT_ONCE)


def test_throughput_raw_loky(benchmark: Any, run: Any, loky_pool: Executor, per_op: Any) -> None:
    """200 raw run_in_executor calls at once on the same loky pool."""
    benchmark.pedantic(lambda: run(_raw_at_once(loky_pool, AT_ONCE)), rounds=10, warmup_rounds=2)
    per_op("throughput_raw_loky", AT_ONCE)


def test_throughput_raw_stdlib(
    benchmark: Any, run: Any, stdlib_pool: Executor, per_op: Any
) -> None:
    """200 raw run_in_executor calls at once on a stdlib ProcessPoolExecutor."""
    benchmark.pedantic(lambda: run(_raw_at_once(stdlib_pool, AT_ONCE)), rounds=10, warmup_rounds=2)
    per_op("throughput_raw_stdlib", AT_ONCE)


# -- state size ------------------------------------------------------------------------

SIZES = {"1KB": 1 << 10, "10KB": 10 << 10, "100KB": 100 << 10, "1MB": 1 << 20, "10MB": 10 << 20}


def _calls_for(size: int) -> int:
    return 20 if size <= 100 << 10 else 5


@pytest.mark.parametrize("label", list(SIZES))
def test_state_size_engine(
    benchmark: Any, run: Any, loky_pool: Executor, per_op: Any, label: str
) -> None:
    """A cpu-lane round trip with the state carrying ``label`` of data (the engine's lane)."""
    state, n = Blob(blob="x" * SIZES[label]), _calls_for(SIZES[label])
    benchmark.pedantic(
        lambda: run(_engine_round_trips(loky_pool, state, n)), rounds=5, warmup_rounds=1
    )
    per_op(f"state_size_engine_{_bytes_label(label)}", n)


@pytest.mark.parametrize("label", list(SIZES))
def test_state_size_raw(
    benchmark: Any, run: Any, loky_pool: Executor, per_op: Any, label: str
) -> None:
    """The same state through raw run_in_executor on the same loky pool."""
    state, n = Blob(blob="x" * SIZES[label]), _calls_for(SIZES[label])
    benchmark.pedantic(
        lambda: run(_raw_round_trips(loky_pool, state, n)), rounds=5, warmup_rounds=1
    )
    per_op(f"state_size_raw_{_bytes_label(label)}", n)


def _bytes_label(label: str) -> str:
    """'1KB' -> '1024B': a key that sorts by size."""
    return f"{SIZES[label]}B"


# -- lean dispatch ---------------------------------------------------------------------

TEN_MB = 10 << 20
LEAN_RUNS = 20


def read_small(view: Any) -> dict[str, int]:
    """A cpu node that needs one small field of the state."""
    return {"total": len(view.small)}


def _lean_graph(reads: list[str] | None) -> Any:
    g = Graph(Lean)
    g.add_node("read", read_small, lane="cpu", reads=reads)
    g.add_edge(START, "read")
    g.add_edge("read", END)
    return g.compile()


def _lean_runs(run: Any, pool: Executor, reads: list[str] | None, state: Lean, n: int) -> Any:
    app = _lean_graph(reads)

    async def runs() -> None:
        for _ in range(n):
            result = await app.arun(state, mode="parallel", executor=pool)
            assert result.state.total == len(state.small)

    run(runs())  # the first run measures the pool's dispatch cost: not timed
    return lambda: run(runs())


@pytest.mark.parametrize(
    ("label", "reads", "size"),
    [
        ("tiny_state", ["small"], 0),
        ("10MB_state_reads_small", ["small"], TEN_MB),
        ("10MB_state_whole", None, TEN_MB),
    ],
)
def test_lean_dispatch(
    benchmark: Any,
    run: Any,
    loky_pool: Executor,
    per_op: Any,
    label: str,
    reads: list[str] | None,
    size: int,
) -> None:
    """One cpu node, a whole graph run: what a 10 MB state costs it, read lean or whole."""
    n = LEAN_RUNS if reads else 5
    go = _lean_runs(run, loky_pool, reads, Lean(blob="x" * size), n)
    benchmark.pedantic(go, rounds=7, warmup_rounds=1)
    per_op(f"lean_{label}", n)

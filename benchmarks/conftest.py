"""Fixtures for the microbenchmarks, and a summary of them against the targets.

Run them with ``python -m engine micro --pytest`` (or ``pytest benchmarks/``); the
default test run (``testpaths = ["tests"]``) leaves them out.

Every benchmark runs its coroutines on one long-lived event loop (uvloop
when installed, like ``app.run``), against pools started and warmed once per
session, so what is timed is the steady state: no process start-up, no
first-call imports in the workers.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any

import pytest

import engine
from engine.lanes.pool import warm

# name -> seconds per operation (median), filled by the benchmarks, read at the end.
_PER_OP: dict[str, float] = {}

Run = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(scope="session")
def run() -> Iterator[Run]:
    """``run(coro)`` on one event loop for the whole session."""
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        yield runner.run


@pytest.fixture(scope="session")
def loky_pool() -> Executor:
    """The engine's default pool (loky), started and warmed."""
    pool = engine.default_executor()
    warm(pool)
    return pool


@pytest.fixture(scope="session")
def stdlib_pool() -> Iterator[Executor]:
    """A stdlib ProcessPoolExecutor of the same size, started and warmed."""
    n = getattr(engine.default_executor(), "_max_workers", os.cpu_count() or 1)
    with ProcessPoolExecutor(n) as pool:
        warm(pool, n)
        yield pool


@pytest.fixture
def per_op(benchmark: Any) -> Callable[[str, int], None]:
    """``per_op(name, n)``: record the benchmark's median divided by ``n`` operations."""

    def record(name: str, n: int) -> None:
        median = float(benchmark.stats.stats.median)
        _PER_OP[name] = median / n
        benchmark.extra_info["per_op_us"] = round(median / n * 1e6, 2)

    return record


def _ratio(a: str, b: str) -> str:
    if a in _PER_OP and b in _PER_OP and _PER_OP[b] > 0:
        return f"{_PER_OP[a] / _PER_OP[b]:.2f}x"
    return "not measured"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """What the numbers mean: per-node overheads and dispatch ratios against the targets."""
    if not _PER_OP:
        return
    w = terminalreporter.write_line
    terminalreporter.section("engine microbenchmarks: per operation (median)")
    for name, secs in sorted(_PER_OP.items()):
        w(f"  {name:<44} {secs * 1e6:10.1f} us")
    w("")
    w("  targets:")
    for name in ("send_fanout_1000_async", "chain_200_async"):
        if name in _PER_OP:
            us = _PER_OP[name] * 1e6
            verdict = "ok" if us <= 50 else "MISSED"
            w(f"    {name}: {us:.1f} us per trivial async node (target <= 50 us): {verdict}")
    w(
        "    cpu-lane round trip vs raw run_in_executor, same loky pool: "
        f"{_ratio('dispatch_engine_lane', 'dispatch_raw_loky')} (target <= 1.25x); "
        f"vs stdlib ProcessPoolExecutor: {_ratio('dispatch_engine_lane', 'dispatch_raw_stdlib')}"
    )
    w(
        "    cpu-lane throughput (per call, 200 at once) vs raw loky: "
        f"{_ratio('throughput_engine_lane', 'throughput_raw_loky')}; "
        f"vs stdlib: {_ratio('throughput_engine_lane', 'throughput_raw_stdlib')}"
    )
    if "lean_tiny_state" in _PER_OP:
        w(
            "    lean dispatch, one cpu node reading one small field (whole run): 10 MB state "
            f"{_PER_OP.get('lean_10MB_state_reads_small', 0) * 1e3:.2f} ms vs tiny state "
            f"{_PER_OP['lean_tiny_state'] * 1e3:.2f} ms = "
            f"{_ratio('lean_10MB_state_reads_small', 'lean_tiny_state')} (target <= 1.2x); "
            f"sending the whole 10 MB: {_PER_OP.get('lean_10MB_state_whole', 0) * 1e3:.1f} ms "
            f"({_ratio('lean_10MB_state_whole', 'lean_tiny_state')})"
        )
    sizes = sorted(
        {k.rsplit("_", 1)[1] for k in _PER_OP if k.startswith("state_size_")},
        key=lambda s: int(s.rstrip("B")),
    )
    for size in sizes:
        mine, raw = f"state_size_engine_{size}", f"state_size_raw_{size}"
        w(
            f"    state {size:>9}: engine lane {_PER_OP.get(mine, 0) * 1e3:8.2f} ms, "
            f"raw loky {_PER_OP.get(raw, 0) * 1e3:8.2f} ms ({_ratio(mine, raw)})"
        )

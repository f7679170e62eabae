"""Where calls run, proven from independent evidence: pids, threads, intervals."""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from engine import START, Graph
from tests.support import State, cpu_probe, io_probe, thread_probe


def two_cpu_nodes(seconds: float = 0.3) -> Graph:
    g = Graph(State)
    for name in ("c1", "c2"):
        g.add_node(name, functools.partial(cpu_probe, name, seconds), lane="cpu")
        g.add_edge(START, name)
    return g


def overlap(a: dict[str, Any], b: dict[str, Any]) -> float:
    return min(a["end"], b["end"]) - max(a["start"], b["start"])


class TestCpuLane:
    async def test_parallel_runs_in_two_worker_processes_at_once(self) -> None:
        """In parallel mode two cpu nodes of a step ran in two non-driver processes, overlapping."""
        r = await two_cpu_nodes().compile().arun({}, mode="parallel")
        p1, p2 = r.state.probes["c1"], r.state.probes["c2"]
        # The nodes' own words ...
        assert p1["pid"] != p2["pid"]
        assert os.getpid() not in (p1["pid"], p2["pid"])
        assert overlap(p1, p2) > 0
        # ... agree with the engine's trace.
        c1, c2 = r.trace.for_node("c1")[0], r.trace.for_node("c2")[0]
        assert {c1.pid, c2.pid} == {p1["pid"], p2["pid"]}
        assert min(c1.end, c2.end) > max(c1.start, c2.start)
        assert c1.bytes_in > 0 and c1.bytes_out > 0

    async def test_concurrent_runs_in_driver_threads(self) -> None:
        """In concurrent mode cpu nodes run on threads of the driver process (GIL-bound)."""
        r = await two_cpu_nodes(0.05).compile().arun({}, mode="concurrent")
        for name in ("c1", "c2"):
            assert r.state.probes[name]["pid"] == os.getpid()
            assert not r.state.probes[name]["main_thread"]
        assert {c.bytes_in for c in r.trace.calls} == {0}

    async def test_sequential_never_overlaps(self) -> None:
        """In sequential mode no two calls overlap in time."""
        r = await two_cpu_nodes(0.05).compile().arun({}, mode="sequential")
        p1, p2 = r.state.probes["c1"], r.state.probes["c2"]
        assert overlap(p1, p2) <= 0
        assert p1["pid"] == p2["pid"] == os.getpid()

    async def test_user_executor_is_used(self) -> None:
        """executor= sends cpu calls to that pool, not the default one."""
        with ProcessPoolExecutor(2) as pool:
            pool_pids = set(pool.submit(os.getpid).result() for _ in range(4))
            r = await two_cpu_nodes(0.05).compile().arun({}, mode="parallel", executor=pool)
            pool_pids |= {p for p in pool._processes}  # type: ignore[attr-defined]
        assert r.trace.pids("cpu") <= pool_pids
        assert r.metrics.cpu_workers == 2

    async def test_loop_not_starved(self) -> None:
        """A heartbeat on the loop ticks without a gap > 100 ms while cpu nodes burn."""
        ticks: list[float] = []

        async def heartbeat(state: State) -> None:
            end = time.perf_counter() + 0.6
            while time.perf_counter() < end:
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.01)

        g = two_cpu_nodes(0.5)
        g.add_node("beat", heartbeat)
        g.add_edge(START, "beat")
        r = await g.compile().arun({}, mode="parallel")
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        assert len(ticks) > 20 and max(gaps) < 0.1
        assert r.trace.for_node("c1")[0].cpu_s > 0.3


class TestOtherLanes:
    async def test_io_runs_on_the_driver_loop(self, mode: str) -> None:
        """io nodes run on the driver's event loop thread."""
        g = Graph(State)
        g.add_node("io", functools.partial(io_probe, "io", 0.0))
        g.add_edge(START, "io")
        r = await g.compile().arun({}, mode=mode)
        assert r.state.probes["io"]["pid"] == os.getpid()
        assert r.state.probes["io"]["main_thread"]

    async def test_thread_lane_uses_a_pool_thread(self) -> None:
        """thread nodes run in a non-main thread of the driver in parallel mode."""
        g = Graph(State)
        g.add_node("t", functools.partial(thread_probe, "t"), lane="thread")
        g.add_edge(START, "t")
        r = await g.compile().arun({}, mode="parallel")
        assert r.state.probes["t"]["pid"] == os.getpid()
        assert not r.state.probes["t"]["main_thread"]

    async def test_inline_runs_on_the_loop_thread(self, mode: str) -> None:
        """inline nodes are called on the loop thread in every mode."""
        g = Graph(State)
        g.add_node("i", functools.partial(thread_probe, "i"), lane="inline")
        g.add_edge(START, "i")
        r = await g.compile().arun({}, mode=mode)
        assert r.state.probes["i"]["main_thread"]

    def test_invoke_uses_uvloop(self) -> None:
        """The sync entry point runs on uvloop when it is installed."""
        g = Graph(State)
        g.add_node("io", functools.partial(io_probe, "io", 0.0))
        g.add_edge(START, "io")
        out = g.compile().invoke({})
        assert "uvloop" in out.probes["io"]["loop"]

    async def test_async_node_on_cpu_lane_runs_in_worker(self) -> None:
        """lane='cpu' on an async def runs it on a loop inside a worker process."""
        g = Graph(State)
        g.add_node("aio", functools.partial(io_probe, "aio", 0.01), lane="cpu")
        g.add_edge(START, "aio")
        r = await g.compile().arun({}, mode="parallel")
        assert r.state.probes["aio"]["pid"] != os.getpid()


SCRIPT = """
import os, operator
from typing import Annotated
from pydantic import BaseModel
import engine
from engine import Graph, START

class Mine(BaseModel):
    pids: Annotated[list[int], operator.add] = []

@engine.cpu
def work(state: Mine) -> dict:
    return {"pids": [os.getpid()]}

if __name__ == "__main__":
    g = Graph(Mine)
    g.add_node("w1", work)
    g.add_node("w2", work)
    g.add_edge(START, "w1")
    g.add_edge(START, "w2")
    out = g.compile().invoke({}, mode="parallel")
    print("DRIVER", os.getpid(), "WORKERS", *out.pids)
"""


def test_main_module_code_reaches_workers(tmp_path: Path) -> None:
    """State classes and nodes defined in a user's __main__ script run in worker processes."""
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=90, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("DRIVER"))
    words = line.split()
    driver, workers = int(words[1]), [int(w) for w in words[3:]]
    assert len(workers) == 2 and driver not in workers

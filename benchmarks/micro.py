"""What the engine costs per node and per call, as ratios to asyncio's and loky's own floor.

    python benchmarks/micro.py                    # the four figures, 7 rounds each
    python benchmarks/micro.py --json out.json    # and keep every round's numbers
    python benchmarks/micro.py -k chain --rounds 11
    python benchmarks/micro.py --scale            # the scale checks (linear growth)

Each figure times the engine and its reference in the same process, on the
same event loop (uvloop when installed, like ``app.run``) and the same loky
pool (the engine's default pool, warmed first), alternating which goes first
from round to round. Each round gives one ratio (engine / reference, or
reference / engine for throughput); the result is the median over rounds,
so a machine that slows down for a while (other developers share the cores)
moves both sides of a round alike:

=================  =========================================  ==============================
figure             engine                                     reference
=================  =========================================  ==============================
``send_io``        ``arun``: START routes 1,000 ``Send`` to a ``asyncio.gather`` of the same
                   trivial ``async def`` node (per node)      1,000 coroutines (per coroutine)
``chain``          ``arun``: a chain of 200 trivial           the same 200 coroutines, each a
                   ``async def`` nodes, 200 steps (per step)  task awaited before the next
``cpu_round_trip`` ``arun`` of a one-node graph, its node on  ``loop.run_in_executor`` of the
                   the cpu lane, minus the same graph with    same function on the same loky
                   its node on the io lane                    pool (one round trip)
``cpu_throughput`` ``arun``: 2,000 ``Send`` to a cpu node of  loky ``executor.map`` of the same
                   ~0.12 ms of pure-Python work               function, ``chunksize=n/16``
=================  =========================================  ==============================

``cpu_round_trip`` also prints its *floor*: the same difference for an io
node that makes the reference's call itself (``await run_in_executor`` of
the same function on the same pool). A cpu lane costing nothing of its own
would measure the floor, which is above 1x: the engine's own work for a run
is the same on both sides, but after waiting for a worker the loop's thread
runs it on a cold cache (it slept while the pool's threads and the worker
ran), and that slowdown counts in the difference.

The chain's reference awaits each coroutine as a task, not inline: a step
of a graph ends at a barrier and its node runs in a context of its own,
which is what one task per step gives; awaiting a coroutine inline costs a
function call and would measure nothing the engine could match.

Targets (a 2-core machine): ``send_io`` <= 5x, ``chain`` <= 8x,
``cpu_round_trip`` <= 1.2x, ``cpu_throughput`` >= 0.9x.

The scale checks (``--scale``) run a ``Send`` fan-out of 10,000 trivial
async nodes and a chain of 2,000 steps, each at that size and at half of
it, and report how time (the median of interleaved runs) and peak traced
memory (``tracemalloc``, a run of its own) grow: doubling the size should
about double both (a ratio near 2; well above it means a cost that grows
faster than the graph). Time is also given without the cyclic garbage
collector's share: a full collection (a cost of every object the process
holds, not of the engine's work) is triggered once enough objects outlive
the young generations, which a big enough step crosses; ``(gather)`` is
``asyncio.gather`` of the same number of coroutines, for comparison.

Node functions live in this module, imported by name (not as ``__main__``),
so the engine and loky send them to the workers the same way: by reference,
as an application's own modules are.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import itertools
import json
import operator
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel

TARGETS: dict[str, tuple[str, float]] = {
    "send_io": ("<=", 5.0),
    "chain": ("<=", 8.0),
    "cpu_round_trip": ("<=", 1.2),
    "cpu_throughput": (">=", 0.9),
}


class Counter(BaseModel):
    n: int = 0
    total: Annotated[int, operator.add] = 0


# -- node functions (module level: workers import them by name) ----------------------


async def add_one(arg: Any) -> dict[str, int]:
    return {"total": 1}


def trivial(arg: Any) -> dict[str, int]:
    """The cheapest cpu node: what is left to time is the dispatch."""
    return {"total": 1}


async def via_pool(arg: Any) -> dict[str, int]:
    """An io node that makes the reference's own call (``run_in_executor`` of ``trivial``
    on the engine's default pool): what a cpu lane that cost nothing of its own would give."""
    import engine

    loop = asyncio.get_running_loop()
    result: dict[str, int] = await loop.run_in_executor(engine.default_executor(), trivial, arg)
    return result


def spin(loops: int, arg: Any) -> dict[str, int]:
    """Pure-Python work, ``loops`` iterations (calibrated to ~0.12 ms)."""
    acc = 0
    for i in range(loops):
        acc += i * i % 7
    return {"total": 1 if acc >= 0 else 0}


def sends(node: str, n: int, state: Any) -> list[Any]:
    from engine import Send

    return [Send(node, i) for i in range(n)]


def calibrate(target_s: float = 120e-6) -> int:
    """Loops of ``spin`` that take about ``target_s`` here (median of a few tries)."""
    loops = 1000
    while True:
        t0 = time.perf_counter()
        spin(loops, None)
        took = time.perf_counter() - t0
        if took > 2e-3:
            break
        loops *= 2
    per_loop = took / loops
    tries = []
    for _ in range(15):
        n = max(1, int(target_s / per_loop))
        t0 = time.perf_counter()
        spin(n, None)
        tries.append((time.perf_counter() - t0) / n)
    return max(1, int(target_s / statistics.median(tries)))


# -- graphs ---------------------------------------------------------------------------


def fanout_app(node: Callable[..., Any], n: int, lane: str) -> Any:
    from engine import END, START, Graph

    g = Graph(Counter)
    g.add_node("work", node, lane=lane)
    g.add_conditional_edges(START, functools.partial(sends, "work", n))
    g.add_edge("work", END)
    return g.compile()


def chain_app(n: int) -> Any:
    from engine import END, START, Graph

    g = Graph(Counter)
    names = [f"n{i:05d}" for i in range(n)]
    for name in names:
        g.add_node(name, add_one, lane="io")
    g.add_edge(START, names[0])
    for a, b in itertools.pairwise(names):
        g.add_edge(a, b)
    g.add_edge(names[-1], END)
    return g.compile()


def one_node_app(lane: str, node: Callable[..., Any] | None = None) -> Any:
    """One trivial node: a plain function on the cpu lane, an ``async def`` on the io lane
    (``node``, when given, instead)."""
    from engine import END, START, Graph

    g = Graph(Counter)
    if node is None:
        node = trivial if lane == "cpu" else add_one
    g.add_node("one", node, lane=lane)
    g.add_edge(START, "one")
    g.add_edge("one", END)
    return g.compile()


# -- timing ---------------------------------------------------------------------------


@dataclass
class Figure:
    """One figure: per-round times of each side, and the ratio per round."""

    name: str
    unit: str  # what one "op" is
    ops: int
    rounds: list[dict[str, float]] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    higher_is_better: bool = False
    #: A second ratio per round, for context (``cpu_round_trip``: its floor), and its name.
    floors: list[float] = field(default_factory=list)

    def median(self, side: str) -> float:
        return statistics.median(r[side] for r in self.rounds)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    def verdict(self) -> str:
        how, target = TARGETS.get(self.name, ("", 0.0))
        if not how:
            return ""
        ok = self.ratio <= target if how == "<=" else self.ratio >= target
        return f"{'met' if ok else 'MISSED'} ({how} {target:g}x)"


async def timed(make: Callable[[], Awaitable[Any]], reps: int) -> float:
    """Mean seconds of ``reps`` awaits of ``make()``."""
    t0 = time.perf_counter()
    for _ in range(reps):
        await make()
    return (time.perf_counter() - t0) / reps


async def interleaved(
    fig: Figure,
    sides: dict[str, Callable[[], Awaitable[Any]]],
    rounds: int,
    reps: int,
    ratio: Callable[[dict[str, float]], float],
) -> Figure:
    """Time every side once per round, in an order that rotates; one ratio per round."""
    names = list(sides)
    for name in names:  # warm-up: first calls import, compile, start workers
        await timed(sides[name], 1)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        row: dict[str, float] = {}
        for name in order:
            gc.collect()
            row[name] = await timed(sides[name], reps)
        fig.rounds.append(row)
        fig.ratios.append(ratio(row))
    return fig


# -- the four figures -------------------------------------------------------------------


async def send_io(rounds: int, n: int = 1000) -> Figure:
    app = fanout_app(add_one, n, "io")

    async def engine_run() -> None:
        result = await app.arun(Counter())
        assert result.state.total == n

    async def reference() -> None:
        await asyncio.gather(*(add_one(i) for i in range(n)))

    fig = Figure("send_io", "per node", n)
    return await interleaved(
        fig, {"engine": engine_run, "reference": reference}, rounds, 3,
        lambda row: row["engine"] / row["reference"],
    )  # fmt: skip


async def chain(rounds: int, n: int = 200) -> Figure:
    app = chain_app(n)

    async def engine_run() -> None:
        result = await app.arun(Counter(), recursion_limit=n + 1)
        assert result.state.total == n

    async def reference() -> None:
        for i in range(n):
            await asyncio.ensure_future(add_one(i))

    fig = Figure("chain", "per step", n)
    return await interleaved(
        fig, {"engine": engine_run, "reference": reference}, rounds, 3,
        lambda row: row["engine"] / row["reference"],
    )  # fmt: skip


async def cpu_round_trip(rounds: int, pool: Executor, runs: int = 40) -> Figure:
    """The figure, and its floor (``Figure.floors``): the same difference for an io node
    that makes the reference's call itself (``via_pool``). The engine's own work for a
    run is the same in both, but after a wait for a worker it runs on a cold cache (the
    loop's thread slept while the pool's threads and the worker ran): that slowdown is
    in the figure too, and the floor shows what it alone costs."""
    cpu, io = one_node_app("cpu"), one_node_app("io")
    floor = one_node_app("io", via_pool)
    loop = asyncio.get_running_loop()
    state = Counter()

    async def cpu_run() -> None:
        result = await cpu.arun(state)
        assert result.state.total == 1

    async def io_run() -> None:
        result = await io.arun(state)
        assert result.state.total == 1

    async def floor_run() -> None:
        result = await floor.arun(state)
        assert result.state.total == 1

    async def raw() -> None:
        await loop.run_in_executor(pool, trivial, state)

    fig = Figure("cpu_round_trip", "per call", 1)
    sides: dict[str, Callable[[], Awaitable[Any]]] = {
        "engine_cpu": cpu_run, "engine_io": io_run, "io_via_pool": floor_run, "raw": raw
    }  # fmt: skip
    fig = await interleaved(
        fig, sides, rounds, runs, lambda row: (row["engine_cpu"] - row["engine_io"]) / row["raw"]
    )
    fig.floors = [(r["io_via_pool"] - r["engine_io"]) / r["raw"] for r in fig.rounds]
    return fig


async def cpu_throughput(rounds: int, pool: Executor, n: int = 2000) -> Figure:
    loops = calibrate()
    work = functools.partial(spin, loops)
    app = fanout_app(work, n, "cpu")
    loop = asyncio.get_running_loop()

    async def engine_run() -> None:
        result = await app.arun(Counter())
        assert result.state.total == n

    def mapped() -> None:
        assert sum(r["total"] for r in pool.map(work, range(n), chunksize=max(1, n // 16))) == n

    async def reference() -> None:
        await loop.run_in_executor(None, mapped)

    fig = Figure("cpu_throughput", "per call", n, higher_is_better=True)
    fig = await interleaved(
        fig, {"engine": engine_run, "reference": reference}, rounds, 1,
        lambda row: row["reference"] / row["engine"],
    )  # fmt: skip
    fig.rounds[0]["spin_loops"] = float(loops)
    return fig


FIGURES = ("send_io", "chain", "cpu_round_trip", "cpu_throughput")


async def figures(names: list[str], rounds: int) -> list[Figure]:
    import engine
    from engine.lanes.pool import warm

    pool = engine.default_executor()
    await asyncio.to_thread(warm, pool)
    out = []
    for name in names:
        if name == "send_io":
            out.append(await send_io(rounds))
        elif name == "chain":
            out.append(await chain(rounds))
        elif name == "cpu_round_trip":
            out.append(await cpu_round_trip(rounds, pool))
        elif name == "cpu_throughput":
            out.append(await cpu_throughput(rounds, pool))
    return out


# -- scale ----------------------------------------------------------------------------------


@dataclass
class Scale:
    name: str
    sizes: tuple[int, int]
    seconds: tuple[float, float]
    peak_bytes: tuple[int, int]
    #: Of ``seconds``, the time the cyclic garbage collector ran (median run).
    gc_seconds: tuple[float, float] = (0.0, 0.0)

    @property
    def time_ratio(self) -> float:
        return self.seconds[1] / self.seconds[0]

    @property
    def time_ratio_without_gc(self) -> float:
        return (self.seconds[1] - self.gc_seconds[1]) / (self.seconds[0] - self.gc_seconds[0])

    @property
    def memory_ratio(self) -> float:
        return self.peak_bytes[1] / self.peak_bytes[0]

    @property
    def size_ratio(self) -> float:
        return self.sizes[1] / self.sizes[0]


async def _scale_one(
    name: str,
    make: Callable[[int], Any],
    run: Callable[[Any, int], Awaitable[Any]],
    big: int,
    rounds: int = 5,
) -> Scale:
    """Time (interleaved rounds, medians) and peak traced memory at half size and full size."""
    sizes = (big // 2, big)
    apps = [make(n) for n in sizes]
    for app, n in zip(apps, sizes, strict=True):
        await run(app, n)  # warm-up
    times: list[list[tuple[float, float]]] = [[], []]
    collecting: list[float] = []

    def timed_gc(phase: str, info: dict[str, Any]) -> None:
        collecting.append(time.perf_counter() if phase == "start" else -time.perf_counter())

    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for i in order:
            gc.collect()
            collecting.clear()
            gc.callbacks.append(timed_gc)
            t0 = time.perf_counter()
            try:
                await run(apps[i], sizes[i])
            finally:
                took = time.perf_counter() - t0
                gc.callbacks.remove(timed_gc)
            in_gc = -sum(collecting) if len(collecting) % 2 == 0 else 0.0
            times[i].append((took, in_gc))
    peaks = []
    for app, n in zip(apps, sizes, strict=True):
        gc.collect()
        tracemalloc.start()
        await run(app, n)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    median = [sorted(t)[len(t) // 2] for t in times]  # the median run, with its GC time
    return Scale(
        name,
        sizes,
        (median[0][0], median[1][0]),
        (peaks[0], peaks[1]),
        (median[0][1], median[1][1]),
    )


async def scale_checks(send_n: int = 10_000, chain_n: int = 2_000) -> list[Scale]:
    async def run_fanout(app: Any, n: int) -> None:
        result = await app.arun(Counter())
        assert result.state.total == n

    async def run_chain(app: Any, n: int) -> None:
        result = await app.arun(Counter(), recursion_limit=n + 1)
        assert result.state.total == n

    async def run_gather(n: Any, _: int) -> None:
        await asyncio.gather(*(add_one(i) for i in range(n)))

    return [
        await _scale_one("send_io", lambda n: fanout_app(add_one, n, "io"), run_fanout, send_n),
        await _scale_one("(gather)", lambda n: n, run_gather, send_n),
        await _scale_one("chain", chain_app, run_chain, chain_n),
    ]


# -- main -----------------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    try:
        import uvloop

        loop = f"uvloop {getattr(uvloop, '__version__', '?')}"
    except ImportError:
        loop = "asyncio"
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in load],
        "loop": loop,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _run(coro: Awaitable[Any]) -> Any:
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write every round's numbers to this file")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per figure (default 7)")
    parser.add_argument("-k", dest="only", help="only figures whose name contains this")
    parser.add_argument("--scale", action="store_true", help="run the scale checks instead")
    args = parser.parse_args(argv)
    doc: dict[str, Any] = {"machine": _machine()}
    if args.scale:
        scales = _run(scale_checks())
        for s in scales:
            print(
                f"{s.name:16} sizes {s.sizes[0]:>6} -> {s.sizes[1]:>6} (x{s.size_ratio:.1f}): "
                f"time {s.seconds[0] * 1e3:8.1f} -> {s.seconds[1] * 1e3:8.1f} ms "
                f"(x{s.time_ratio:.2f}; x{s.time_ratio_without_gc:.2f} without the "
                f"{s.gc_seconds[0] * 1e3:.1f} -> {s.gc_seconds[1] * 1e3:.1f} ms of garbage "
                f"collection), peak memory {s.peak_bytes[0] / 1e6:7.1f} -> "
                f"{s.peak_bytes[1] / 1e6:7.1f} MB (x{s.memory_ratio:.2f})"
            )
        doc["scale"] = [
            {
                **asdict(s),
                "time_ratio": s.time_ratio,
                "time_ratio_without_gc": s.time_ratio_without_gc,
                "memory_ratio": s.memory_ratio,
            }
            for s in scales
        ]
    else:
        names = [f for f in FIGURES if args.only is None or args.only in f]
        figs = _run(figures(names, args.rounds))
        for f in figs:
            sides = ", ".join(
                f"{side} {f.median(side) * 1e6 / (f.ops if side != 'raw' else 1):.1f} us"
                for side in f.rounds[0]
                if side != "spin_loops"
            )
            spread = f"{min(f.ratios):.2f}-{max(f.ratios):.2f}"
            floor = f"  floor {statistics.median(f.floors):.2f}x" if f.floors else ""
            print(
                f"{f.name:16} ratio {f.ratio:6.2f}x  [{spread} over {len(f.ratios)} rounds]  "
                f"{f.verdict():18}  {f.unit}: {sides}{floor}"
            )
        doc["figures"] = {
            f.name: {
                "ratio": f.ratio,
                "ratios": f.ratios,
                "rounds": f.rounds,
                "ops": f.ops,
                "unit": f.unit,
                "target": TARGETS.get(f.name),
                "higher_is_better": f.higher_is_better,
                **({"floor": statistics.median(f.floors), "floors": f.floors} if f.floors else {}),
            }
            for f in figs
        }
    doc["machine"]["loadavg_after"] = _machine()["loadavg"]
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(doc, out, indent=2)
    return 0


def _this_module() -> Any:
    """This file imported under its own name, so workers can import its functions too."""
    spec = globals().get("__spec__")
    if spec is not None and spec.name != "__main__":
        return sys.modules[spec.name]
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    import importlib

    return importlib.import_module("micro")


if __name__ == "__main__":
    sys.exit(_this_module().main())

"""Run workloads in several modes, repeatedly, and summarise what happened.

::

    calibrate CPU units --> cpu executor (warm) --> local LLM server (if needed, warmed)
        for each workload:  build graph -> warm-up run (excluded, smaller sizes)
            for each repeat:  one run per mode [+ variants, LangGraph peer]  -> Sample
        Samples --> Result per (workload, mode): median and min wall, ratios

Every run happens on one event loop (uvloop when installed), one after the
other: a benchmark that overlapped its own runs would measure nothing. The
modes of one workload take turns within each repeat, in alternating order
(ABBA: the first mode of one repeat is the last of the next), so a machine
that is busy for a while, or slowly gets busier, slows every mode alike
rather than one mode more.

Wall time is measured around ``arun`` (what a caller waits for); lower bound,
parallelism and lanes come from the run's own trace. LangGraph peers are
timed the same way and traced by the node wrapper in ``workloads.peers``.

The gate (``floors``): each workload runs only the modes its floors need and
repeats until every floor has enough usable repeats (``GatePolicy``: quiet
ones for a speedup), waiting a moment for a neighbour to finish before a
repeat when the last one was disturbed, within ``max_repeats`` and the
gate's deadline. It never stops early because a floor was met.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import platform
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from ..events import LoopBlocked, RunStarted, StepFinished
from ..lanes import MODES
from ..lanes.pool import default_executor, executor_workers, warm
from ..trace import NodeCall, compute_metrics
from .check import Floor, GatePolicy, Verdict, check
from .cpushare import free_cores, snapshot, wait_free

ExecutorName = Literal["loky", "dask", "thread"]
EXECUTORS: tuple[ExecutorName, ...] = ("loky", "dask", "thread")
PEER_MODE = "langgraph"

# Sizes: 1.0 is the default run (about two minutes on 2 cores, 2 repeats);
# --quick and --check scale every duration down.
QUICK_SCALE = 0.3
# The warm-up run uses the same graph with every duration x this: long enough
# that its cpu calls reach every worker (imports, caches), short enough to be cheap.
WARMUP_SCALE = 0.25
Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    """What to run. ``repeat`` counts measured runs per (workload, mode)."""

    workloads: tuple[str, ...]
    modes: tuple[str, ...] = MODES
    repeat: int = 2
    scale: float = 1.0
    peers: bool = False
    executor: ExecutorName = "loky"
    scheduler: str | None = None
    warmup: bool = True
    # ``modes`` left at all three: each workload runs its ``default_modes``.
    all_modes_default: bool = True

    def __post_init__(self) -> None:
        unknown = [m for m in self.modes if m not in MODES]
        if unknown:
            raise ValueError(f"unknown modes {unknown}; use {', '.join(MODES)}")
        if self.repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {self.repeat}")
        if self.scale <= 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")
        if self.executor not in EXECUTORS:
            raise ValueError(f"unknown executor {self.executor!r}; use {', '.join(EXECUTORS)}")
        if self.scheduler is not None and self.executor != "dask":
            raise ValueError("--scheduler ADDRESS needs --executor dask")


@dataclass(frozen=True)
class Sample:
    """One measured run of one workload in one mode."""

    workload: str
    mode: str
    repeat: int
    wall_s: float
    lower_bound_s: float
    efficiency: float
    parallelism: float
    by_lane: Mapping[str, float]
    calls: tuple[NodeCall, ...]
    barriers: tuple[tuple[int, float], ...]  # (step, time.time() when it ended)
    t0: float | None  # time.time() when the run started
    driver_pid: int
    final: Any  # the final state as JSON-able data, to compare modes
    free_cores: float | None = None  # cores others left us during the run (Linux)
    run_mode: str = ""  # the engine mode it ran in, when ``mode`` is a variant's label
    blocked: tuple[tuple[float, tuple[str, ...]], ...] = ()  # loop guard: (lag_s, nodes)

    def __post_init__(self) -> None:
        if not self.run_mode:
            object.__setattr__(self, "run_mode", self.mode)


@dataclass(frozen=True)
class Result:
    """One (workload, mode) over its repeats: each number is the median unless named."""

    workload: str
    mode: str
    wall_s: float
    wall_min_s: float
    speedup: float | None  # median sequential wall / median wall of this mode
    parallelism: float
    lower_bound_s: float
    efficiency: float
    by_lane: dict[str, float]
    runs: int
    free_cores: float | None = None  # the fewest cores others left us in any repeat

    def as_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "mode": self.mode,
            "wall_s": round(self.wall_s, 6),
            "wall_min_s": round(self.wall_min_s, 6),
            "speedup": None if self.speedup is None else round(self.speedup, 4),
            "parallelism": round(self.parallelism, 4),
            "lower_bound_s": round(self.lower_bound_s, 6),
            "efficiency": round(self.efficiency, 4),
            "by_lane": {k: round(v, 6) for k, v in self.by_lane.items()},
        }


@dataclass
class Report:
    """Everything a benchmark measured. ``mismatches`` lists workloads whose
    final state differed between modes (always a bug with the local server)."""

    machine: dict[str, Any]
    results: list[Result] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"machine": self.machine, "results": [r.as_json() for r in self.results]}


def summarise(samples: Iterable[Sample]) -> list[Result]:
    """Median (and min) per (workload, mode), in first-seen order."""
    groups: dict[tuple[str, str], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.workload, s.mode), []).append(s)
    seq = {
        w: statistics.median(x.wall_s for x in g)
        for (w, m), g in groups.items()
        if m == "sequential"
    }
    results = []
    for (workload, mode), group in groups.items():
        wall = statistics.median(s.wall_s for s in group)
        lanes = sorted({lane for s in group for lane in s.by_lane})
        results.append(
            Result(
                workload=workload,
                mode=mode,
                wall_s=wall,
                wall_min_s=min(s.wall_s for s in group),
                speedup=seq[workload] / wall if workload in seq and wall > 0 else None,
                parallelism=statistics.median(s.parallelism for s in group),
                lower_bound_s=statistics.median(s.lower_bound_s for s in group),
                efficiency=statistics.median(s.efficiency for s in group),
                by_lane={k: statistics.median(s.by_lane.get(k, 0.0) for s in group) for k in lanes},
                runs=len(group),
                free_cores=min(free)
                if (free := [s.free_cores for s in group if s.free_cores])
                else None,
            )
        )
    return results


def cores() -> int:
    """CPUs this process may use (affinity and cgroup quotas), not the pool size."""
    from loky import cpu_count

    return max(1, cpu_count())


def machine_info(**extra: Any) -> dict[str, Any]:
    """The machine and software a result was measured on."""
    versions = {}
    for dist in (
        "engine",
        "loky",
        "cloudpickle",
        "pydantic",
        "uvloop",
        "httpx",
        "aiohttp",
        "rich",
        "matplotlib",
        "langgraph",
        "dask",
        "distributed",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    return {
        "cores": cores(),
        "logical_cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "versions": versions,
        **extra,
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# -- executors and the LLM endpoint -------------------------------------------


@contextlib.asynccontextmanager
async def cpu_executor(name: ExecutorName, scheduler: str | None = None) -> AsyncIterator[Executor]:
    """The cpu lane's executor for a benchmark, started and warmed.

    ``thread`` is a control, not a backend: cpu-lane calls still cross a
    pickle boundary but share one GIL, which is what the gate must catch.
    """
    if name == "loky":
        executor = default_executor()
        await asyncio.to_thread(warm, executor)
        yield executor
    elif name == "thread":
        with ThreadPoolExecutor(cores(), thread_name_prefix="bench-cpu-on-threads") as pool:
            yield pool
    else:
        try:
            from ..backends.dask import dask_executor
        except ImportError as exc:  # the backend module itself is missing
            raise RuntimeError(f"--executor dask needs engine.backends.dask: {exc}") from exc
        kwargs: dict[str, Any] = {} if scheduler else {"threads_per_worker": 1}
        async with dask_executor(scheduler, **kwargs) as executor:
            await asyncio.to_thread(warm, executor)
            yield executor


@contextlib.asynccontextmanager
async def llm_endpoint(needed: bool, say: Progress) -> AsyncIterator[str | None]:
    """The chat-completions base URL: ``ENGINE_LLM_BASE_URL`` if set, else a local server.

    One call is made before anything is timed: the first call in a process
    imports the HTTP stack and builds its caches on the event loop (~70 ms),
    which the warm-up run would otherwise pay, and the loop guard report.
    """
    if not needed:
        yield None
        return
    from workloads.llm import LLMServer, chat_once

    external = os.environ.get("ENGINE_LLM_BASE_URL")
    if external:
        say(f"API calls go to {external} (ENGINE_LLM_BASE_URL)")
        await chat_once(external, "ping", max_tokens=1)
        yield external
        return
    # Its own thread and loop: the "remote" API must not wait on the loop
    # under test (sequential mode runs cpu nodes on that loop).
    server = LLMServer.start_in_thread()
    try:
        say(f"local LLM server at {server.base_url}")
        await chat_once(server.base_url, "ping", max_tokens=1, latency_s=0.0)
        yield server.base_url
    finally:
        await asyncio.to_thread(server.stop)


@dataclass(frozen=True)
class Calibrations:
    """What one unit of each kind of CPU work costs here (None: not needed by this run)."""

    genai: Any = None
    gil_release: Any = None
    snippets: Any = None

    def setup(self, base_url: str | None, scale: float) -> Any:
        """What every workload builder takes (``workloads.graphs.Setup``), from these."""
        from workloads.graphs import Setup

        return Setup(
            base_url=base_url,
            cal=self.genai,
            scale=scale,
            gil_cal=self.gil_release,
            small_cal=self.snippets,
        )


async def calibrations(needs: Iterable[str], say: Progress) -> Calibrations:
    """Measure, here and now, what one unit of CPU work costs (printed, never assumed).

    In a thread: the event loop stays free (a local LLM server may share it).
    Each is the fastest of several runs (``workloads.genai.calibrate_units``).
    """
    from workloads import genai

    needs = set(needs) | {"genai"}
    found: dict[str, Any] = {}
    for kind, fn in (
        ("genai", genai.calibrate),
        ("snippets", genai.calibrate_snippets),
        ("gil_release", None),
    ):
        if kind not in needs:
            continue
        if fn is None:
            from workloads import gil_release

            fn = gil_release.calibrate
        cal = await asyncio.to_thread(fn)
        found[kind] = cal
        setup = f" (+{cal.fixed_ms:.1f} ms set-up per call)" if cal.fixed_ms >= 0.05 else ""
        say(
            f"calibrated {cal.workload}: {cal.ms_per_unit:.4g} ms per unit{setup}, "
            "measured on this machine (fastest of "
            f"{cal.samples} runs)"
        )
    return Calibrations(**found)


# -- running one sample ---------------------------------------------------------


async def run_engine(
    workload: str,
    mode: str,
    app: Any,
    state: Any,
    executor: Executor | None,
    repeat: int = 0,
    *,
    label: str | None = None,
    n_cores: float | None = None,
) -> Sample:
    """One engine run, timed around ``arun``; barriers from its step events.

    ``label`` names the row when it is not the mode (a variant);
    ``n_cores`` is what free cores are counted against (0: not measurable).
    """
    barriers: list[tuple[int, float]] = []
    started: list[float] = []
    blocked: list[tuple[float, tuple[str, ...]]] = []

    def sink(event: Any) -> None:
        if isinstance(event, StepFinished):
            barriers.append((event.step, event.time))
        elif isinstance(event, RunStarted):
            started.append(event.time)
        elif isinstance(event, LoopBlocked):
            blocked.append((event.lag_s, tuple(event.nodes)))

    n = cores() if n_cores is None else n_cores
    before = snapshot() if n else None
    t = time.perf_counter()
    result = await app.arun(state, mode=mode, executor=executor, on_event=sink)
    wall = time.perf_counter() - t
    after = snapshot() if n else None
    m = result.metrics
    return Sample(
        workload=workload,
        mode=label or mode,
        repeat=repeat,
        wall_s=wall,
        lower_bound_s=m.lower_bound_s,
        efficiency=min(m.lower_bound_s / wall, 1.0) if wall > 0 else 1.0,
        parallelism=m.busy_s / wall if wall > 0 else 0.0,
        by_lane=dict(m.by_lane),
        calls=tuple(result.trace.calls),
        barriers=tuple(barriers),
        t0=started[0] if started else None,
        driver_pid=result.trace.driver_pid,
        final=result.state.model_dump(mode="json"),
        free_cores=free_cores(before, after, wall, n),
        run_mode=mode,
        blocked=tuple(blocked),
    )


async def run_peer(
    workload: str, peer: Any, repeat: int, cpu_workers: int, *, n_cores: float | None = None
) -> Sample:
    """One LangGraph run of the same work, traced by ``workloads.peers``' node wrapper."""
    peer.recorder.clear()
    n = cores() if n_cores is None else n_cores
    before = snapshot() if n else None
    t0 = time.time()
    t = time.perf_counter()
    out = await peer.graph.ainvoke(peer.input)
    wall = time.perf_counter() - t
    after = snapshot() if n else None
    calls = tuple(peer.recorder.calls)
    steps = {c.step for c in calls}
    m = compute_metrics(calls, wall, len(steps), cpu_workers)
    ends: dict[int, float] = {}
    for c in calls:
        ends[c.step] = max(ends.get(c.step, 0.0), c.end)
    return Sample(
        workload=workload,
        mode=PEER_MODE,
        repeat=repeat,
        wall_s=wall,
        lower_bound_s=m.lower_bound_s,
        efficiency=m.efficiency,
        parallelism=m.parallelism,
        by_lane=dict(m.by_lane),
        calls=calls,
        barriers=tuple(sorted(ends.items())),
        t0=t0,
        driver_pid=os.getpid(),
        final=peer.final(out),
        free_cores=free_cores(before, after, wall, n),
    )


# -- the benchmark ----------------------------------------------------------------


def _specs(names: Sequence[str]) -> dict[str, Any]:
    from workloads.graphs import WORKLOADS

    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workloads {unknown}; known: {', '.join(WORKLOADS)}")
    return {n: WORKLOADS[n] for n in names}


def _peer_builders(names: Sequence[str], say: Progress) -> dict[str, Any]:
    try:
        from workloads.peers import PEERS, langgraph_missing
    except ImportError as exc:
        say(f"--peers skipped: {exc}")
        return {}
    missing = langgraph_missing()
    if missing:
        say(f"--peers skipped: {missing}")
        return {}
    without = [n for n in names if n not in PEERS]
    if without:
        say(
            f"--peers: no LangGraph version of {', '.join(without)} (those with one: "
            f"{', '.join(PEERS)})"
        )
    return {n: PEERS[n] for n in names if n in PEERS}


def gate_cores(config: BenchConfig, executor: Executor) -> tuple[float, bool]:
    """The cores ratios are scaled to, and whether others' use of them is measurable.

    Local pools (loky, threads, a Dask LocalCluster): the CPUs this process
    may use, never the pool size, and /proc tells how many others took. A
    remote Dask cluster (``--scheduler``): its worker threads, the only count
    there is, and its neighbours cannot be seen from here.
    """
    if config.executor == "dask" and config.scheduler:
        return float(executor_workers(executor)), False
    return float(cores()), True


@dataclass(frozen=True)
class _Run:
    """One row of a workload: how to time it once."""

    label: str
    mode: str
    go: Callable[[int], Any]  # repeat -> awaitable Sample


async def run_bench(
    config: BenchConfig,
    *,
    say: Progress = print,
    tick: Callable[[str], None] | None = None,
    floors: Sequence[Floor] = (),
    policy: GatePolicy | None = None,
) -> Report:
    """Run the benchmark (or, with ``floors``, the gate) and return what it measured.

    The gate runs, per workload, only the modes its floors need, until every
    floor has ``policy.min_repeats`` usable repeats (see the module docstring).
    """

    specs = _specs(config.workloads)
    gate = None
    if floors:
        n = config.repeat
        gate = policy or GatePolicy(min_repeats=n, max_repeats=max(3 * n, n + 6))
    cals = await calibrations({n for s in specs.values() for n in s.needs}, say)
    peers = _peer_builders(config.workloads, say) if config.peers else {}
    needs_llm = any(s.uses_llm for s in specs.values())
    report = Report(machine={})
    async with (
        cpu_executor(config.executor, config.scheduler) as executor,
        llm_endpoint(needs_llm, say) as base_url,
    ):
        workers = executor_workers(executor)
        n_cores, measurable = gate_cores(config, executor)
        if not measurable:
            say(
                f"remote cluster: ratios scaled to its {n_cores:g} worker threads; "
                "others' load on it cannot be seen from here (every repeat counts as quiet)"
            )
        report.machine = machine_info(
            cpu_workers=workers,
            executor=config.executor,
            event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
            ms_per_unit=round(cals.genai.ms_per_unit, 4),
            gil_ms_per_unit=round(cals.gil_release.ms_per_unit, 4) if cals.gil_release else None,
            snippet_ms_per_unit=round(cals.snippets.ms_per_unit, 5) if cals.snippets else None,
            scale=config.scale,
            repeat=config.repeat,
            gate_cores=n_cores,
            llm=("external" if os.environ.get("ENGINE_LLM_BASE_URL") else "local")
            if needs_llm
            else None,
        )

        def setup(scale: float) -> Any:
            return cals.setup(base_url, scale)

        count = n_cores if measurable else 0.0
        started = time.monotonic()
        by_workload: dict[str, list[Sample]] = {}
        for name, spec in specs.items():
            mine = [f for f in floors if f.workload == name]
            wanted = {m for f in mine for m in f.modes()} if mine else None
            runs = await _runs_of(
                name, spec, config, setup, executor, workers, count, peers.get(name), wanted, tick
            )
            samples = by_workload.setdefault(name, [])
            r = 0
            while True:
                late = gate is not None and time.monotonic() - started > gate.deadline_s
                if gate is not None and measurable and not late:
                    # Start in a quiet moment: a neighbour's burst of work lasts
                    # seconds, and a repeat it disturbs cannot judge a speedup.
                    need = n_cores - gate.quiet_slack(n_cores)
                    await wait_free(n_cores, need, timeout_s=gate.wait_s)
                order = runs if r % 2 == 0 else runs[::-1]
                for run in order:
                    samples.append(await run.go(r))
                    if tick:
                        tick(f"{name} {run.label} #{r + 1}")
                r += 1
                if gate is None:
                    if r >= config.repeat:
                        break
                    continue
                verdicts = check(mine, _repeats(samples), n_cores, gate)
                late = time.monotonic() - started > gate.deadline_s
                if (
                    all(v.decided or (v.lost and r >= gate.min_repeats) for v in verdicts)
                    or r >= gate.max_repeats
                    or (late and r >= gate.min_repeats)
                ):
                    break
            finals = {repr(s.final) for s in samples}
            if len(finals) > 1:
                report.mismatches.append(name)
        for name in specs:
            report.samples.extend(by_workload.get(name, []))
    report.results = summarise(report.samples)
    free = [s.free_cores for s in report.samples if s.free_cores is not None]
    # How quiet the machine was: the fewest cores other processes left us in any run.
    report.machine["free_cores_min"] = round(min(free), 2) if free else None
    if floors:
        report.verdicts = check(floors, _repeats(report.samples), n_cores, gate)
    return report


async def _runs_of(
    name: str,
    spec: Any,
    config: BenchConfig,
    setup: Callable[[float], Any],
    executor: Executor,
    workers: int,
    n_cores: float,
    peer_spec: Any,
    wanted: set[str] | None,
    tick: Callable[[str], None] | None,
) -> list[_Run]:
    """The rows of one workload, built and warmed up: modes, variants, the peer.

    ``wanted`` (the gate): only these rows. The warm-up is the main graph's
    run at ``WARMUP_SCALE`` of the sizes in parallel mode (imports and caches
    in every worker); a variant that keeps its graph warms up with a full-size
    run of its own (its first run, which the profile learns from).
    """
    app, state = spec.build(setup(config.scale))
    runs: list[_Run] = []

    def engine_run(label: str, mode: str, app: Any, state: Any) -> _Run:
        async def go(r: int) -> Sample:
            return await run_engine(
                name, mode, app, state, executor, r, label=label, n_cores=n_cores
            )

        return _Run(label, mode, go)

    modes = config.modes
    if tuple(modes) == MODES and config.all_modes_default:
        modes = tuple(m for m in MODES if m in spec.default_modes)
    for mode in modes:
        if wanted is None or mode in wanted:
            runs.append(engine_run(mode, mode, app, state))
    if config.warmup:
        _, small = spec.build(setup(config.scale * WARMUP_SCALE))
        await app.arun(small, mode="parallel", executor=executor)
        if tick:
            tick(f"{name} warm-up")
    for v in spec.variants:
        if wanted is not None and v.label not in wanted:
            continue
        if wanted is None and v.mode not in config.modes:
            continue
        if v.fresh:

            def fresh(r: int, v: Any = v) -> Any:
                vapp, vstate = v.build(setup(config.scale))
                return run_engine(
                    name, v.mode, vapp, vstate, executor, r, label=v.label, n_cores=n_cores
                )

            runs.append(_Run(v.label, v.mode, fresh))
        else:
            vapp, vstate = v.build(setup(config.scale))
            await vapp.arun(vstate, mode=v.mode, executor=executor)  # its first run
            if tick:
                tick(f"{name} {v.label} warm-up")
            runs.append(engine_run(v.label, v.mode, vapp, vstate))
    if peer_spec is not None and (wanted is None or PEER_MODE in wanted):
        peer = peer_spec.build(setup(config.scale))
        if config.warmup:
            small_peer = peer_spec.build(setup(config.scale * WARMUP_SCALE))
            await run_peer(name, small_peer, -1, workers, n_cores=n_cores)
            if tick:
                tick(f"{name} {PEER_MODE} warm-up")

        async def go_peer(r: int) -> Sample:
            return await run_peer(name, peer, r, workers, n_cores=n_cores)

        runs.append(_Run(PEER_MODE, PEER_MODE, go_peer))
    return runs


def _repeats(samples: Sequence[Sample]) -> list[dict[tuple[str, str], Any]]:
    """Samples grouped by repeat, keyed by (workload, mode), for ``check``."""
    reps: dict[int, dict[tuple[str, str], Any]] = {}
    for s in samples:
        reps.setdefault(s.repeat, {})[(s.workload, s.mode)] = s
    return [reps[r] for r in sorted(reps)]


def runs_planned(
    config: BenchConfig, n_peers: int = 0, n_variants: int = 0, n_kept_variants: int = 0
) -> int:
    """How many runs ``run_bench`` makes (without the gate's extra repeats), for a
    progress bar. ``n_kept_variants``: variants that keep their graph (and warm up)."""
    per_repeat = len(config.workloads) * len(config.modes) + n_peers + n_variants
    warmups = len(config.workloads) + n_peers if config.warmup else 0
    return warmups + n_kept_variants + config.repeat * per_repeat

"""Run workloads in several modes, repeatedly, and summarise what happened.

::

    resolve the workloads (engine.bench.targets) --> open their contexts once (the
    built-ins: calibrate CPU units, start the local LLM server) --> the cpu executor
        for each workload:  build -> start the pool's workers (once) -> warm-up run
                            (excluded, smaller sizes where it scales)
            for each repeat:  one run per mode [+ variants, LangGraph peer]  -> Sample
        Samples --> Result per (workload, mode): median and min wall, ratios

Every run happens on one event loop (uvloop when installed), one after the
other: a benchmark that overlapped its own runs would measure nothing. The
modes of one workload take turns within each repeat, in alternating order
(ABBA: the first mode of one repeat is the last of the next), so a machine
that is busy for a while, or slowly gets busier, slows every mode alike
rather than one mode more.

The gate (``floors``, and ``engine.testing``): each workload runs only the
modes its floors need and repeats until every floor has enough usable
repeats (``GatePolicy``: quiet ones for a speedup), waiting a moment for a
neighbour to finish before a repeat when the last one was disturbed, within
``max_repeats`` and the gate's deadline. It never stops early because a
floor was met (``gate_runs``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from .check import Floor, GatePolicy, Verdict, check
from .cpushare import wait_free
from .machine import EXECUTORS, ExecutorName, cores, cpu_executor, machine_info
from .peers import PEER_MODE
from .samples import Result, Sample, run_engine, run_peer, summarise
from .targets import MODES, Workload, context_machine, deterministic, open_contexts, resolve

# Sizes: 1.0 is the default run (about two minutes on 2 cores, 2 repeats);
# --quick and --check scale every duration down.
QUICK_SCALE = 0.3
Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    """What to run. ``workloads`` are built-in names or ``module:attr``;
    ``repeat`` counts measured runs per (workload, mode). ``input``/``peer``
    (``--input``, ``--peer``) apply to a single ``module:attr`` target."""

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
    input: str | None = None
    peer: str | None = None

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
        if (self.input is not None or self.peer is not None) and len(self.workloads) != 1:
            raise ValueError("--input and --peer apply to one target (module:attr) at a time")

    def resolve(self) -> list[Workload]:
        """The workloads named, resolved (``engine.bench.targets.resolve``)."""
        found = [resolve(w, input=self.input, peer=self.peer) for w in self.workloads]
        names = [w.name for w in found]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"two targets are named {', '.join(twice)}; bench them one at a time")
        return found

    def wants_peers(self) -> bool:
        return self.peers or self.peer is not None


@dataclass
class Report:
    """Everything a benchmark measured. ``mismatches`` lists workloads whose final
    state differed between modes where it must not (the built-ins on the local
    server: always a bug); ``warnings`` the other things a reader must know."""

    machine: dict[str, Any]
    results: list[Result] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"machine": self.machine, "results": [r.as_json() for r in self.results]}


@dataclass(frozen=True)
class Run:
    """One row of a workload: how to time it once (``go(repeat)`` -> a Sample)."""

    label: str
    mode: str
    go: Callable[[int], Awaitable[Sample]]


def gate_cores(config: BenchConfig, workers: int) -> tuple[float, bool]:
    """The cores ratios are scaled to, and whether others' use of them is measurable.

    Local pools (loky, threads, a Dask LocalCluster): the CPUs this process
    may use, never the pool size, and /proc tells how many others took. A
    remote Dask cluster (``--scheduler``): its worker threads, the only count
    there is, and its neighbours cannot be seen from here.
    """
    if config.executor == "dask" and config.scheduler:
        return float(workers), False
    return float(cores()), True


async def run_bench(
    config: BenchConfig,
    *,
    workloads: Sequence[Workload] | None = None,
    say: Progress = print,
    tick: Callable[[str], None] | None = None,
    done: Callable[[str, Sequence[Sample]], None] | None = None,
    floors: Sequence[Floor] = (),
    policy: GatePolicy | None = None,
) -> Report:
    """Run the benchmark (or, with ``floors``, the gate) and return what it measured.

    ``workloads``: ``config.resolve()`` already done; ``tick`` is called after
    each run, ``done`` after each workload with its samples.
    """
    targets = list(workloads) if workloads is not None else config.resolve()
    gate = None
    if floors:
        n = config.repeat
        gate = policy or GatePolicy(min_repeats=n, max_repeats=max(3 * n, n + 6))
    with_peers = config.wants_peers() and _langgraph_ready(targets, say)
    report = Report(machine={})
    async with (
        open_contexts(targets, say) as contexts,
        cpu_executor(config.executor, config.scheduler) as executor,
    ):
        built = {w.name: w.build(contexts[w.name], _scale(w, config)) for w in targets}
        first_app = next(iter(built.values()))[0]
        workers = await asyncio.to_thread(first_app.warm, executor)
        n_cores, measurable = gate_cores(config, workers)
        if not measurable:
            say(
                f"remote cluster: ratios scaled to its {n_cores:g} worker threads; "
                "others' load on it cannot be seen from here (every repeat counts as quiet)"
            )
        report.machine = machine_info(
            cpu_workers=workers,
            executor=config.executor,
            event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
            scale=config.scale,
            repeat=config.repeat,
            gate_cores=n_cores,
            **context_machine(contexts),
        )
        count = n_cores if measurable else 0.0
        started = time.monotonic()
        for w in targets:
            mine = [f for f in floors if f.workload == w.name]
            wanted = {m for f in mine for m in f.modes()} if mine else None
            runs = await _runs_of(
                w,
                built[w.name],
                contexts[w.name],
                config,
                executor,
                workers,
                count,
                wanted,
                tick,
                with_peers,
            )
            if gate is not None:
                samples = await gate_runs(
                    runs,
                    mine,
                    gate,
                    n_cores,
                    measurable,
                    started=started,
                    tick=tick,
                    name=w.name,
                )
            else:
                samples = await _repeat(runs, config.repeat, tick, w.name)
            report.samples.extend(samples)
            if len({repr(s.final) for s in samples}) > 1:
                differs = [s.mode for s in samples if s.final != samples[0].final]
                if deterministic(contexts[w.name]):
                    report.mismatches.append(w.name)
                else:
                    rows = ", ".join(sorted(set(differs)))
                    report.warnings.append(
                        f"{w.name}: the final state differed between runs ({rows} vs "
                        f"{samples[0].mode}): expected if the graph calls a real model or reads "
                        "the clock; otherwise the engine's modes disagree, which is a bug to report"
                    )
            if done:
                done(w.name, samples)
    report.results = summarise(report.samples)
    free = [s.free_cores for s in report.samples if s.free_cores is not None]
    # How quiet the machine was: the fewest cores other processes left us in any run.
    report.machine["free_cores_min"] = round(min(free), 2) if free else None
    if floors:
        report.verdicts = check(floors, repeats(report.samples), n_cores, gate)
    return report


def _scale(w: Workload, config: BenchConfig) -> float:
    return config.scale if w.scalable else 1.0


def _langgraph_ready(targets: Sequence[Workload], say: Progress) -> bool:
    with_peer = [w.name for w in targets if w.peer is not None]
    without = [w.name for w in targets if w.peer is None]
    if importlib.util.find_spec("langgraph") is None:
        say("LangGraph rows skipped: they need langgraph (pip install 'engine[langgraph]')")
        return False
    if without:
        say(
            f"LangGraph rows: no LangGraph version of {', '.join(without)}"
            + (f" (those with one: {', '.join(with_peer)})" if with_peer else "")
        )
    return True


async def _repeat(
    runs: Sequence[Run], repeat: int, tick: Callable[[str], None] | None, name: str
) -> list[Sample]:
    samples = []
    for r in range(repeat):
        order = runs if r % 2 == 0 else runs[::-1]
        for run in order:
            samples.append(await run.go(r))
            if tick:
                tick(f"{name} {run.label} #{r + 1}")
    return samples


async def gate_runs(
    runs: Sequence[Run],
    floors: Sequence[Floor],
    policy: GatePolicy,
    n_cores: float,
    measurable: bool,
    *,
    started: float | None = None,
    tick: Callable[[str], None] | None = None,
    name: str = "",
) -> list[Sample]:
    """Repeat ``runs`` (ABBA) until every floor has ``policy.min_repeats`` usable
    repeats, or it lost its parallelism on every repeat's trace, or
    ``policy.max_repeats``, or past ``policy.deadline_s`` since ``started`` with
    ``min_repeats`` done. Before each repeat, wait (up to ``policy.wait_s``) for the
    cores to be free: a neighbour's burst lasts seconds, and a repeat it disturbs
    cannot judge a speedup."""
    start = time.monotonic() if started is None else started
    samples: list[Sample] = []
    r = 0
    while True:
        late = time.monotonic() - start > policy.deadline_s
        if measurable and not late:
            await wait_free(n_cores, n_cores - policy.quiet_slack(n_cores), timeout_s=policy.wait_s)
        order = runs if r % 2 == 0 else runs[::-1]
        for run in order:
            samples.append(await run.go(r))
            if tick:
                tick(f"{name} {run.label} #{r + 1}")
        r += 1
        verdicts = check(floors, repeats(samples), n_cores, policy)
        late = time.monotonic() - start > policy.deadline_s
        if (
            all(v.decided or (v.lost and r >= policy.min_repeats) for v in verdicts)
            or r >= policy.max_repeats
            or (late and r >= policy.min_repeats)
        ):
            return samples


async def _runs_of(
    w: Workload,
    built: tuple[Any, Any],
    ctx: Any,
    config: BenchConfig,
    executor: Executor,
    workers: int,
    n_cores: float,
    wanted: set[str] | None,
    tick: Callable[[str], None] | None,
    with_peers: bool,
) -> list[Run]:
    """The rows of one workload, warmed up: modes, variants, the LangGraph peer.

    ``wanted`` (the gate): only these rows. The warm-up is the main graph's
    run in parallel mode at ``warmup_scale`` of the sizes (imports and caches in
    every worker), the same input for a workload that does not scale; a variant
    that keeps its graph warms up with a full-size run of its own (its first
    run, which the profile learns from).
    """
    app, state = built
    scale = _scale(w, config)
    runs: list[Run] = []

    def engine_run(label: str, mode: str, app: Any, state: Any) -> Run:
        async def go(r: int) -> Sample:
            return await run_engine(
                w.name, mode, app, state, executor, r, label=label, n_cores=n_cores
            )

        return Run(label, mode, go)

    modes = config.modes
    if tuple(modes) == MODES and config.all_modes_default:
        modes = tuple(m for m in MODES if m in w.default_modes)
    for mode in modes:
        if wanted is None or mode in wanted:
            runs.append(engine_run(mode, mode, app, state))
    model = None
    if config.warmup:
        small = w.build(ctx, scale * w.warmup_scale)[1] if w.scalable else state
        warm = await app.arun(small, mode="parallel", executor=executor)
        model = type(warm.state)
        if tick:
            tick(f"{w.name} warm-up")
    for v in w.variants:
        if wanted is not None and v.label not in wanted:
            continue
        if wanted is None and v.mode not in config.modes:
            continue
        if v.fresh:

            def fresh(r: int, v: Any = v) -> Awaitable[Sample]:
                vapp, vstate = v.build(ctx, scale)
                return run_engine(
                    w.name, v.mode, vapp, vstate, executor, r, label=v.label, n_cores=n_cores
                )

            runs.append(Run(v.label, v.mode, fresh))
        else:
            vapp, vstate = v.build(ctx, scale)
            await vapp.arun(vstate, mode=v.mode, executor=executor)  # its first run
            if tick:
                tick(f"{w.name} {v.label} warm-up")
            runs.append(engine_run(v.label, v.mode, vapp, vstate))
    if with_peers and w.peer is not None and (wanted is None or PEER_MODE in wanted):
        peer = w.peer(ctx, scale, state)
        if config.warmup:
            small_peer = (
                w.peer(ctx, scale * w.warmup_scale, state) if w.warmup_scale != 1.0 else peer
            )
            await run_peer(w.name, small_peer, -1, workers, model=model, n_cores=n_cores)
            if tick:
                tick(f"{w.name} {PEER_MODE} warm-up")

        async def go_peer(r: int) -> Sample:
            return await run_peer(w.name, peer, r, workers, model=model, n_cores=n_cores)

        runs.append(Run(PEER_MODE, PEER_MODE, go_peer))
    return runs


def repeats(samples: Sequence[Sample]) -> list[dict[tuple[str, str], Any]]:
    """Samples grouped by repeat, keyed by (workload, mode), for ``check``."""
    reps: dict[int, dict[tuple[str, str], Any]] = {}
    for s in samples:
        reps.setdefault(s.repeat, {})[(s.workload, s.mode)] = s
    return [reps[r] for r in sorted(reps)]


def runs_planned(config: BenchConfig, workloads: Sequence[Workload], peers: bool) -> int:
    """How many runs ``run_bench`` makes (without the gate's extra repeats), for a
    progress bar: warm-ups, then every row of every repeat."""
    total = 0
    for w in workloads:
        modes = config.modes
        if tuple(modes) == MODES and config.all_modes_default:
            modes = tuple(m for m in MODES if m in w.default_modes)
        variants = [v for v in w.variants if v.mode in config.modes]
        peer = 1 if peers and w.peer is not None else 0
        rows = len(modes) + len(variants) + peer
        warmups = (1 + peer if config.warmup else 0) + sum(1 for v in variants if not v.fresh)
        total += warmups + config.repeat * rows
    return total


__all__ = [
    "QUICK_SCALE",
    "BenchConfig",
    "Report",
    "Run",
    "gate_runs",
    "repeats",
    "run_bench",
    "runs_planned",
]

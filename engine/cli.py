"""``python -m engine ...``: benchmark the workloads, run one, or run the microbenchmarks.

::

    python -m engine bench [--workload NAME ...] [--modes sequential,concurrent,parallel]
                           [--repeat N] [--json FILE] [--plot DIR] [--quick] [--check]
                           [--executor loky|dask|thread] [--scheduler ADDRESS] [--peers]
    python -m engine run WORKLOAD [--mode M] [--trace FILE.json] [--quick]
    python -m engine micro [PYTEST ARGS ...]

The benchmark needs the ``bench`` extra (rich, httpx, aiohttp, matplotlib);
``--peers`` needs ``langgraph`` and ``--executor dask`` needs ``dask``: each
says so when it is missing. This module is an application, so it configures
structlog (warnings and up) for itself; the library never does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The default run (README's main command): about two minutes on 2 cores.
# auto_lanes (issue 5's measured lanes) runs when named: --workload auto_lanes.
DEFAULT_WORKLOADS = (
    "io_fanout",
    "cpu_fanout",
    "ceo_delegation",
    "map_reduce",
    "debate",
    "gil_release",
    "seed",
    "many_small",
)
EXIT_GATE_FAILED = 1  # a ratio below its floor (or final states that differ)
EXIT_USAGE = 2
EXIT_GATE_UNMEASURED = 3  # the gate could not measure a floor: machine busy throughout


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine", description="engine: benchmarks and workloads"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser(
        "bench",
        help="benchmark the workloads in several modes",
        description="Run the workloads in sequential, concurrent and parallel modes "
        "(warm pool, one warm-up run excluded, N repeats: median and min).",
    )
    bench.add_argument(
        "--workload",
        dest="workloads",
        action="extend",
        nargs="+",
        metavar="NAME",
        help=f"workloads to run (default: all: {', '.join(DEFAULT_WORKLOADS)})",
    )
    bench.add_argument(
        "--modes",
        default=None,
        help="comma-separated modes (default: sequential,concurrent,parallel, less those a "
        "workload leaves out by default: many_small's concurrent)",
    )
    bench.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="measured runs per mode (2; --quick 1); with --check, the quiet repeats "
        "each floor needs (3)",
    )
    bench.add_argument("--json", metavar="FILE", help="write the results as JSON")
    bench.add_argument("--plot", metavar="DIR", help="write PNG charts (walls, Gantt per run)")
    bench.add_argument(
        "--quick", action="store_true", help=f"smaller sizes (x{_quick_scale()}), 1 repeat"
    )
    bench.add_argument(
        "--check",
        action="store_true",
        help="the CI speedup gate: quick sizes; exit 1 when a ratio is below its floor, "
        "3 when the machine was too busy to measure one",
    )
    bench.add_argument(
        "--floors", metavar="FILE", help="floors for --check (benchmarks/floors.toml)"
    )
    bench.add_argument(
        "--executor",
        default="loky",
        choices=("loky", "dask", "thread"),
        help="cpu-lane executor; 'thread' is a control that loses parallelism",
    )
    bench.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler (--executor dask)")
    bench.add_argument("--peers", action="store_true", help="also run the LangGraph versions")
    bench.add_argument("--scale", type=float, default=None, help=argparse.SUPPRESS)
    bench.add_argument("--list", action="store_true", help="list the workloads and exit")

    run = sub.add_parser("run", help="run one workload once and show its trace")
    run.add_argument("workload", metavar="WORKLOAD")
    run.add_argument(
        "--mode", default="parallel", choices=("sequential", "concurrent", "parallel", "langgraph")
    )
    run.add_argument("--trace", metavar="FILE.json", help="write a Chrome trace (Perfetto)")
    run.add_argument("--quick", action="store_true", help="smaller sizes")
    run.add_argument("--executor", default="loky", choices=("loky", "dask", "thread"))
    run.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler (--executor dask)")

    micro = sub.add_parser(
        "micro",
        help="pytest-benchmark microbenchmarks (benchmarks/test_micro.py)",
        description="Extra arguments go to pytest, e.g. -k dispatch.",
    )
    micro.add_argument("pytest_args", nargs=argparse.REMAINDER)
    return parser


def _quick_scale() -> float:
    from .bench.harness import QUICK_SCALE

    return QUICK_SCALE


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["micro"] and not {"-h", "--help"} & set(argv[1:2]):
        # Everything after "micro" belongs to pytest, options included.
        return _micro(argv[1:])
    args = _parser().parse_args(argv)
    # The benchmark reports blocked loops in its summary (blocked_loops), not
    # as warnings in the middle of its progress and tables.
    _quiet_logs(frozenset({"loop_blocked"}) if args.command == "bench" else frozenset())
    try:
        if args.command == "bench":
            return _bench(args)
        if args.command == "run":
            return _run(args)
        return _micro(args.pytest_args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, RuntimeError, ImportError) as exc:
        # Usage and environment problems: one clear line, no traceback.
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _quiet_logs(drop: frozenset[str] = frozenset()) -> None:
    """Warnings and up; events named in ``drop`` are summarised by the caller instead."""
    import logging

    import structlog

    def dropped(_logger: Any, _method: str, event: Any) -> Any:
        if event.get("event") in drop:
            raise structlog.DropEvent
        return event

    wrapper = structlog.make_filtering_bound_logger(logging.WARNING)
    if drop:
        processors = [dropped, *structlog.get_config()["processors"]]
        structlog.configure(wrapper_class=wrapper, processors=processors)
    else:
        structlog.configure(wrapper_class=wrapper)


def _need_bench_extra() -> None:
    missing = [m for m in ("rich", "httpx", "aiohttp") if not _importable(m)]
    if missing:
        raise ImportError(
            f"the benchmark needs {', '.join(missing)}: pip install 'engine[bench]' "
            "(or run bash scripts/bench.sh)"
        )


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# -- bench ----------------------------------------------------------------------


def _bench(args: argparse.Namespace) -> int:
    _need_bench_extra()
    from .app import run_sync
    from .bench import check as gate
    from .bench.harness import QUICK_SCALE, BenchConfig, run_bench, runs_planned
    from .bench.report import blocked_loops, comparisons, console, results_table, verdict_table
    from .bench.report import progress as progress_bar

    con = console()
    if args.list:
        from workloads.graphs import WORKLOADS

        for name, spec in WORKLOADS.items():
            default = "" if name in DEFAULT_WORKLOADS else "  (not in the default run)"
            con.print(f"{name:<16} {spec.summary}{default}", markup=False)
        return 0
    floors: list[gate.Floor] = []
    modes: tuple[str, ...]
    if args.check:
        floors = gate.load_floors(args.floors or _floors_path())
        if args.workloads:
            floors = [f for f in floors if f.workload in args.workloads]
        if not floors:
            raise ValueError("--check: no floors apply to the chosen workloads")
        workloads = tuple(dict.fromkeys(f.workload for f in floors))
        needed = {m for f in floors for m in f.modes()}
        modes = tuple(m for m in ("sequential", "concurrent", "parallel") if m in needed)
    else:
        workloads = tuple(args.workloads or DEFAULT_WORKLOADS)
        named = args.modes or "sequential,concurrent,parallel"
        modes = tuple(m.strip() for m in named.split(",") if m.strip())
    quick = args.quick or args.check
    config = BenchConfig(
        workloads=workloads,
        modes=modes or ("parallel",),
        # --check: the quiet repeats each floor needs (the gate runs up to 3x that).
        repeat=args.repeat or (3 if args.check else 1 if args.quick else 2),
        scale=args.scale or (QUICK_SCALE if quick else 1.0),
        peers=args.peers,
        executor=args.executor,
        scheduler=args.scheduler,
        all_modes_default=args.modes is None and not args.check,
    )
    from workloads.graphs import WORKLOADS

    n_peers = 0
    if args.peers:
        from workloads.peers import PEERS

        n_peers = sum(1 for w in workloads if w in PEERS)
    variants = [v for w in workloads if w in WORKLOADS for v in WORKLOADS[w].variants]
    total = (
        0
        if args.check
        else runs_planned(
            config,
            n_peers=n_peers,
            n_variants=len(variants),
            n_kept_variants=sum(1 for v in variants if not v.fresh),
        )
    )
    with progress_bar(con, total, "bench") as tick:
        report = run_sync(run_bench(config, say=con.print, tick=tick, floors=floors))
    m = report.machine
    title = (
        f"{'Gate run' if args.check else 'Benchmark'}: {m['cores']} cores ({m['cpu_model']}), "
        f"Python {m['python']}, executor {m['executor']} x{m['cpu_workers']}, "
        f"{config.repeat} repeat(s), scale {config.scale}"
    )
    con.print(results_table(report.results, title=title))
    for line in comparisons(report.results):
        con.print(line, markup=False)
    for line in blocked_loops(report.samples):
        con.print(f"loop guard: {line}", markup=False)
    if report.mismatches:
        con.print(f"[bold red]final states differ between modes:[/] {', '.join(report.mismatches)}")
    elif not args.check:
        con.print("final state identical in every mode, for every workload")
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_json(), indent=2) + "\n")
        con.print(f"wrote {args.json}")
    if args.plot:
        from .bench.plots import plot_all

        written = plot_all(report.results, _median_samples(report.samples), args.plot)
        con.print(f"wrote {len(written)} charts to {args.plot}/")
    failed = bool(report.mismatches) and m.get("llm") != "external"
    if not args.check:
        return EXIT_GATE_FAILED if failed else 0
    con.print(verdict_table(report.verdicts, m["gate_cores"]))
    code = gate.exit_code(report.verdicts)
    if code == gate.EXIT_BELOW:
        below = [v.describe() for v in report.verdicts if v.status == "below"]
        con.print("[bold red]speedup gate failed:[/] " + "; ".join(below))
    elif code == gate.EXIT_UNMEASURED:
        unmeasured = [v.describe() for v in report.verdicts if v.status == "unmeasured"]
        con.print(
            "[bold yellow]speedup gate could not measure (exit 3):[/] "
            + "; ".join(unmeasured)
            + ". Other processes kept the cores busy; this is not a pass. Rerun when "
            "the machine is quieter."
        )
    else:
        con.print("[green]speedup gate passed[/]")
    if failed:
        return EXIT_GATE_FAILED
    return {gate.EXIT_BELOW: EXIT_GATE_FAILED, gate.EXIT_UNMEASURED: EXIT_GATE_UNMEASURED}.get(
        code, 0
    )


def _floors_path() -> Path:
    """``benchmarks/floors.toml`` of the working directory, else of this checkout."""
    here = Path("benchmarks/floors.toml")
    if here.exists():
        return here
    return Path(__file__).resolve().parents[1] / "benchmarks" / "floors.toml"


def _median_samples(samples: Sequence[Any]) -> list[Any]:
    """The run whose wall time is nearest the median, per (workload, mode): what Gantt shows."""
    groups: dict[tuple[str, str], list[Any]] = {}
    for s in samples:
        groups.setdefault((s.workload, s.mode), []).append(s)
    picked = []
    for group in groups.values():
        mid = statistics.median(s.wall_s for s in group)
        picked.append(min(group, key=lambda s: abs(s.wall_s - mid)))
    return picked


# -- run ------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    _need_bench_extra()
    from .app import run_sync

    return int(run_sync(_arun_one(args)))


async def _arun_one(args: argparse.Namespace) -> int:
    from workloads.graphs import WORKLOADS, Setup

    from .bench.harness import (
        PEER_MODE,
        QUICK_SCALE,
        WARMUP_SCALE,
        calibrations,
        cpu_executor,
        llm_endpoint,
        run_engine,
        run_peer,
    )
    from .bench.report import console
    from .lanes.pool import executor_workers
    from .trace import Trace

    spec = WORKLOADS.get(args.workload)
    if spec is None:
        raise ValueError(f"unknown workload {args.workload!r}; known: {', '.join(WORKLOADS)}")
    con = console()
    cals = await calibrations(spec.needs, con.print)
    scale = QUICK_SCALE if args.quick else 1.0
    async with (
        cpu_executor(args.executor, args.scheduler) as executor,
        llm_endpoint(spec.uses_llm, con.print) as base_url,
    ):

        def setup(scale: float) -> Setup:
            built: Setup = cals.setup(base_url, scale)
            return built

        if args.mode == PEER_MODE:
            from workloads.peers import PEERS, langgraph_missing

            if args.workload not in PEERS or langgraph_missing():
                raise RuntimeError(
                    langgraph_missing()
                    or f"{args.workload} has no LangGraph version; "
                    f"those that do: {', '.join(PEERS)}"
                )
            peer = PEERS[args.workload].build(setup(scale))
            n_workers = executor_workers(executor)
            small_peer = PEERS[args.workload].build(setup(scale * WARMUP_SCALE))
            await run_peer(args.workload, small_peer, -1, n_workers)
            sample = await run_peer(args.workload, peer, 0, n_workers)
        else:
            app, state = spec.build(setup(scale))
            # A warm-up run at smaller sizes, excluded: the workers (a Dask
            # cluster's above all) import the workload and fill their caches
            # before the timed run, as in the benchmark.
            _, small = spec.build(setup(scale * WARMUP_SCALE))
            await app.arun(small, mode=args.mode, executor=executor)
            con.print(str(app.explain()), markup=False)
            sample = await run_engine(args.workload, args.mode, app, state, executor)
    con.print("final state:", markup=False)
    for line in _state_lines(sample.final):
        con.print(line, markup=False)
    by_lane = ", ".join(f"{k} {v:.3f} s" for k, v in sample.by_lane.items())
    workers = sorted({c.pid for c in sample.calls if c.pid != sample.driver_pid and c.pid > 0})
    con.print(
        f"{args.workload} {args.mode} (after a warm-up run, excluded): wall "
        f"{sample.wall_s:.3f} s, lower bound {sample.lower_bound_s:.3f} s, efficiency "
        f"{sample.efficiency:.2f}, parallelism {sample.parallelism:.2f}, steps "
        f"{len(sample.barriers)}, calls {len(sample.calls)}\n"
        f"busy by lane: {by_lane}\nworker pids: {workers or 'none (all in the driver)'}",
        markup=False,
    )
    if args.trace:
        trace = Trace(calls=sample.calls, driver_pid=sample.driver_pid)
        out = trace.to_chrome(args.trace, extra=_barrier_events(sample))
        con.print(f"wrote {out} (open it in https://ui.perfetto.dev or chrome://tracing)")
    return 0


def _state_lines(final: Any, width: int = 110) -> list[str]:
    """One line per state field, long values cut short: a glance, not a dump."""
    if not isinstance(final, dict):
        return [repr(final)[:width]]
    lines = []
    for key, value in final.items():
        text = json.dumps(value, default=str, ensure_ascii=False)
        cut = width - len(key) - 4
        lines.append(f"  {key}: {text if len(text) <= cut else text[: cut - 3] + '...'}")
    return lines


def _barrier_events(sample: Any) -> list[dict[str, Any]]:
    """Step barriers as global instant events, on the trace's own time origin."""
    if not sample.calls:
        return []
    t0 = min(c.start for c in sample.calls)
    return [
        {
            "name": f"end of step {step}",
            "ph": "i",
            "s": "g",
            "ts": (at - t0) * 1e6,
            "pid": 0,
            "tid": 0,
        }
        for step, at in sample.barriers
    ]


# -- micro ----------------------------------------------------------------------


def _micro(extra: Sequence[str]) -> int:
    """Run benchmarks/test_micro.py under pytest-benchmark (not part of the test run)."""
    path = _floors_path().parent / "test_micro.py"
    if not path.exists():
        raise RuntimeError(f"{path} not found: run this from a checkout of engine")
    if not _importable("pytest_benchmark"):
        raise ImportError("the microbenchmarks need pytest-benchmark: pip install 'engine[dev]'")
    cmd = [sys.executable, "-m", "pytest", str(path), "-p", "no:cacheprovider", "-q", *extra]
    return subprocess.call(cmd, cwd=path.parents[1], env={**os.environ})


if __name__ == "__main__":
    raise SystemExit(main())

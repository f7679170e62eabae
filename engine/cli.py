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

DEFAULT_WORKLOADS = (
    "io_fanout",
    "cpu_fanout",
    "ceo_delegation",
    "map_reduce",
    "debate",
    "gil_release",
)
EXIT_GATE_FAILED = 1
EXIT_USAGE = 2


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
        default="sequential,concurrent,parallel",
        help="comma-separated modes (default: %(default)s)",
    )
    bench.add_argument("--repeat", type=int, default=None, help="measured runs per mode (3)")
    bench.add_argument("--json", metavar="FILE", help="write the results as JSON")
    bench.add_argument("--plot", metavar="DIR", help="write PNG charts (walls, Gantt per run)")
    bench.add_argument(
        "--quick", action="store_true", help=f"smaller sizes (x{_quick_scale()}), 1 repeat"
    )
    bench.add_argument(
        "--check",
        action="store_true",
        help="the CI speedup gate: quick sizes, fail when a ratio is below its floor",
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
    _quiet_logs()
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


def _quiet_logs() -> None:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


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
    from .bench.harness import QUICK_SCALE, BenchConfig, cores, run_bench, runs_planned
    from .bench.report import console, progress, results_table, verdict_table

    con = console()
    if args.list:
        from workloads.graphs import WORKLOADS

        for name, spec in WORKLOADS.items():
            con.print(f"{name:<16} {spec.summary}", markup=False)
        return 0
    floors: list[gate.Floor] = []
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
        modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    quick = args.quick or args.check
    config = BenchConfig(
        workloads=workloads,
        modes=modes,
        # --check: at most 5 repeats, a workload stops once its floors are met.
        repeat=args.repeat or (5 if args.check else 1 if args.quick else 3),
        scale=args.scale or (QUICK_SCALE if quick else 1.0),
        peers=args.peers,
        executor=args.executor,
        scheduler=args.scheduler,
    )
    n_peers = 0
    if args.peers:
        from workloads.peers import PEERS

        n_peers = sum(1 for w in workloads if w in PEERS)
    total = runs_planned(config, n_peers=n_peers)
    with progress(con, total, "check" if args.check else "bench") as tick:
        report = run_sync(run_bench(config, say=con.print, tick=tick, floors=floors))
    m = report.machine
    title = (
        f"{'Gate run' if args.check else 'Benchmark'}: {m['cores']} cores ({m['cpu_model']}), "
        f"Python {m['python']}, executor {m['executor']} x{m['cpu_workers']}, "
        f"{config.repeat} repeat(s), scale {config.scale}"
    )
    con.print(results_table(report.results, title=title))
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
    if args.check:
        con.print(verdict_table(report.verdicts, cores()))
        below = [v for v in report.verdicts if not v.ok]
        if below:
            con.print(
                "[bold red]speedup gate failed:[/] "
                + "; ".join(
                    f"{v.floor.label} {b.ratio:.3f} < {b.threshold:.3f}"
                    if (b := v.best)
                    else f"{v.floor.label} not measured"
                    for v in below
                )
            )
            failed = True
        else:
            con.print("[green]speedup gate passed[/]")
    return EXIT_GATE_FAILED if failed else 0


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
    cal, gil_cal = await calibrations([args.workload], con.print)
    async with (
        cpu_executor(args.executor, args.scheduler) as executor,
        llm_endpoint(spec.uses_llm, con.print) as base_url,
    ):
        setup = Setup(
            base_url=base_url,
            cal=cal,
            scale=QUICK_SCALE if args.quick else 1.0,
            gil_cal=gil_cal,
        )
        if args.mode == PEER_MODE:
            from workloads.peers import PEERS, langgraph_missing

            if args.workload not in PEERS or langgraph_missing():
                raise RuntimeError(
                    langgraph_missing()
                    or f"{args.workload} has no LangGraph version; "
                    f"those that do: {', '.join(PEERS)}"
                )
            sample = await run_peer(
                args.workload, PEERS[args.workload].build(setup), 0, executor_workers(executor)
            )
        else:
            app, state = spec.build(setup)
            con.print(str(app.explain()), markup=False)
            sample = await run_engine(args.workload, args.mode, app, state, executor)
    con.print("final state:", markup=False)
    for line in _state_lines(sample.final):
        con.print(line, markup=False)
    by_lane = ", ".join(f"{k} {v:.3f} s" for k, v in sample.by_lane.items())
    workers = sorted({c.pid for c in sample.calls if c.pid != sample.driver_pid and c.pid > 0})
    con.print(
        f"{args.workload} {args.mode}: wall {sample.wall_s:.3f} s, lower bound "
        f"{sample.lower_bound_s:.3f} s, efficiency {sample.efficiency:.2f}, parallelism "
        f"{sample.parallelism:.2f}, steps {len(sample.barriers)}, calls {len(sample.calls)}\n"
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

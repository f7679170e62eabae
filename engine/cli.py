"""``engine`` / ``python -m engine``: benchmark graphs, run one, predict its scaling.

::

    engine bench [TARGET ...] [--modes ...] [--repeat N] [--quick] [--check] [--peers] ...
    engine run TARGET [--mode M] [--trace FILE.json] [--input JSON|@FILE] ...
    engine predict TRACE.json [--workers 1,2,4,8,16] [--plot FILE.png] ...
    engine micro [--rounds N] [-k NAME] [--scale] [--json FILE]
    engine micro --pytest [PYTEST ARGS ...]

A TARGET is a built-in workload (``--list``) or your own graph as
``module:attr``. This module only parses arguments; ``engine.bench.commands``
does the work. The benchmark needs the ``bench`` extra (rich, httpx,
aiohttp, matplotlib); ``--peers`` needs ``langgraph`` and ``--executor
dask`` needs ``dask``: each says so when it is missing. This module is an
application, so it configures structlog (warnings and up) for itself; the
library never does.
"""

from __future__ import annotations

import argparse
import difflib
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__

EXIT_USAGE = 2

_TARGET_HELP = (
    "a built-in workload (see --list) or your own graph as module:attr: a compiled "
    "graph, a Graph, or a function returning (app, input), imported from the working "
    "directory"
)
_INPUT_HELP = (
    "the input of your module:attr target, as JSON or @file.json (default: what its "
    "factory returns, else {}: the state's defaults)"
)


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="engine: a hybrid asyncio + process-pool execution engine for agent "
        "graphs. These commands measure graphs (the built-in workloads or your own), "
        "show one run's trace, and predict how a recorded run scales.",
    )
    parser.add_argument("--version", action="version", version=f"engine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = sub.add_parser(
        "bench",
        help="benchmark graphs in several modes (default: the built-in workloads)",
        description="Run each target in sequential, concurrent and parallel modes (warm "
        "pool, one warm-up run excluded, N repeats in alternating order: median and "
        "min). Results (bench.json, charts, one trace per row) go to results/<time>/ "
        "unless --out or --no-save says otherwise.",
    )
    bench.add_argument("targets", nargs="*", metavar="TARGET", help=_TARGET_HELP)
    bench.add_argument(
        "--workload",
        dest="workloads",
        action="extend",
        nargs="+",
        metavar="NAME",
        help="the same as naming TARGETs (kept for scripts)",
    )
    bench.add_argument("--input", metavar="JSON|@FILE", help=_INPUT_HELP)
    bench.add_argument(
        "--peer",
        metavar="MODULE:ATTR",
        help="your LangGraph version of the same app (a compiled graph, a StateGraph or "
        "a function returning (graph, input)): timed as an extra 'langgraph' row, its "
        "final state compared",
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
    bench.add_argument(
        "--out",
        metavar="DIR",
        help="write bench.json, charts and traces here (default: results/<date-time>/)",
    )
    bench.add_argument(
        "--no-save", action="store_true", help="write no results folder (tables only)"
    )
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON here")
    bench.add_argument(
        "--plot", metavar="DIR", help="also write PNG charts here (walls, a Gantt chart per row)"
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help="1 repeat, and the built-in workloads at x0.3 of their sizes (a factory that "
        "takes scale= gets 0.3)",
    )
    bench.add_argument(
        "--check",
        action="store_true",
        help="the CI speedup gate: quick sizes; exit 1 when a ratio is below its floor, "
        "3 when the machine was too busy to measure one",
    )
    bench.add_argument(
        "--floors", metavar="FILE", help="floors for --check (default benchmarks/floors.toml)"
    )
    _executor_args(bench)
    bench.add_argument(
        "--peers", action="store_true", help="also run the built-in workloads' LangGraph versions"
    )
    bench.add_argument("--scale", type=float, default=None, help=argparse.SUPPRESS)
    bench.add_argument("--list", action="store_true", help="list the built-in workloads and exit")

    run = sub.add_parser(
        "run",
        help="run one graph once and show its lanes, final state, metrics and trace",
        description="Run TARGET once (after an excluded warm-up run) and print each "
        "node's lane and why, a glance at the final state, the metrics and the worker "
        "pids; --trace writes its timeline.",
    )
    run.add_argument("target", nargs="?", metavar="TARGET", help=_TARGET_HELP)
    run.add_argument("--input", metavar="JSON|@FILE", help=_INPUT_HELP)
    run.add_argument(
        "--mode",
        default="parallel",
        choices=("sequential", "concurrent", "parallel", "langgraph"),
        help="the engine mode (default parallel); langgraph runs the LangGraph version "
        "instead (a built-in's, or yours with --peer)",
    )
    run.add_argument(
        "--peer", metavar="MODULE:ATTR", help="your LangGraph version, for --mode langgraph"
    )
    run.add_argument(
        "--trace",
        metavar="FILE.json",
        help="write the run's Chrome trace (Perfetto, chrome://tracing); 'predict' reads it too",
    )
    run.add_argument(
        "--quick", action="store_true", help="the built-in workloads at x0.3 of their sizes"
    )
    _executor_args(run)
    run.add_argument("--list", action="store_true", help="list the built-in workloads and exit")

    predict = sub.add_parser(
        "predict",
        help="predict a recorded run's wall time on more (or fewer) worker processes",
        description="Replay a recorded run's calls through the engine's scheduling "
        "policy in simulated time: predicted wall, speedup and efficiency per worker "
        "count, and the critical path that bounds it.",
    )
    predict.add_argument(
        "trace",
        metavar="TRACE.json",
        help="a trace from 'run --trace', a bench results folder's traces/, "
        "trace.to_chrome() or trace.save()",
    )
    predict.add_argument(
        "--workers",
        default="1,2,4,8,16",
        metavar="N,N,...",
        help="worker counts to predict (default 1,2,4,8,16)",
    )
    predict.add_argument(
        "--max-concurrency",
        action="append",
        metavar="LANE=N",
        help="the run's max_concurrency, e.g. cpu=4 (repeatable)",
    )
    predict.add_argument(
        "--limit", action="append", metavar="RESOURCE=N", help="the run's limits, e.g. openai=8"
    )
    predict.add_argument(
        "--uses",
        action="append",
        metavar="NODE=RESOURCE[:N]",
        help="a node's resources=..., e.g. ask=openai (repeatable)",
    )
    predict.add_argument("--plot", metavar="FILE.png", help="write a chart of the prediction")
    predict.add_argument("--json", metavar="FILE", help="write the prediction as JSON")

    micro = sub.add_parser(
        "micro",
        help="the engine's cost per node and per call as ratios to asyncio's and loky's "
        "(benchmarks/micro.py of a clone)",
        description="Each figure is timed interleaved with its reference in one process; the "
        "ratio is the result. The JSON (every round) goes to results/micro.json unless "
        "--json says where. `micro --pytest ARGS` runs the pytest-benchmark suite "
        "(benchmarks/test_micro.py) instead; the arguments after --pytest go to pytest.",
    )
    micro.add_argument("--rounds", type=int, default=7, help="rounds per figure (default 7)")
    micro.add_argument("-k", dest="only", help="only figures whose name contains this")
    micro.add_argument(
        "--scale", action="store_true", help="the scale checks (linear growth) instead"
    )
    micro.add_argument("--json", metavar="FILE", help="where to write every round's numbers")
    micro.add_argument(
        "--pytest", action="store_true", help="run benchmarks/test_micro.py under pytest"
    )
    for command in (bench, run, predict, micro):
        command.set_defaults(command_parser=command)
    return parser


def _unrecognized(command: argparse.ArgumentParser, extra: list[str]) -> None:
    """The command's usage and error for arguments it does not take, with the option
    that was probably meant (``--repeats``: did you mean ``--repeat``?)."""
    known = [o for a in command._actions for o in a.option_strings]
    hints = []
    for arg in extra:
        close = difflib.get_close_matches(arg.split("=", 1)[0], known, n=1, cutoff=0.75)
        if arg.startswith("-") and close:
            hints.append(f"{arg}: did you mean {close[0]}?")
    more = f" ({'; '.join(hints)})" if hints else ""
    command.error(f"unrecognized arguments: {' '.join(extra)}{more}")


def _executor_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--executor",
        default="loky",
        choices=("loky", "dask", "thread"),
        help="the cpu lane's executor (default loky, the engine's own pool); dask: a "
        "LocalCluster, or --scheduler's cluster; thread: a control that loses the "
        "parallelism on purpose",
    )
    parser.add_argument(
        "--scheduler", metavar="ADDRESS", help="a running Dask scheduler (--executor dask)"
    )


def main(argv: Sequence[str] | None = None, *, prog: str = "engine") -> int:
    """The ``engine`` console script (``python -m engine`` passes its own ``prog``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:2] == ["micro", "--pytest"]:
            # Everything after "--pytest" belongs to pytest, options included.
            return _micro_pytest(argv[2:])
        args, extra = _parser(prog).parse_known_args(argv)
        if extra:
            _unrecognized(args.command_parser, extra)
        # The benchmark reports blocked loops in its summary (blocked_loops), not
        # as warnings in the middle of its progress and tables.
        _quiet_logs(frozenset({"loop_blocked"}) if args.command == "bench" else frozenset())
        if args.command == "micro":
            return _micro(args)
        if args.command != "predict":
            _need_bench_extra()
        from .bench import commands

        if args.command == "bench":
            return commands.bench(args)
        if args.command == "run":
            return commands.run(args)
        return commands.predict(args)
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
    if not _importable("rich"):
        raise ImportError(
            "bench and run need rich: pip install 'engine[bench]' (or run bash scripts/bench.sh)"
        )


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _benchmarks_file(name: str) -> Any:
    from .bench.commands import floors_path

    path = floors_path().parent / name
    if not path.exists():
        raise RuntimeError(f"{path} not found: run this from a clone of engine")
    return path


def _micro(args: argparse.Namespace) -> int:
    """Run benchmarks/micro.py (the ratios to the floor) in a process of its own."""
    path = _benchmarks_file("micro.py")
    out = args.json or os.path.join("results", "micro.json")
    if os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
    cmd = [sys.executable, str(path), "--rounds", str(args.rounds), "--json", out]
    if args.only:
        cmd += ["-k", args.only]
    if args.scale:
        cmd.append("--scale")
    rc = subprocess.call(cmd, env={**os.environ})
    if rc == 0:
        print(f"every round's numbers: {out}")
    return rc


def _micro_pytest(extra: Sequence[str]) -> int:
    """Run benchmarks/test_micro.py under pytest-benchmark (not part of the test run)."""
    path = _benchmarks_file("test_micro.py")
    if not _importable("pytest_benchmark"):
        raise ImportError("the microbenchmarks need pytest-benchmark: pip install 'engine[dev]'")
    cmd = [sys.executable, "-m", "pytest", str(path), "-p", "no:cacheprovider", "-q", *extra]
    return subprocess.call(cmd, cwd=path.parents[1], env={**os.environ})


if __name__ == "__main__":
    raise SystemExit(main(prog="python -m engine"))

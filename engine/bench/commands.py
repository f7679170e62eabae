"""What ``python -m engine bench``, ``run`` and ``predict`` do, once ``engine.cli``
has parsed their arguments. Each returns the process's exit status.

Output goes to a rich console (plain text when stdout is not a terminal). A
benchmark writes its JSON, charts and traces to a results folder unless told
not to, and says where.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

EXIT_FAILED = 1  # a ratio below its floor (or final states that differ)
EXIT_UNMEASURED = 3  # the gate could not measure a floor: machine busy throughout

#: Where a benchmark's results go by default: one folder per run under this one.
RESULTS_DIR = "results"


def floors_path() -> Path:
    """``benchmarks/floors.toml`` of the working directory, else of this checkout."""
    here = Path("benchmarks/floors.toml")
    if here.exists():
        return here
    return Path(__file__).resolve().parents[2] / "benchmarks" / "floors.toml"


def list_workloads(con: Any) -> int:
    from .targets import builtin_default, builtin_workloads

    default = builtin_default()
    for name, w in builtin_workloads().items():
        extra = "" if name in default else "  (not in the default run)"
        con.print(f"{name:<16} {w.summary}{extra}", markup=False)
    con.print(
        "\nor your own graph: module:attr (a compiled graph, a Graph, or a function "
        "returning (app, input))",
        markup=False,
    )
    return 0


# -- bench ----------------------------------------------------------------------


def bench(args: argparse.Namespace) -> int:
    from .. import run_sync
    from . import check as gate
    from .harness import QUICK_SCALE, BenchConfig, run_bench, runs_planned
    from .report import (
        blocked_loops,
        busy_notes,
        comparisons,
        console,
        progress,
        results_table,
        verdict_table,
        workload_line,
    )
    from .targets import builtin_default

    con = console()
    if args.list:
        return list_workloads(con)
    named = [*(args.targets or ()), *(args.workloads or ())]
    floors: list[gate.Floor] = []
    modes: tuple[str, ...]
    if args.check:
        floors = gate.load_floors(args.floors or floors_path())
        if named:
            floors = [f for f in floors if f.workload in named]
        if not floors:
            raise ValueError("--check: no floors apply to the chosen workloads")
        workloads = tuple(dict.fromkeys(f.workload for f in floors))
        needed = {m for f in floors for m in f.modes()}
        modes = tuple(m for m in ("sequential", "concurrent", "parallel") if m in needed)
    else:
        workloads = tuple(named or builtin_default())
        chosen = args.modes or "sequential,concurrent,parallel"
        modes = tuple(m.strip() for m in chosen.split(",") if m.strip())
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
        input=args.input,
        peer=args.peer,
    )
    targets = config.resolve()
    out = _results_dir(args)
    total = 0 if args.check else runs_planned(config, targets, config.wants_peers())
    began = time.monotonic()

    def done(name: str, samples: Sequence[Any]) -> None:
        if not con.is_terminal:
            print(workload_line(name, samples, time.monotonic() - began), flush=True)

    with progress(con, total, "bench") as tick:
        report = run_sync(
            run_bench(config, workloads=targets, say=con.print, tick=tick, done=done, floors=floors)
        )
    m = report.machine
    title = (
        f"{'Gate run' if args.check else 'Benchmark'}: {m['cores']} cores ({m['cpu_model']}), "
        f"Python {m['python']}, executor {m['executor']} x{m['cpu_workers']}, "
        f"{config.repeat} repeat(s), scale {config.scale}"
    )
    cores = float(m["gate_cores"])
    con.print(results_table(report.results, title=title, width=con.width, cores=cores))
    for line in comparisons(report.results, targets):
        con.print(line, markup=False)
    for line in blocked_loops(report.samples):
        con.print(f"loop guard: {line}", markup=False)
    notes = busy_notes(report.results, cores)
    if notes:
        con.print(f"[yellow]busy machine:[/] {notes[0]}")
        for line in notes[1:]:
            con.print(line, markup=False)
    for line in report.warnings:
        con.print(f"[yellow]note:[/] {line}")
    if report.mismatches:
        con.print(f"[bold red]final states differ between modes:[/] {', '.join(report.mismatches)}")
    elif not args.check and not report.warnings:
        con.print("final state identical in every mode, for every workload")
    _write_results(con, report, args, out)
    failed = bool(report.mismatches)
    if not args.check:
        return EXIT_FAILED if failed else 0
    con.print(verdict_table(report.verdicts, m["gate_cores"]))
    code = gate.exit_code(report.verdicts)
    if code == gate.EXIT_BELOW:
        below = [v.describe() for v in report.verdicts if v.status == "below"]
        con.print("[bold red]speedup gate failed:[/] " + "; ".join(below), markup=True)
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
        return EXIT_FAILED
    return {gate.EXIT_BELOW: EXIT_FAILED, gate.EXIT_UNMEASURED: EXIT_UNMEASURED}.get(code, 0)


def _results_dir(args: argparse.Namespace) -> Path | None:
    """The folder this run's results go to: ``--out``, else a new one under
    ``results/`` (not for ``--check`` or ``--no-save``)."""
    if args.no_save:
        return None
    if args.out:
        return Path(args.out)
    if args.check:
        return None
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(RESULTS_DIR) / stamp


def _write_results(con: Any, report: Any, args: argparse.Namespace, out: Path | None) -> None:
    """bench.json, charts and one trace per row (the median run) to ``out``; ``--json``
    and ``--plot`` wherever they say. Says what it wrote, and how to use the traces."""
    from .samples import median_samples

    picked = median_samples(report.samples)
    doc = json.dumps(report.as_json(), indent=2) + "\n"
    if args.json:
        Path(args.json).write_text(doc)
        con.print(f"wrote {args.json}", markup=False)
    if args.plot:
        charts = _charts(con, report, picked, Path(args.plot))
        if charts:
            con.print(f"wrote {len(charts)} charts to {args.plot}/", markup=False)
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(doc)
    charts = _charts(con, report, picked, out)
    traces = out / "traces"
    traces.mkdir(exist_ok=True)
    written = [s.trace().to_chrome(traces / f"{s.workload}-{s.mode}.json") for s in picked]
    # Worth predicting: a parallel run whose cpu calls ran in worker processes.
    parallel = next(
        (
            path
            for path, s in zip(written, picked, strict=True)
            if s.mode == "parallel"
            and any(c.lane == "cpu" and c.pid != s.driver_pid for c in s.calls)
        ),
        None,
    )
    con.print(
        f"results in {out}/: bench.json, {len(charts)} charts"
        + (f" ({charts[0].name}, ...)" if charts else "")
        + f", {len(written)} traces in traces/ (open one in https://ui.perfetto.dev)",
        markup=False,
    )
    if parallel is not None:
        con.print(
            f"how it would scale on more cores: python -m engine predict {parallel} "
            "--workers 1,2,4,8,16",
            markup=False,
        )


def _charts(con: Any, report: Any, picked: Sequence[Any], where: Path) -> list[Path]:
    try:
        from .plots import plot_all

        return plot_all(report.results, picked, where)
    except ImportError as exc:
        con.print(f"charts skipped: {exc} (pip install 'engine[bench]')", markup=False)
        return []


# -- run ------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from .. import run_sync
    from .report import console

    con = console()
    if args.list:
        return list_workloads(con)
    if args.target is None:
        raise ValueError("run needs a TARGET: a built-in workload (--list) or module:attr")
    return int(run_sync(_arun_one(args, con)))


async def _arun_one(args: argparse.Namespace, con: Any) -> int:
    import asyncio

    from .harness import QUICK_SCALE
    from .machine import cpu_executor
    from .peers import PEER_MODE
    from .samples import run_engine, run_peer
    from .targets import open_contexts, resolve

    w = resolve(args.target, input=args.input, peer=args.peer)
    scale = (QUICK_SCALE if args.quick else 1.0) if w.scalable else 1.0
    async with (
        open_contexts([w], con.print) as contexts,
        cpu_executor(args.executor, args.scheduler) as executor,
    ):
        ctx = contexts[w.name]
        app, state = w.build(ctx, scale)
        workers = await asyncio.to_thread(app.warm, executor)
        # A warm-up run, excluded: the workers (a Dask cluster's above all) import
        # the graph's modules and fill their caches before the timed run.
        small = w.build(ctx, scale * w.warmup_scale)[1] if w.scalable else state
        warm = await app.arun(small, mode="parallel", executor=executor)
        if args.mode == PEER_MODE:
            if w.peer is None:
                raise RuntimeError(
                    f"{w.name} has no LangGraph version"
                    + (" (name yours with --peer module:attr)" if w.origin else "")
                )
            peer = w.peer(ctx, scale, state)
            model = type(warm.state)
            await run_peer(w.name, peer, -1, workers, model=model)
            sample = await run_peer(w.name, peer, 0, workers, model=model)
        else:
            con.print(str(app.explain()), markup=False)
            sample = await run_engine(w.name, args.mode, app, state, executor)
    con.print("final state:", markup=False)
    for line in state_lines(sample.final):
        con.print(line, markup=False)
    trace = sample.trace()
    metrics = trace.metrics()
    workers_used = sorted({c.pid for c in sample.calls if c.pid != sample.driver_pid and c.pid > 0})
    con.print(
        f"{w.name} {args.mode} (after a warm-up run, excluded): wall {sample.wall_s:.3f} s, "
        f"lower bound {sample.lower_bound_s:.3f} s, efficiency {sample.efficiency:.2f}, "
        f"parallelism {sample.parallelism:.2f}, steps {len(sample.barriers)}, calls "
        f"{len(sample.calls)}\n"
        f"CPU time of all calls: {metrics.cpu_s:.3f} s\n"
        f"{metrics.describe_lanes()}\n"
        f"worker pids: {workers_used or 'none (all in the driver)'}",
        markup=False,
    )
    if args.trace:
        out = trace.to_chrome(args.trace)
        con.print(
            f"wrote {out} (open it in https://ui.perfetto.dev or chrome://tracing; "
            f"python -m engine predict {out} --workers 1,2,4,8,16 predicts it on more workers)",
            markup=False,
        )
    return 0


def state_lines(final: Any, width: int = 110) -> list[str]:
    """One line per state field, long values cut short: a glance, not a dump."""
    if not isinstance(final, dict):
        return [repr(final)[:width]]
    lines = []
    for key, value in final.items():
        text = json.dumps(value, default=str, ensure_ascii=False)
        cut = width - len(key) - 4
        lines.append(f"  {key}: {text if len(text) <= cut else text[: cut - 3] + '...'}")
    return lines


# -- predict ----------------------------------------------------------------------


def predict(args: argparse.Namespace) -> int:
    from .. import Trace
    from ..predict import scaling, table

    trace = Trace.load(args.trace)
    workers = _ints(args.workers, "--workers")
    budgets: dict[str, Any] = {
        "max_concurrency": _pairs(args.max_concurrency, "--max-concurrency") or None,
        "limits": _pairs(args.limit, "--limit") or None,
        "resources": _uses(args.uses) or None,
    }
    predictions = scaling(trace, workers, **budgets)
    print(f"{args.trace}: {len(trace.calls)} calls in {len({c.step for c in trace.calls})} steps")
    print(table(predictions))
    if args.json:
        doc = {
            "trace": str(args.trace),
            "predictions": [
                {
                    "workers": p.workers,
                    "wall_s": round(p.wall_s, 6),
                    "speedup": round(p.speedup, 4),
                    "efficiency": round(p.efficiency, 4),
                }
                for p in predictions
            ],
            "bound_s": round(predictions[0].bound_s, 6),
            "saturation": predictions[0].saturation,
            "critical_path": [
                {"step": leg.step, "node": leg.node, "lane": leg.lane, "seconds": leg.seconds}
                for leg in predictions[0].critical_path
            ],
            "recorded_wall_s": predictions[0].recorded_wall_s,
            "replayed_s": predictions[0].replayed_s,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        try:
            from .plots import plot_prediction
        except ImportError as exc:
            raise ImportError(
                f"--plot needs matplotlib: pip install 'engine[bench]' ({exc})"
            ) from exc
        out = plot_prediction(predictions, args.plot, title=f"Predicted scaling: {args.trace}")
        print(f"wrote {out}")
    return 0


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(
            f"{what} {text!r}: expected comma-separated counts, e.g. 1,2,4,8"
        ) from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{what} {text!r}: expected counts >= 1, e.g. 1,2,4,8")
    return values


def _pairs(items: Sequence[str] | None, what: str) -> dict[str, int]:
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key or not value.isdigit():
            raise ValueError(f"{what} {item!r}: expected NAME=N, e.g. cpu=4")
        out[key] = int(value)
    return out


def _uses(items: Sequence[str] | None) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for item in items or ():
        node, sep, rest = item.partition("=")
        key, _, units = rest.partition(":")
        if not sep or not node or not key or (units and not units.isdigit()):
            raise ValueError(f"--uses {item!r}: expected NODE=RESOURCE[:UNITS], e.g. ask=openai")
        out.setdefault(node, {})[key] = int(units or 1)
    return out


__all__ = ["EXIT_FAILED", "EXIT_UNMEASURED", "bench", "floors_path", "predict", "run"]

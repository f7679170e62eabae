"""Terminal output of a benchmark: results table, notes in words, gate verdicts, progress.

rich is imported here only; when stdout is not a terminal the tables print as
plain text, the progress display stays off, and a line per finished workload
says how far the run got (CI logs stay readable, and alive).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .check import GatePolicy, Verdict
from .samples import Result, Sample
from .targets import Workload

#: Narrower than this, the results table keeps only the columns that tell the story.
WIDE = 130


def console(**kwargs: Any) -> Any:
    """A rich console that never wraps a printed line (only tables fit the width);
    160 columns wide when not a terminal, so CI logs keep whole table rows, unless
    ``COLUMNS`` says otherwise."""
    import os

    from rich.console import Console

    kwargs.setdefault("soft_wrap", True)
    con = Console(highlight=False, **kwargs)
    if not con.is_terminal and "width" not in kwargs and "COLUMNS" not in os.environ:
        con = Console(highlight=False, width=160, **kwargs)
    return con


def results_table(
    results: Sequence[Result],
    title: str = "Benchmark",
    width: int | None = None,
    cores: float | None = None,
) -> Any:
    """One row per (workload, mode): medians, the fastest repeat, ratios.

    "cores free" is the fewest cores other processes left us during any repeat
    of the row (Linux): below the machine's count, a neighbour slowed the row
    (``busy_notes`` says so in words). Narrower than ``WIDE`` columns, only
    workload, mode, wall, fastest, speedup, efficiency and cores free are shown;
    names are never cut.
    """
    from rich.table import Table

    wide = width is None or width >= WIDE
    table = Table(title=title, title_justify="left")
    # (key, header when wide, header when narrow or None: left out), in order.
    columns = [
        ("workload", "workload", "workload", "left"),
        ("mode", "mode", "mode", "left"),
        ("wall", "wall s (median)", "wall s", "right"),
        ("min", "min s", "min s", "right"),
        ("speedup", "speedup", "speedup", "right"),
        ("parallelism", "parallelism", None, "right"),
        ("bound", "lower bound s", None, "right"),
        ("efficiency", "efficiency", "eff.", "right"),
        ("lanes", "busy s by lane", None, "left"),
        ("free", "cores free", "free", "right"),
    ]
    shown = [(key, wide_name if wide else narrow, just) for key, wide_name, narrow, just in columns]
    shown = [(key, name, just) for key, name, just in shown if name is not None]
    for _, name, justify in shown:
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    previous = None
    for r in results:
        if previous is not None and r.workload != previous:
            table.add_section()
        previous = r.workload
        cells = {
            "workload": r.workload if r.mode == _first_mode(results, r.workload) else "",
            "mode": r.mode,
            "wall": f"{r.wall_s:.3f}",
            "min": f"{r.wall_min_s:.3f}",
            "speedup": "-" if r.speedup is None else f"{r.speedup:.2f}x",
            "parallelism": f"{r.parallelism:.2f}",
            "bound": f"{r.lower_bound_s:.3f}",
            "efficiency": _efficiency(r.efficiency),
            "lanes": "  ".join(f"{k} {v:.2f}" for k, v in r.by_lane.items()),
            "free": _free(r.free_cores, cores),
        }
        table.add_row(*(cells[key] for key, _, _ in shown))
    return table


def _free(free: float | None, cores: float | None) -> str:
    """Cores free, in yellow when a neighbour took enough to disturb the row."""
    if free is None:
        return "-"
    if cores is not None and not GatePolicy().is_quiet(free, cores):
        return f"[yellow]{free:.1f}[/yellow]"
    return f"{free:.1f}"


def _first_mode(results: Sequence[Result], workload: str) -> str:
    return next(r.mode for r in results if r.workload == workload)


def _efficiency(e: float) -> str:
    colour = "green" if e >= 0.85 else "yellow" if e >= 0.6 else "red"
    return f"[{colour}]{e:.2f}[/{colour}]"


def verdict_table(verdicts: Sequence[Verdict], cores: float) -> Any:
    """Every ratio the gate measured, the floor it was held to, and the verdict.

    A repeat reads ``ratio/floor``; for a speedup then ``[wall W x cost C]``,
    ``procs K/N`` (worker processes that ran cpu calls at once, of the N a
    parallel run reaches: ``engine.bench.check.worker_overlap``),
    the wall-time ratio and what the same work cost in the measured run over
    the baseline's (the ratio is their product: see ``engine.bench.check``),
    and ``(free)``, the cores other processes left us during the baseline's
    run and the measured one; "busy" marks a repeat that cannot judge a
    speedup. The verdict is the median usable repeat.
    """
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"Speedup gate ({cores:g} cores)", title_justify="left")
    for name, justify in (
        ("ratio", "left"),
        (escape("each repeat: ratio/floor [wall x cost] (cores free: base, run)"), "left"),
        ("median", "right"),
        ("ideal", "right"),
        ("floor rule", "left"),
        ("", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for v in verdicts:
        f = v.floor
        rule = f"{f.min:.2f}" if f.min is not None else f"{f.min_of_ideal:.2f} x ideal"
        m = v.deciding
        table.add_row(
            f.label,
            escape("  ".join(_repeat(x, f.ratio == "speedup") for x in v.measured))
            or "not measured",
            "-" if m is None else f"{m.ratio:.3f}",
            "-" if m is None or m.ideal is None else f"{m.ideal:.3f}",
            rule,
            _status(v),
        )
    return table


def _status(v: Verdict) -> str:
    n, of = len(v.usable), len(v.measured)
    if v.status == "below" and not v.decided:
        return f"[bold red]PARALLELISM LOST[/bold red] (trace; {n} quiet of {of})"
    if v.status == "below":
        return f"[bold red]BELOW FLOOR[/bold red] ({n} usable of {of})"
    if v.status == "unmeasured":
        return f"[bold yellow]NOT MEASURED[/bold yellow]: {n} quiet of {of}, {v.needed} needed"
    return f"[green]ok[/green] ({n} usable of {of})"


def _repeat(m: Any, speedup: bool) -> str:
    if m.free_cores is None:
        free = ""
    elif speedup and m.base_free_cores is not None:
        free = f" ({m.base_free_cores:.1f}, {m.free_cores:.1f})"
    else:
        free = f" ({m.free_cores:.1f})"
    busy = "" if m.quiet or not speedup else " busy"
    priced = f" [{m.raw:.2f} x {m.cost:.2f}]" if speedup and m.raw is not None else ""
    procs = f" procs {m.overlap}/{m.expected}" if m.expected else ""
    return f"{m.ratio:.3f}/{m.threshold:.3f}{priced}{free}{procs}{busy}"


def comparisons(results: Sequence[Result], workloads: Sequence[Workload]) -> list[str]:
    """Rows that are variants of a mode, against that mode, measured in the same run:
    ``auto_lanes: auto = 1.00x of parallel (hand-labelled) ...``."""
    by_key = {(r.workload, r.mode): r for r in results}
    specs = {w.name: w for w in workloads}
    lines = []
    for workload in dict.fromkeys(r.workload for r in results):
        spec = specs.get(workload)
        for v in spec.variants if spec is not None else ():
            mine, base = by_key.get((workload, v.label)), by_key.get((workload, v.mode))
            if mine is None or base is None or mine.wall_s <= 0:
                continue
            lines.append(
                f"{workload}: '{v.label}' ({v.summary}) runs at {base.wall_s / mine.wall_s:.2f}x "
                f"the speed of '{v.mode}' on the hand-labelled graph "
                f"({mine.wall_s:.3f} s vs {base.wall_s:.3f} s, medians of this run)"
            )
    return lines


def blocked_loops(samples: Sequence[Sample]) -> list[str]:
    """The loop guard's reports, one line per (workload, mode) whose loop was blocked.

    The CLI keeps the engine's ``loop_blocked`` warnings out of its output
    (the warm-up run's ones included) and summarises the timed runs' here.
    """
    groups: dict[tuple[str, str], list[tuple[float, tuple[str, ...]]]] = {}
    runs: dict[tuple[str, str], int] = {}
    for s in samples:
        key = (s.workload, s.mode)
        runs[key] = runs.get(key, 0) + 1
        if s.blocked:
            groups.setdefault(key, []).extend(s.blocked)
    lines = []
    for (workload, mode), episodes in groups.items():
        worst, nodes = max(episodes)
        # No node named: the loop's thread ran engine code (dispatching a large
        # fan-out) or waited for the GIL that cpu nodes on threads held.
        who = ", ".join(nodes) if nodes else "no node on the loop"
        lines.append(
            f"{workload} {mode}: event loop blocked {len(episodes)}x over "
            f"{runs[(workload, mode)]} run(s), worst {worst * 1000:.0f} ms ({who})"
        )
    return lines


def busy_notes(
    results: Sequence[Result], cores: float, policy: GatePolicy | None = None
) -> list[str]:
    """In words: the workloads with rows measured while other processes took some of the
    cores, what that does to their numbers, and what to do (nothing when all ran quiet)."""
    policy = policy or GatePolicy()
    by_workload: dict[str, list[Result]] = {}
    for r in results:
        if not policy.is_quiet(r.free_cores, cores):
            by_workload.setdefault(r.workload, []).append(r)
    if not by_workload:
        return []
    lines = [
        "some rows ran while other processes used the cores (cores they took, per mode): "
        "a busy run in a mode lowers that mode's speedup and a busy sequential run raises "
        "every speedup of its workload, so these rows measure the machine's load as much "
        "as the engine"
    ]
    for workload, rows in by_workload.items():
        taken = ", ".join(f"{r.mode} {cores - (r.free_cores or 0.0):.1f}" for r in rows)
        lines.append(f"  {workload}: {taken} of {cores:g}")
    lines.append(
        "rerun when the machine is quieter (see 'uptime'), or use 'python -m engine bench "
        "--check', which times speedups only on quiet repeats and says when it cannot"
    )
    return lines


def workload_line(name: str, samples: Sequence[Sample], elapsed_s: float) -> str:
    """One log line for a finished workload (stdout not a terminal: no progress bar)."""
    walls: dict[str, list[float]] = {}
    for s in samples:
        walls.setdefault(s.mode, []).append(s.wall_s)
    parts = [f"{mode} {sorted(w)[len(w) // 2]:.3f} s" for mode, w in walls.items()]
    return f"[{elapsed_s:5.0f} s] {name}: {', '.join(parts)} ({len(samples)} runs)"


@contextlib.contextmanager
def progress(con: Any, total: int, label: str) -> Iterator[Callable[[str], None]]:
    """A progress bar on a terminal; a no-op elsewhere. Yields ``tick(description)``."""
    if not con.is_terminal or total <= 0:
        yield lambda _description: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=con,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)

        def tick(description: str) -> None:
            bar.update(task, advance=1, description=f"{label}: {description}")

        yield tick

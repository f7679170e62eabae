"""Terminal output of a benchmark: results table, gate verdicts, progress.

rich is imported here only; when stdout is not a terminal the tables print as
plain text and the progress display stays off (CI logs stay readable).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .check import Verdict
from .harness import Result


def console(**kwargs: Any) -> Any:
    """A rich console; wide when not a terminal, so CI logs keep whole table rows."""
    from rich.console import Console

    con = Console(highlight=False, **kwargs)
    if not con.is_terminal and "width" not in kwargs:
        con = Console(highlight=False, width=160, **kwargs)
    return con


def results_table(results: Sequence[Result], title: str = "Benchmark") -> Any:
    """One row per (workload, mode): medians, the fastest repeat, ratios.

    "cores free" is the fewest cores other processes left us during any repeat
    of the row (Linux): below the machine's count, a neighbour slowed the row.
    """
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name, justify in (
        ("workload", "left"),
        ("mode", "left"),
        ("wall s (median)", "right"),
        ("min s", "right"),
        ("speedup", "right"),
        ("parallelism", "right"),
        ("lower bound s", "right"),
        ("efficiency", "right"),
        ("busy s by lane", "left"),
        ("cores free", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    previous = None
    for r in results:
        if previous is not None and r.workload != previous:
            table.add_section()
        previous = r.workload
        lanes = "  ".join(f"{k} {v:.2f}" for k, v in r.by_lane.items())
        table.add_row(
            r.workload if r.mode in ("sequential", _first_mode(results, r.workload)) else "",
            r.mode,
            f"{r.wall_s:.3f}",
            f"{r.wall_min_s:.3f}",
            "-" if r.speedup is None else f"{r.speedup:.2f}x",
            f"{r.parallelism:.2f}",
            f"{r.lower_bound_s:.3f}",
            _efficiency(r.efficiency),
            lanes,
            "-" if r.free_cores is None else f"{r.free_cores:.1f}",
        )
    return table


def _first_mode(results: Sequence[Result], workload: str) -> str:
    return next(r.mode for r in results if r.workload == workload)


def _efficiency(e: float) -> str:
    colour = "green" if e >= 0.85 else "yellow" if e >= 0.6 else "red"
    return f"[{colour}]{e:.2f}[/{colour}]"


def verdict_table(verdicts: Sequence[Verdict], cores: int) -> Any:
    """Every ratio the gate measured, the floor it was held to, and the verdict.

    A repeat reads ``ratio/floor``; "free" is the cores other processes left
    us during that repeat's run (the ideal, and so the floor, scale to it).
    """
    from rich.table import Table

    table = Table(title=f"Speedup gate ({cores} cores)", title_justify="left")
    for name, justify in (
        ("ratio", "left"),
        ("each repeat: measured/floor (cores free)", "left"),
        ("best", "right"),
        ("ideal", "right"),
        ("floor rule", "left"),
        ("", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for v in verdicts:
        f = v.floor
        rule = f"{f.min:.2f}" if f.min is not None else f"{f.min_of_ideal:.2f} x ideal"
        best = v.best
        table.add_row(
            f.label,
            "  ".join(_repeat(m) for m in v.measured) or "not measured",
            "-" if best is None else f"{best.ratio:.3f}",
            "-" if best is None or best.ideal is None else f"{best.ideal:.3f}",
            rule,
            _status(v, cores),
        )
    return table


def _status(v: Verdict, cores: int) -> str:
    if not v.ok:
        return "[bold red]BELOW FLOOR[/bold red]"
    if not v.conclusive:
        return "[yellow]ok, inconclusive (machine busy in every repeat)[/yellow]"
    return "[green]ok[/green]"


def _repeat(m: Any) -> str:
    free = "" if m.free_cores is None else f" ({m.free_cores:.1f}{' busy' if m.lowered else ''})"
    return f"{m.ratio:.3f}/{m.threshold:.3f}{free}"


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

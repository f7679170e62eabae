"""PNG charts of a benchmark: wall time per mode, a Gantt timeline per run, and the
predicted scaling of a recorded run.

matplotlib is imported inside the functions with the Agg backend (no
display needed, nothing global changed before a chart is asked for), so the
harness and ``import engine.bench`` work without it.

A Gantt chart has one row per place a call ran (the driver's event-loop
thread, its worker threads, each worker process), a bar per node call
coloured by lane, and a dashed line at every step barrier: a run that only
*looks* parallel shows one busy row and idle workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import NodeCall

if TYPE_CHECKING:
    from ..predict import Prediction
    from .samples import Result, Sample

LANE_COLOURS = {
    "io": "#4C72B0",
    "cpu": "#DD8452",
    "thread": "#55A868",
    "inline": "#8C8C8C",
}
MODE_COLOURS = {
    "sequential": "#8C8C8C",
    "concurrent": "#4C72B0",
    "parallel": "#DD8452",
    "langgraph": "#8172B3",
    "auto-1st": "#C44E52",
    "auto": "#55A868",
}
_OTHER_COLOURS = ("#937860", "#DA8BC3", "#CCB974", "#64B5CD")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_walls(results: Sequence[Result], path: str | Path) -> Path:
    """Grouped bars: median wall time of each mode, per workload, speedup on top."""
    plt = _pyplot()
    workloads = list(dict.fromkeys(r.workload for r in results))
    modes = list(dict.fromkeys(r.mode for r in results))
    by_key = {(r.workload, r.mode): r for r in results}
    width = 0.8 / max(1, len(modes))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.7 * len(workloads) + 2), 4.2), dpi=100)
    top = max((r.wall_s for r in results), default=1.0)
    for j, mode in enumerate(modes):
        xs, ys, mins, labels = [], [], [], []
        for i, w in enumerate(workloads):
            r = by_key.get((w, mode))
            if r is None:
                continue
            xs.append(i + (j - (len(modes) - 1) / 2) * width)
            ys.append(r.wall_s)
            mins.append(r.wall_min_s)
            labels.append(f"{r.speedup:.2f}x" if r.speedup is not None else "")
        colour = MODE_COLOURS.get(mode, _OTHER_COLOURS[j % len(_OTHER_COLOURS)])
        bars = ax.bar(xs, ys, width * 0.92, label=mode, color=colour, zorder=2)
        # The fastest repeat, as a tick inside the bar: how wide the spread was.
        ax.scatter(xs, mins, marker="_", s=120, color="black", linewidths=1.2, zorder=3)
        for bar, text in zip(bars, labels, strict=True):
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(range(len(workloads)), workloads)
    ax.set_ylabel("wall time, median (s)")
    ax.set_ylim(0, top * 1.15)
    ax.set_title(
        "Wall time per mode\n(median; label: speedup vs sequential; tick: fastest repeat)",
        fontsize=10,
    )
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.legend(ncols=len(modes), fontsize=8, loc="upper left")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


Row = tuple[str, int, int, int]  # (host, pid, thread, slot)


def _loop_threads(
    calls: Sequence[NodeCall], driver_pid: int, sequential: bool
) -> set[tuple[int, int]]:
    """The driver's event-loop thread: where io and inline calls run, and in
    sequential mode every call."""
    return {
        (c.pid, c.thread)
        for c in calls
        if c.pid == driver_pid and (sequential or c.lane in ("io", "inline"))
    }


def _rows(
    calls: Sequence[NodeCall], driver_pid: int, sequential: bool = False
) -> tuple[list[Row], dict[int, Row]]:
    """Rows of the chart, and each call's row (by position in ``calls``).

    A row is a place (host, process, thread) and a slot: calls that overlap
    on one thread (tasks interleaved on the event loop) get slots of their
    own, so no bar hides another. The driver's rows come first.
    """
    loop_threads = _loop_threads(calls, driver_pid, sequential)
    places: dict[tuple[str, int, int], list[float]] = {}  # slot -> end of its last call
    row_of: dict[int, Row] = {}
    for i in sorted(range(len(calls)), key=lambda i: (calls[i].start, calls[i].node)):
        c = calls[i]
        ends = places.setdefault((c.host, c.pid, c.thread), [])
        slot = next((k for k, end in enumerate(ends) if end <= c.start + 1e-6), len(ends))
        if slot == len(ends):
            ends.append(c.end)
        else:
            ends[slot] = c.end
        row_of[i] = (c.host, c.pid, c.thread, slot)

    def order(row: Row) -> tuple[int, int, str, int, int, int]:
        host, pid, thread, slot = row
        loop = 0 if (pid, thread) in loop_threads else 1
        return (0 if pid == driver_pid else 1, loop, host, pid, thread, slot)

    return sorted(set(row_of.values()), key=order), row_of


def _row_label(row: Row, driver_pid: int, loop_threads: set[tuple[int, int]]) -> str:
    host, pid, thread, slot = row
    if pid == driver_pid:
        name = "driver: event loop" if (pid, thread) in loop_threads else f"driver: thread {thread}"
        return name if slot == 0 else f"{name.split(': ')[1]}, task {slot + 1}"
    if pid < 0:
        return "lost (no worker record)"
    where = host if host.startswith(("tcp://", "tls://", "inproc://")) else f"pid {pid}"
    return f"worker {where}" + ("" if slot == 0 else f", task {slot + 1}")


def plot_gantt(sample: Sample, path: str | Path, *, xmax: float | None = None) -> Path:
    """One run as a timeline: rows are processes/threads, bars are calls, bands are steps."""
    plt = _pyplot()
    calls = list(sample.calls)
    t0 = sample.t0 if sample.t0 is not None else min((c.start for c in calls), default=0.0)
    rows, row_of = _rows(calls, sample.driver_pid, sample.run_mode == "sequential")
    index = {row: i for i, row in enumerate(rows)}
    loop = _loop_threads(calls, sample.driver_pid, sample.run_mode == "sequential")
    span = xmax or max([sample.wall_s, *((c.end - t0) for c in calls)], default=1.0)
    fig, ax = plt.subplots(figsize=(10, 1.9 + 0.34 * max(1, len(rows))), dpi=100)
    # Steps as alternating bands, barriers as dashed lines: a step ends when
    # its slowest call does, and nothing of the next step starts before.
    previous = 0.0
    for k, (step, at) in enumerate(sample.barriers):
        x = at - t0
        if k % 2 == 0:
            ax.axvspan(previous, x, color="#000000", alpha=0.045, lw=0, zorder=0)
        ax.axvline(x, color="black", linestyle="--", linewidth=0.8, alpha=0.6, zorder=1)
        if x - previous > span * 0.035:
            ax.text(
                (previous + x) / 2,
                1.005,
                f"step {step}",
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=7,
                alpha=0.8,
            )
        previous = x
    # One artist per (row, lane, ok) rather than per call: a fan-out of
    # thousands of calls draws in a second instead of minutes. White edges
    # separate bars only where there are few enough to see them.
    groups: dict[tuple[int, str, bool], list[tuple[float, float]]] = {}
    last_end: dict[Row, float] = {}
    for i, c in enumerate(calls):
        last_end[row_of[i]] = max(last_end.get(row_of[i], 0.0), c.end)
    labels: list[tuple[Any, float, float, bool]] = []
    min_label = span * 0.02  # narrower bars can hold no name at this chart's width
    for i, c in enumerate(calls):
        y = index[row_of[i]]
        left, width = c.start - t0, max(c.wall_s, span * 0.002)
        groups.setdefault((y, c.lane, c.ok), []).append((left, width))
        last = c.end >= last_end[row_of[i]]
        if width < min_label and not last:
            continue
        name = c.node if c.index < 0 else f"{c.node}[{c.index}]"
        text = ax.text(
            left + width / 2, y, name, ha="center", va="center", fontsize=7, color="white", zorder=3
        )
        labels.append((text, left, width, last))
    for (y, lane, ok), spans in groups.items():
        ax.broken_barh(
            spans,
            (y - 0.35, 0.7),
            facecolors=LANE_COLOURS.get(lane, "#937860"),
            edgecolor="white",
            linewidth=0.6 if len(spans) <= 200 else 0.0,
            alpha=1.0 if ok else 0.4,
            zorder=2,
        )
    ax.set_yticks(range(len(rows)), [_row_label(r, sample.driver_pid, loop) for r in rows])
    ax.tick_params(axis="y", labelsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(0, span * 1.02)
    ax.set_xlabel("seconds since the run started", fontsize=8, loc="right")
    ax.set_title(
        f"{sample.workload}, {sample.mode}: wall {sample.wall_s:.2f} s, lower bound "
        f"{sample.lower_bound_s:.2f} s, efficiency {sample.efficiency:.0%}, "
        f"parallelism {sample.parallelism:.2f}",
        fontsize=10,
        loc="left",
        pad=14,
    )
    lanes = sorted({c.lane for c in calls})
    handles = [plt.Rectangle((0, 0), 1, 1, color=LANE_COLOURS.get(x, "#937860")) for x in lanes]
    handles.append(plt.Line2D([0], [0], color="black", linestyle="--", linewidth=0.8))
    ax.legend(
        handles,
        [f"lane {x}" for x in lanes] + ["step barrier"],
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(0.0, -0.5 / (1.9 / 0.34 + len(rows)) - 0.02),
        ncols=len(handles),
        frameon=False,
    )
    ax.grid(axis="x", alpha=0.3, zorder=0)
    fig.tight_layout()
    _drop_labels_that_overflow(fig, ax, labels)
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def _drop_labels_that_overflow(
    fig: Any, ax: Any, labels: Sequence[tuple[Any, float, float, bool]]
) -> None:
    """Fit each bar's name inside the bar as drawn: whole, cut short with '…', or, for the
    last bar of its row (nothing to its right), whole after the bar; else not at all."""
    renderer = fig.canvas.get_renderer()
    for text, left, width, last in labels:
        x0, x1 = ax.transData.transform([(left, 0.0), (left + width, 0.0)])[:, 0]
        room = x1 - x0 - 3
        name = text.get_text()
        if text.get_window_extent(renderer).width > room and last:
            text.set(x=left + width * 1.02 + 0.002 * ax.get_xlim()[1], ha="left", color="#333333")
            if text.get_window_extent(renderer).x1 > ax.get_window_extent(renderer).x1:
                text.remove()  # no room after it either, before the chart's edge
            continue
        for keep in range(len(name), 2, -1):
            text.set_text(name if keep == len(name) else name[:keep] + "…")
            if text.get_window_extent(renderer).width <= room:
                break
        else:
            text.remove()


def plot_all(
    results: Sequence[Result], samples: Sequence[Sample], outdir: str | Path
) -> list[Path]:
    """``walls.png`` plus one Gantt chart per (workload, mode), ``WORKLOAD-MODE.png``
    (e.g. ``ceo_delegation-parallel.png``), on the same time axis per workload."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_walls(results, out / "walls.png")] if results else []
    longest: dict[str, float] = {}
    for s in samples:
        longest[s.workload] = max(longest.get(s.workload, 0.0), s.wall_s)
    for s in samples:
        if s.calls:
            path = out / f"{s.workload}-{s.mode}.png"
            written.append(plot_gantt(s, path, xmax=longest[s.workload]))
    return written


def plot_prediction(predictions: Sequence[Prediction], path: str | Path, title: str = "") -> Path:
    """Predicted wall (bars) and speedup against one worker (line, with the ideal) per
    worker count; a dashed line at the wall with unlimited workers."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    xs = list(range(len(predictions)))
    walls = [p.wall_s for p in predictions]
    ax.bar(xs, walls, 0.6, color=MODE_COLOURS["parallel"], zorder=2, label="predicted wall")
    if predictions:
        ax.axhline(
            predictions[0].bound_s,
            color="black",
            linestyle="--",
            linewidth=0.8,
            label="unlimited workers (critical path)",
        )
    ax.set_xticks(xs, [str(p.workers) for p in predictions])
    ax.set_xlabel("worker processes")
    ax.set_ylabel("predicted wall time (s)")
    ax.grid(axis="y", alpha=0.3, zorder=0)
    right = ax.twinx()
    right.plot(xs, [p.speedup for p in predictions], marker="o", color="#4C72B0", label="speedup")
    right.plot(
        xs,
        [float(p.workers) for p in predictions],
        linestyle=":",
        color="#4C72B0",
        alpha=0.6,
        label="ideal speedup",
    )
    right.set_ylabel("speedup vs 1 worker")
    right.set_ylim(0, max([p.workers for p in predictions] + [1]) * 1.05)
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    ax.legend(handles, labels, fontsize=7, loc="upper right")
    ax.set_title(title or "Predicted scaling", fontsize=10, loc="left")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out

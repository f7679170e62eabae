"""How many cores were free for us while a run ran: the machine's busy time minus ours.

On a shared machine another job can take a core in the middle of a parallel
run; the run then *is* less parallel, but not through any fault of the
engine. The gate scales its ideal to the cores that were free, so it fails
when the engine loses parallelism on a quiet machine and does not fail
because a neighbour was busy::

    before = snapshot()            # /proc/stat busy ticks, ticks of our process tree
    ... the timed run ...
    after = snapshot()
    free = free_cores(before, after, wall_s, cores)   # cores - others' CPU / wall

"Ours" is this process and all its descendants (the worker pools, a thread-
hosted LLM server): whatever our own processes spend, wasted or not, is
never excused. Linux only (``/proc``); elsewhere ``snapshot`` returns None
and nothing is scaled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")


@dataclass(frozen=True)
class Snapshot:
    busy_ticks: int  # all CPUs: user+nice+system+irq+softirq+steal
    ours: dict[int, int]  # pid -> utime+stime ticks, for this process tree


def snapshot() -> Snapshot | None:
    """The machine's busy ticks and our tree's, now; None where /proc is missing."""
    try:
        with open(_PROC / "stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    ours = {pid: t for pid in _tree(os.getpid()) if (t := _ticks(pid)) is not None}
    return Snapshot(busy_ticks=user + nice + system + irq + softirq + steal, ours=ours)


def free_cores(
    before: Snapshot | None, after: Snapshot | None, wall_s: float, cores: int
) -> float | None:
    """Cores left for us between two snapshots: ``cores`` minus others' CPU per second."""
    if before is None or after is None or wall_s <= 0:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = after.busy_ticks - before.busy_ticks
    mine = sum(t - before.ours.get(pid, 0) for pid, t in after.ours.items())
    others_s = max(0, total - mine) / hz
    return max(1.0, min(float(cores), cores - others_s / wall_s))


def _tree(root: int) -> list[int]:
    """``root`` and its descendants (via /proc/PID/task/TID/children)."""
    seen, todo = [], [root]
    while todo:
        pid = todo.pop()
        seen.append(pid)
        try:
            tasks = list((_PROC / str(pid) / "task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except (OSError, ValueError):
                continue
    return seen


def _ticks(pid: int) -> int | None:
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    rest = raw.rsplit(")", 1)[-1].split()
    try:
        return int(rest[11]) + int(rest[12])  # utime, stime (fields 14 and 15)
    except (IndexError, ValueError):
        return None

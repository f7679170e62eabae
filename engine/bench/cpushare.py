"""How many cores were free for us while a run ran: the machine's busy time minus ours.

On a shared machine another job can take a core in the middle of a run: a
parallel run then *is* less parallel, and a baseline run slower, through no
fault of the engine. The gate (``engine.bench.check``) judges a speedup only
on repeats whose runs all had the cores free, and scales each ideal to the
cores that were::

    before = snapshot()            # /proc/stat busy ticks, ticks of our process tree
    ... the timed run ...
    after = snapshot()
    free = free_cores(before, after, wall_s, cores)   # cores - others' CPU / wall

"Ours" is this process and all its descendants (the worker pools, a thread-
hosted LLM server): whatever our own processes spend, wasted or not, is
never excused. The result runs from 0 (others kept every core busy) to
``cores``; it is not clamped at one core, so a baseline run that a neighbour
starved shows as such. Linux only (``/proc``); elsewhere ``snapshot``
returns None and nothing is scaled.

What it cannot see: a hypervisor giving this VM's vCPUs less than a whole
host core (unless the guest reports it as steal time, which is counted).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..procs import descendants

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
    tree = [os.getpid(), *descendants(os.getpid(), live=False)]
    ours = {pid: t for pid in tree if (t := _ticks(pid)) is not None}
    return Snapshot(busy_ticks=user + nice + system + irq + softirq + steal, ours=ours)


def free_cores(
    before: Snapshot | None, after: Snapshot | None, wall_s: float, cores: float
) -> float | None:
    """Cores left for us between two snapshots: ``cores`` minus others' CPU per second,
    between 0 and ``cores``."""
    if before is None or after is None or wall_s <= 0:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = after.busy_ticks - before.busy_ticks
    mine = sum(t - before.ours.get(pid, 0) for pid, t in after.ours.items())
    others_s = max(0, total - mine) / hz
    return max(0.0, min(float(cores), cores - others_s / wall_s))


async def wait_free(
    cores: float, need: float, *, timeout_s: float, window_s: float = 0.25
) -> float | None:
    """Wait until others leave at least ``need`` of ``cores`` free over a ``window_s``
    window, or ``timeout_s`` passes; returns the cores free in the last window
    (None where this cannot be measured, at once)."""
    deadline = time.monotonic() + timeout_s
    while True:
        before = snapshot()
        if before is None:
            return None
        t = time.perf_counter()
        await asyncio.sleep(window_s)
        free = free_cores(before, snapshot(), time.perf_counter() - t, cores)
        if free is None or free >= need or time.monotonic() >= deadline:
            return free


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

"""Trace records, metrics, and Chrome trace-event export.

Every node call (retries included) leaves one frozen ``NodeCall``, timed where
it ran: ``start``/``end`` are ``time.time()`` in the worker, so records from
several processes (and machines) line up on one clock. Metrics are derived
from the records alone, so a run proves its own parallelism.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .marks import Mark
from .marks import chrome_events as mark_events


@dataclass(frozen=True)
class NodeCall:
    """One call of one node, as measured by the process that ran it."""

    node: str
    step: int
    lane: str
    attempt: int
    pid: int
    thread: int
    host: str
    start: float
    end: float
    cpu_s: float
    bytes_in: int = 0
    bytes_out: int = 0
    ok: bool = True
    index: int = -1
    error: str | None = None
    queued_s: float = 0.0  # preempted on a run queue during the call (Linux; 0 elsewhere)
    load_s: float = 0.0  # building the node's worker_init resource, before (not in) the call

    @property
    def wall_s(self) -> float:
        return max(0.0, self.end - self.start)

    @property
    def effort_s(self) -> float:
        """The least time this call needs: CPU seconds for a cpu-lane call (its
        wall time stretches when it shares a core), wall time otherwise."""
        if self.lane == "cpu":
            return min(self.cpu_s, self.wall_s) if self.cpu_s > 0 else self.wall_s
        return self.wall_s


@dataclass(frozen=True)
class Metrics:
    """Run statistics, all derived from the trace and the wall clock.

    ``lower_bound_s`` sums, over steps, the larger of the longest call's
    effort and the step's cpu-lane CPU seconds spread over ``cpu_workers``
    (the process pool the ``parallel`` mode would use). It is the same work
    bound in every mode, so ``efficiency`` shows how close each mode came to
    what the machine allows.
    """

    wall_s: float
    busy_s: float
    cpu_s: float
    parallelism: float
    lower_bound_s: float
    efficiency: float
    steps: int
    calls: int
    cpu_workers: int
    by_lane: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def __str__(self) -> str:
        lanes = ", ".join(f"{lane} {s:.3f} s" for lane, s in self.by_lane.items()) or "none"
        return (
            f"wall {self.wall_s:.3f} s, busy {self.busy_s:.3f} s (parallelism "
            f"{self.parallelism:.2f}), cpu {self.cpu_s:.3f} s, lower bound "
            f"{self.lower_bound_s:.3f} s (efficiency {self.efficiency:.2f}); {self.steps} "
            f"step(s), {self.calls} call(s), {self.cpu_workers} cpu worker(s); busy by lane: "
            f"{lanes}"
        )

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["by_lane"] = dict(self.by_lane)
        return out


def compute_metrics(
    calls: Sequence[NodeCall], wall_s: float, steps: int, cpu_workers: int
) -> Metrics:
    busy = sum(c.wall_s for c in calls)
    cpu = sum(c.cpu_s for c in calls)
    by_lane: dict[str, float] = defaultdict(float)
    per_step: dict[int, list[NodeCall]] = defaultdict(list)
    for c in calls:
        by_lane[c.lane] += c.wall_s
        per_step[c.step].append(c)
    workers = max(1, cpu_workers)
    lower = 0.0
    for step_calls in per_step.values():
        longest = max(c.effort_s for c in step_calls)
        cpu_lane = sum(c.cpu_s for c in step_calls if c.lane == "cpu")
        lower += max(longest, cpu_lane / workers)
    wall = max(wall_s, 1e-9)
    return Metrics(
        wall_s=wall_s,
        busy_s=busy,
        cpu_s=cpu,
        parallelism=busy / wall,
        lower_bound_s=lower,
        efficiency=min(lower / wall, 1.0) if lower else 1.0,
        steps=steps,
        calls=len(calls),
        cpu_workers=workers,
        by_lane=MappingProxyType(dict(sorted(by_lane.items()))),
    )


#: Row ids for the extra rows of one thread: above any Linux pid or tid (2**22).
_EXTRA_ROW = 5_000_000


def _rows(calls: Sequence[NodeCall]) -> dict[int, tuple[int, str]]:
    """id(call) -> (Chrome tid, row name): calls of one thread that overlap get rows of
    their own.

    Slices on one Chrome row must nest; io calls on the event loop's thread
    overlap without nesting (they interleave at awaits), so each runs on
    the first row of its thread that is free when it starts: one row per
    loop task that was running at once. Rows past the first get ids above
    any real thread id.
    """
    out: dict[int, tuple[int, str]] = {}
    by_thread: dict[tuple[str, int, int], list[NodeCall]] = defaultdict(list)
    for c in calls:
        by_thread[(c.host, c.pid, c.thread)].append(c)
    extra = 0
    for (_, _, thread), group in sorted(by_thread.items()):
        ends: list[float] = []  # per row: when its last call ended
        ids: list[int] = []
        for c in sorted(group, key=lambda c: (c.start, -c.end)):
            row = next((i for i, end in enumerate(ends) if end <= c.start), None)
            if row is None:
                row = len(ends)
                ends.append(c.end)
                if row == 0:
                    ids.append(thread)
                else:
                    extra += 1
                    ids.append(_EXTRA_ROW + extra)
            ends[row] = c.end
            label = f"thread {thread}" if row == 0 else f"thread {thread}, task {row + 1}"
            out[id(c)] = (ids[row], label)
    return out


@dataclass(frozen=True)
class Trace:
    """All node calls of a run, in the order they finished, and the run's other marks.

    ``marks`` (``engine.marks``) are what is not a call: the loop-lag counter
    track, waits for resource budgets, per-worker resource loads.
    """

    calls: tuple[NodeCall, ...]
    run_id: str = ""
    driver_pid: int = field(default_factory=os.getpid)
    marks: tuple[Mark, ...] = ()

    def for_node(self, node: str) -> list[NodeCall]:
        return [c for c in self.calls if c.node == node]

    def pids(self, lane: str | None = None) -> set[int]:
        return {c.pid for c in self.calls if lane is None or c.lane == lane}

    def to_chrome_events(self) -> list[dict[str, Any]]:
        """Chrome trace-event dicts: one row per (host, process, thread), plus the marks."""
        if not self.calls and not self.marks:
            return []
        t0 = min([c.start for c in self.calls] + [m.start for m in self.marks])
        events: list[dict[str, Any]] = []
        named: set[tuple[int, int]] = set()  # (pid, tid) rows with a thread_name
        named_procs: set[int] = set()  # pids with a process_name
        pid_ids: dict[tuple[str, int], int] = {}

        def pid_of(host: str, os_pid: int) -> int:
            # Chrome needs integer pids; keep (host, pid) distinct across machines.
            pid = pid_ids.setdefault((host, os_pid), len(pid_ids) + 1)
            if pid not in named_procs:
                named_procs.add(pid)
                who = "driver" if os_pid == self.driver_pid else "worker"
                events.append(
                    {
                        "name": "process_name",
                        "ph": "M",
                        "pid": pid,
                        "tid": 0,
                        "args": {"name": f"{who} {host}:{os_pid}"},
                    }
                )
            return pid

        rows = _rows(self.calls)
        for c in sorted(self.calls, key=lambda c: (c.start, c.node)):
            pid = pid_of(c.host, c.pid)
            tid, label = rows[id(c)]
            if (pid, tid) not in named:
                named.add((pid, tid))
                events.append(
                    {
                        "name": "thread_name",
                        "ph": "M",
                        "pid": pid,
                        "tid": tid,
                        "args": {"name": label},
                    }
                )
            events.append(
                {
                    "name": c.node if c.index < 0 else f"{c.node}[{c.index}]",
                    "cat": c.lane,
                    "ph": "X",
                    "ts": (c.start - t0) * 1e6,
                    "dur": c.wall_s * 1e6,
                    "pid": pid,
                    "tid": tid,
                    "args": {
                        "step": c.step,
                        "lane": c.lane,
                        "attempt": c.attempt,
                        "thread": c.thread,
                        "cpu_s": round(c.cpu_s, 6),
                        "bytes_in": c.bytes_in,
                        "bytes_out": c.bytes_out,
                        "queued_s": round(c.queued_s, 6),
                        "load_s": round(c.load_s, 6),
                        "ok": c.ok,
                        "error": c.error,
                    },
                }
            )
        events.extend(mark_events(self.marks, t0=t0, pid_of=pid_of))
        return events

    def to_chrome(self, path: str | os.PathLike[str], extra: Iterable[dict[str, Any]] = ()) -> Path:
        """Write Chrome trace-event JSON that Perfetto and chrome://tracing open."""
        out = Path(path)
        doc = {"traceEvents": [*self.to_chrome_events(), *extra], "displayTimeUnit": "ms"}
        out.write_text(json.dumps(doc, indent=None))
        return out

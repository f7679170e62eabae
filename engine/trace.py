"""Trace records, metrics, Chrome trace-event export, and the trace file format.

Every node call (retries included) leaves one frozen ``NodeCall``, timed where
it ran: ``start``/``end`` are ``time.time()`` in the worker, so records from
several processes (and machines) line up on one clock. Metrics are derived
from the records alone, so a run proves its own parallelism.

A trace travels as JSON: ``trace.save(path)`` writes it, ``Trace.load(path)``
reads it back (and reads the Chrome trace ``to_chrome`` writes, which carries
the same document under its ``"engine"`` key), so a run recorded on one
machine can be replayed elsewhere (``trace.predict(workers=N)``).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .marks import Mark
from .marks import chrome_events as mark_events

if TYPE_CHECKING:
    from .predict import Prediction

#: The ``"format"`` and ``"version"`` of a saved trace (``Trace.save``).
TRACE_FORMAT = "engine.trace"
TRACE_VERSION = 1


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
    cached: bool = False  # answered from the node cache (engine.cache): the node did not run

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


def call_record(
    node: str,
    step: int,
    lane: str,
    attempt: int,
    index: int,
    pid: int,
    thread: int,
    host: str,
    start: float,
    end: float,
    cpu_s: float,
    bytes_in: int,
    bytes_out: int,
    ok: bool,
    error: str | None,
    queued_s: float,
    load_s: float,
) -> NodeCall:
    """``NodeCall(...)`` with every field given, 5-10x faster: one record per call attempt.

    A frozen dataclass's ``__init__`` sets each of its 17 fields through
    ``object.__setattr__``; a fan-out of thousands of calls builds thousands.
    The instance is the same: equal, frozen, with the same ``__dict__``.
    """
    record = object.__new__(NodeCall)
    record.__dict__.update(
        node=node, step=step, lane=lane, attempt=attempt, pid=pid, thread=thread, host=host,
        start=start, end=end, cpu_s=cpu_s, bytes_in=bytes_in, bytes_out=bytes_out, ok=ok,
        index=index, error=error, queued_s=queued_s, load_s=load_s,
    )  # fmt: skip
    return record


def chunk_records(
    node: str,
    step: int,
    lane: str,
    where: tuple[int, int, str],
    bytes_out: int,
    attempts: Iterable[int],
    indexes: Iterable[int],
    starts: Iterable[float],
    ends: Iterable[float],
    cpus: Iterable[float],
    sizes: Iterable[int],
    waits: Iterable[float],
) -> list[NodeCall]:
    """The records of a chunk's successful calls of ``node``, all run in one thread
    (``where``: pid, thread, host), from its columns: ``call_record`` for each, the
    fields they share filled in once (a chunk brings back hundreds)."""
    pid, thread, host = where
    # Each record's __dict__ is a copy of one made once in ``call_record``'s order, its
    # own fields then set in place: copying a dict is a block copy, where building
    # one of 17 keys grows its table three times.
    template = {
        "node": node, "step": step, "lane": lane, "attempt": 0, "pid": pid, "thread": thread,
        "host": host, "start": 0.0, "end": 0.0, "cpu_s": 0.0, "bytes_in": 0,
        "bytes_out": bytes_out, "ok": True, "index": -1, "error": None, "queued_s": 0.0,
        "load_s": 0.0,
    }  # fmt: skip
    new, set_dict, copy = object.__new__, object.__setattr__, template.copy
    out: list[NodeCall] = []
    for attempt, index, start, end, cpu_s, size, wait in zip(
        attempts, indexes, starts, ends, cpus, sizes, waits, strict=True
    ):
        record = new(NodeCall)
        fields = copy()
        fields["attempt"] = attempt
        fields["index"] = index
        fields["start"] = start
        fields["end"] = end
        fields["cpu_s"] = cpu_s
        fields["bytes_in"] = size
        fields["queued_s"] = wait
        set_dict(record, "__dict__", fields)
        out.append(record)
    return out


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
        return (
            f"wall {self.wall_s:.3f} s, busy {self.busy_s:.3f} s (parallelism "
            f"{self.parallelism:.2f}), CPU time {self.cpu_s:.3f} s, lower bound "
            f"{self.lower_bound_s:.3f} s (efficiency {self.efficiency:.2f}); {self.steps} "
            f"step(s), {self.calls} call(s), {self.cpu_workers} cpu worker(s); "
            f"{self.describe_lanes()}"
        )

    def describe_lanes(self) -> str:
        """Wall seconds of calls per lane, labelled so that the cpu *lane* is not read as
        CPU *time*: ``busy (call wall time) by lane: cpu lane 0.295 s, io lane 0.100 s``."""
        lanes = ", ".join(f"{lane} lane {s:.3f} s" for lane, s in self.by_lane.items())
        return f"busy (call wall time) by lane: {lanes or 'none'}"

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["by_lane"] = dict(self.by_lane)
        return out


def compute_metrics(
    calls: Sequence[NodeCall], wall_s: float, steps: int, cpu_workers: int
) -> Metrics:
    # One pass, the records' properties inlined: a run of thousands of calls
    # computes this once more after its last step.
    busy = cpu = 0.0
    by_lane: dict[str, float] = defaultdict(float)
    longest: dict[int, float] = defaultdict(float)  # step -> its longest call's effort
    cpu_lane: dict[int, float] = defaultdict(float)  # step -> its cpu calls' CPU seconds
    for c in calls:
        wall = c.end - c.start
        if wall < 0.0:
            wall = 0.0
        busy += wall
        cpu += c.cpu_s
        by_lane[c.lane] += wall
        effort = wall
        if c.lane == "cpu":
            cpu_lane[c.step] += c.cpu_s
            if c.cpu_s > 0:
                effort = min(c.cpu_s, wall)  # NodeCall.effort_s
        if effort > longest[c.step]:
            longest[c.step] = effort
    workers = max(1, cpu_workers)
    lower = sum(max(longest[step], cpu_lane[step] / workers) for step in longest)
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

    What the recorder knew of the run besides its calls, where it knew it
    (``None``/empty otherwise): ``steps``, each step's barrier as
    ``(step, time.time())``; ``started``, when the run began; ``wall_s``, what
    the caller waited; ``cpu_workers``, the process pool's size. Where they are
    missing, ``barriers()`` and ``predict()`` derive what they need from the calls.
    """

    calls: tuple[NodeCall, ...]
    run_id: str = ""
    driver_pid: int = field(default_factory=os.getpid)
    marks: tuple[Mark, ...] = ()
    steps: tuple[tuple[int, float], ...] = ()
    started: float | None = None
    wall_s: float | None = None
    cpu_workers: int | None = None

    def for_node(self, node: str) -> list[NodeCall]:
        return [c for c in self.calls if c.node == node]

    def pids(self, lane: str | None = None) -> set[int]:
        return {c.pid for c in self.calls if lane is None or c.lane == lane}

    def barriers(self) -> list[tuple[int, float]]:
        """``(step, time)`` of each step barrier, in step order: as recorded (``steps``),
        else when the step's last call ended (the merge follows within microseconds
        to milliseconds)."""
        if self.steps:
            return sorted(self.steps)
        ends: dict[int, float] = {}
        for c in self.calls:
            ends[c.step] = max(ends.get(c.step, c.end), c.end)
        return sorted(ends.items())

    def metrics(self, wall_s: float | None = None, cpu_workers: int | None = None) -> Metrics:
        """The run's metrics from these records (``compute_metrics``): ``wall_s`` and
        ``cpu_workers`` default to the recorded ones, else to the calls' span and the
        number of worker processes that ran cpu calls."""
        if wall_s is None:
            wall_s = self.wall_s if self.wall_s is not None else self.span_s()
        if cpu_workers is None:
            cpu_workers = self.cpu_workers or len(
                {
                    (c.host, c.pid)
                    for c in self.calls
                    if c.lane == "cpu" and c.pid != self.driver_pid
                }
            )
        return compute_metrics(self.calls, wall_s, len({c.step for c in self.calls}), cpu_workers)

    def span_s(self) -> float:
        """From the first call's start to the last call's end (0.0 without calls)."""
        if not self.calls:
            return 0.0
        return max(c.end for c in self.calls) - min(c.start for c in self.calls)

    def predict(
        self,
        workers: int,
        *,
        max_concurrency: Mapping[str, int] | None = None,
        limits: Mapping[str, int] | None = None,
        resources: Mapping[str, Mapping[str, int]] | None = None,
    ) -> Prediction:
        """Replay this run's calls on a process pool of ``workers`` in simulated time.

        See ``engine.predict``: each call keeps its measured duration, lane, step
        and dispatch cost; cpu-lane calls queue for the workers in the engine's
        dispatch order; steps end at their last call. ``max_concurrency``,
        ``limits`` and ``resources`` (node -> units per resource) are the run's
        budgets, when it had any.
        """
        from .predict import predict

        return predict(
            self,
            workers,
            max_concurrency=max_concurrency,
            limits=limits,
            resources=resources,
        )

    # -- Chrome trace-event export ------------------------------------------

    def to_chrome_events(self) -> list[dict[str, Any]]:
        """Chrome trace-event dicts: one row per (host, process, thread), the marks, and
        an instant at each step barrier (``"end of step N"``, category ``step``)."""
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
        events.extend(
            {
                "name": f"end of step {step}",
                "cat": "step",
                "ph": "i",
                "s": "g",  # global: a line across every row
                "ts": (at - t0) * 1e6,
                "pid": 0,
                "tid": 0,
            }
            for step, at in self.barriers()
        )
        return events

    def to_chrome(self, path: str | os.PathLike[str], extra: Iterable[dict[str, Any]] = ()) -> Path:
        """Write Chrome trace-event JSON that Perfetto and chrome://tracing open.

        The document also carries the trace itself under ``"engine"`` (viewers
        ignore it), so ``Trace.load`` and ``python -m engine predict`` read the file.
        """
        out = Path(path)
        doc = {
            "traceEvents": [*self.to_chrome_events(), *extra],
            "displayTimeUnit": "ms",
            "engine": self.to_dict(),
        }
        out.write_text(json.dumps(doc, indent=None))
        return out

    # -- the trace file ------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The trace as JSON-able data (``Trace.from_dict`` reads it back)."""
        return {
            "format": TRACE_FORMAT,
            "version": TRACE_VERSION,
            "run_id": self.run_id,
            "driver_pid": self.driver_pid,
            "started": self.started,
            "wall_s": self.wall_s,
            "cpu_workers": self.cpu_workers,
            "steps": [list(s) for s in self.steps],
            "calls": [asdict(c) for c in self.calls],
            "marks": [{**asdict(m), "args": dict(m.args)} for m in self.marks],
        }

    @classmethod
    def from_dict(cls, data: object, *, where: str = "trace") -> Trace:
        """Rebuild a trace from ``to_dict()`` output, or from a Chrome trace that
        ``to_chrome`` wrote; a ``ValueError`` says what is wrong and what to pass."""
        if isinstance(data, dict) and isinstance(data.get("engine"), dict):
            data = data["engine"]
        if not isinstance(data, dict) or data.get("format") != TRACE_FORMAT:
            raise ValueError(
                f'{where} is not an engine trace (no "format": "{TRACE_FORMAT}"); pass a '
                "file written by trace.save(path), trace.to_chrome(path) or "
                "python -m engine run TARGET --trace FILE"
            )
        if data.get("version") != TRACE_VERSION:
            raise ValueError(
                f"{where} has trace format version {data.get('version')!r}; this engine "
                f"reads version {TRACE_VERSION}"
            )
        try:
            calls = tuple(NodeCall(**c) for c in data["calls"])
            marks = tuple(
                Mark(**{**m, "args": MappingProxyType(dict(m.get("args") or {}))})
                for m in data.get("marks", ())
            )
            steps = tuple((int(s), float(t)) for s, t in data.get("steps", ()))
            return cls(
                calls=calls,
                run_id=str(data.get("run_id", "")),
                driver_pid=int(data["driver_pid"]),
                marks=marks,
                steps=steps,
                started=_opt_float(data.get("started")),
                wall_s=_opt_float(data.get("wall_s")),
                cpu_workers=None if data.get("cpu_workers") is None else int(data["cpu_workers"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{where}: a malformed engine trace ({type(exc).__name__}: {exc})"
            ) from exc

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the trace as JSON (``Trace.load(path)`` reads it back)."""
        out = Path(path)
        out.write_text(json.dumps(self.to_dict()))
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Trace:
        """Read a trace written by ``save`` or by ``to_chrome``."""
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read a trace from {p}: {exc}") from exc
        return cls.from_dict(data, where=str(p))


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)

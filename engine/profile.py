"""Measured node profiles, and the lane policy that decides from them.

Data flow (between runs, never mid-step)::

    a run's NodeCall records ----+
    watchdog blame (LoopBlocked) -+--observe_run--> Profile (EWMA per node)
    measure_dispatch(pool) ---------observe_dispatch--^        |
                                                      snapshot |  policy()
                                                               v
    classify(..., policy=MeasuredPolicy) --> LaneDecision (reason shows the numbers)
    Profile.apply_decisions(new) --> LaneChange per changed node (+ a structlog event)

A ``MeasuredPolicy`` is a frozen snapshot: decisions made from it cannot
change while a run is under way, whatever the profile learns meanwhile.
``lane="auto"`` (no declared lane) is the only thing it decides; a declared
lane is never overridden (``classify`` checks declarations first).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import cloudpickle

from .classify import LANES, LaneDecision, classify, is_coroutine_function
from .errors import EngineError
from .logs import get_logger

if TYPE_CHECKING:
    from .trace import NodeCall

log = get_logger("engine.profile")

FORMAT_VERSION = 1


class ProfileError(EngineError, ValueError):
    """A saved profile cannot be read: not JSON, a foreign format, or a bad value."""


# -- the numbers --------------------------------------------------------------


@dataclass(frozen=True)
class DispatchCost:
    """What one cpu-lane call costs on top of its work, measured on a running pool.

    ``fixed_s`` is the median round trip of a no-op call (pickle, submit, run,
    return, unpickle); ``per_byte_s`` is the extra time per payload byte.
    """

    fixed_s: float
    per_byte_s: float
    samples: int
    workers: int
    measured_at: float

    def cost(self, nbytes: float = 0.0) -> float:
        """Seconds to dispatch one call whose payload (in + out) is ``nbytes``."""
        return self.fixed_s + self.per_byte_s * max(0.0, nbytes)


@dataclass(frozen=True)
class Blame:
    """Loop-blocking evidence for one node from one run (see ``engine.watchdog``)."""

    blocked_s: float
    cpu_s: float
    reports: int
    queued_s: float = 0.0  # of blocked_s, the loop thread was preempted (not its doing)


@dataclass(frozen=True)
class NodeProfile:
    """What a node was measured to do, smoothed over calls (EWMA).

    ``wall_s`` leaves out time a call's thread spent preempted on a run queue
    when the record carries it (``queued_s``), so a busy machine does not make
    CPU work look like waiting. ``cpu_ratio`` is CPU seconds over those wall
    seconds, for calls where CPU time is attributable (not coroutines on the
    shared loop, not calls that shared the GIL with other calls: their low
    ratio could be GIL waiting, not I/O).
    ``bytes_in``/``bytes_out`` come from calls that crossed a process boundary
    (None until one has). ``blocked_s`` is the loop-blocking time per call the
    watchdog blamed on the node, and ``blocked_cpu`` the CPU share of it.
    """

    node: str
    calls: int = 0
    runs: int = 0
    failures: int = 0
    wall_s: float | None = None
    cpu_ratio: float | None = None
    bytes_in: float | None = None
    bytes_out: float | None = None
    blocked_s: float = 0.0
    blocked_cpu: float | None = None
    blocks: int = 0
    last_lane: str = ""

    @property
    def payload_bytes(self) -> float | None:
        if self.bytes_in is None and self.bytes_out is None:
            return None
        return (self.bytes_in or 0.0) + (self.bytes_out or 0.0)

    def describe(self) -> str:
        """The numbers in one line, for ``explain()`` and decision reasons."""
        if self.calls == 0:
            return "not measured yet"
        parts = [f"{self.calls} call{'s' if self.calls != 1 else ''}"]
        if self.wall_s is not None:
            parts.append(f"{fmt_seconds(self.wall_s)} per call")
        if self.cpu_ratio is not None:
            parts.append(f"cpu/wall {self.cpu_ratio:.2f}")
        if self.payload_bytes is not None:
            parts.append(f"in {fmt_bytes(self.bytes_in or 0)} out {fmt_bytes(self.bytes_out or 0)}")
        if self.blocks:
            share = f", {self.blocked_cpu:.0%} CPU" if self.blocked_cpu is not None else ""
            parts.append(f"blocked the loop {fmt_seconds(self.blocked_s)} per call{share}")
        if self.failures:
            parts.append(f"{self.failures} failed")
        return ", ".join(parts)


@dataclass(frozen=True)
class LaneChange:
    """A node whose lane changed since the decisions of the previous run."""

    node: str
    before: str
    after: str
    reason: str

    def describe(self) -> str:
        return f"{self.node}: {self.before} -> {self.after} ({self.reason})"


#: A node's wall time "moved" in a run when it changed by at least this fraction
#: and this many seconds (sub-millisecond nodes jitter by more than 10% run to run)...
MOVED_WALL = 0.10
MOVED_WALL_MIN_S = 0.001
#: ...or its cpu/wall ratio by at least this much (what its lane is decided on).
MOVED_RATIO = 0.05


@dataclass(frozen=True)
class NodeDelta:
    """How a node's numbers moved during the latest observed run."""

    node: str
    before: NodeProfile | None
    after: NodeProfile

    @property
    def moved(self) -> bool:
        """First measured, or a number a lane decision reads changed materially (wall
        time by 10% and 1 ms, cpu/wall by 0.05, new loop blocks or failures): one call
        more at the same speed is no change."""
        b, a = self.before, self.after
        if b is None or b.calls == 0:
            return True
        if a.blocks > b.blocks or a.failures > b.failures:
            return True
        if (a.wall_s is None) != (b.wall_s is None) or (a.cpu_ratio is None) != (
            b.cpu_ratio is None
        ):
            return True
        if (
            a.wall_s is not None
            and b.wall_s is not None
            and abs(a.wall_s - b.wall_s) >= max(MOVED_WALL * b.wall_s, MOVED_WALL_MIN_S)
        ):
            return True
        return (
            a.cpu_ratio is not None
            and b.cpu_ratio is not None
            and abs(a.cpu_ratio - b.cpu_ratio) >= MOVED_RATIO
        )

    def describe(self) -> str:
        b, a = self.before, self.after
        if b is None or b.calls == 0:
            return f"{self.node}: first measured: {a.describe()}"
        parts = [f"+{a.calls - b.calls} calls"]
        if a.wall_s is not None and b.wall_s is not None and a.wall_s != b.wall_s:
            parts.append(f"wall {fmt_seconds(b.wall_s)} -> {fmt_seconds(a.wall_s)}")
        if a.cpu_ratio is not None and b.cpu_ratio is not None and a.cpu_ratio != b.cpu_ratio:
            parts.append(f"cpu/wall {b.cpu_ratio:.2f} -> {a.cpu_ratio:.2f}")
        if a.blocks > b.blocks:
            parts.append(f"+{a.blocks - b.blocks} loop blocks")
        return f"{self.node}: " + ", ".join(parts)


# -- the policy ---------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """The rules of the measured policy, as numbers (see ``docs/lanes.md``)."""

    cpu_ratio: float = 0.5  # at or above: CPU-bound
    hysteresis: float = 0.1  # a node on cpu leaves it only below cpu_ratio - hysteresis
    dispatch_multiple: float = 3.0  # cpu lane only when a call is this many dispatches long
    inline_max_s: float = 0.002  # never run anything longer than this on the loop
    min_calls: int = 1  # evidence needed before the profile decides
    blocked_share: float = 0.5  # an async def that blocks the loop this much of its wall

    def __post_init__(self) -> None:
        if not 0.0 < self.cpu_ratio <= 1.0:
            raise ValueError(f"cpu_ratio must be in (0, 1], got {self.cpu_ratio}")
        if not 0.0 <= self.hysteresis < self.cpu_ratio:
            raise ValueError(f"hysteresis must be in [0, cpu_ratio), got {self.hysteresis}")
        if self.dispatch_multiple < 1.0:
            raise ValueError(f"dispatch_multiple must be >= 1, got {self.dispatch_multiple}")
        if self.min_calls < 1:
            raise ValueError(f"min_calls must be >= 1, got {self.min_calls}")


@dataclass(frozen=True)
class MeasuredPolicy:
    """A frozen snapshot of a profile that decides lanes (classify's ``ProfilePolicy``).

    It abstains (returns None) where it has no evidence, so classify falls
    back to its default; it is only asked about nodes without a declared lane.
    """

    nodes: Mapping[str, NodeProfile]
    dispatch: DispatchCost | None
    previous: Mapping[str, str] = field(default_factory=dict)  # node -> lane of the last run
    thresholds: Thresholds = field(default_factory=Thresholds)

    def decide(self, node: str, fn: Callable[..., Any]) -> LaneDecision | None:
        prof = self.nodes.get(node)
        if prof is None or prof.calls < self.thresholds.min_calls:
            return None
        if is_coroutine_function(fn):
            return self._decide_coroutine(prof)
        return self._decide_sync(prof)

    def _dispatch_s(self, prof: NodeProfile) -> tuple[float, str] | None:
        if self.dispatch is None:
            return None
        payload = prof.payload_bytes
        cost = self.dispatch.cost(payload or 0.0)
        what = f"the measured dispatch cost {fmt_seconds(cost)}"
        if payload:
            what += f", incl. {fmt_bytes(payload)} payload"
        return cost, what

    def _decide_sync(self, prof: NodeProfile) -> LaneDecision | None:
        t = self.thresholds
        wall = prof.wall_s
        if wall is None:
            return None
        seen = f"{prof.calls} call{'s' if prof.calls != 1 else ''}"
        dispatch = self._dispatch_s(prof)
        if dispatch is not None:
            cost, what = dispatch
            if wall <= cost and wall <= t.inline_max_s:
                return LaneDecision(
                    "inline",
                    f"measured {fmt_seconds(wall)} per call over {seen}, under one dispatch "
                    f"({what}): runs inline on the loop",
                    "profile",
                )
        ratio = prof.cpu_ratio
        if ratio is None:
            return None
        # Hysteresis: a node already on cpu needs clear evidence to leave it.
        bar = t.cpu_ratio - (t.hysteresis if self.previous.get(prof.node) == "cpu" else 0.0)
        if ratio >= bar:
            if dispatch is None:
                return LaneDecision(
                    "cpu",
                    f"measured CPU-bound (cpu/wall {ratio:.2f} >= {bar:.2f}, "
                    f"{fmt_seconds(wall)} per call over {seen}); dispatch cost not measured "
                    "yet: process pool",
                    "profile",
                )
            cost, what = dispatch
            times = wall / cost if cost > 0 else math.inf
            if times >= t.dispatch_multiple:
                return LaneDecision(
                    "cpu",
                    f"measured CPU-bound (cpu/wall {ratio:.2f} >= {bar:.2f}), "
                    f"{fmt_seconds(wall)} per call over {seen} = {times:.0f}x {what}: "
                    "process pool",
                    "profile",
                )
            return LaneDecision(
                "thread",
                f"measured CPU-bound (cpu/wall {ratio:.2f}) but {fmt_seconds(wall)} per call "
                f"is under {t.dispatch_multiple:g}x {what}: a worker costs more than it saves; "
                "runs on a thread",
                "profile",
            )
        return LaneDecision(
            "thread",
            f"measured mostly waiting (cpu/wall {ratio:.2f} < {bar:.2f}, "
            f"{fmt_seconds(wall)} per call over {seen}): runs on a thread",
            "profile",
        )

    def _decide_coroutine(self, prof: NodeProfile) -> LaneDecision | None:
        # An async def stays on the loop unless the watchdog caught it burning
        # CPU there: then it is sent whole to a worker's own event loop.
        t = self.thresholds
        if not prof.blocks or prof.wall_s is None or prof.blocked_cpu is None:
            return None
        share = prof.blocked_s / prof.wall_s if prof.wall_s > 0 else 0.0
        if share < t.blocked_share or prof.blocked_cpu < t.cpu_ratio:
            return None
        dispatch = self._dispatch_s(prof)
        if dispatch is not None and prof.blocked_s < t.dispatch_multiple * dispatch[0]:
            return None
        return LaneDecision(
            "cpu",
            f"async def blocked the event loop {fmt_seconds(prof.blocked_s)} per call "
            f"({min(share, 1.0):.0%} of its {fmt_seconds(prof.wall_s)}, "
            f"{prof.blocked_cpu:.0%} CPU) over {prof.blocks} report(s): runs whole on an "
            "event loop in a worker process",
            "profile",
        )


class PlanNodeLike(Protocol):
    """What ``redecide`` needs of a compiled plan node (``engine.plan.PlanNode``)."""

    @property
    def decision(self) -> LaneDecision: ...

    @property
    def spec(self) -> Any: ...


def redecide(nodes: Mapping[str, PlanNodeLike], policy: MeasuredPolicy) -> dict[str, LaneDecision]:
    """New decisions for the nodes the profile may move; declared nodes are left out.

    Only nodes without a declared lane whose last decision came from the
    coroutine rule, the profile or the default are asked again: a declared
    lane or a picklability verdict does not depend on measurements.
    """
    out: dict[str, LaneDecision] = {}
    for name, node in nodes.items():
        if node.spec.lane is not None:
            continue
        if node.decision.source not in ("coroutine", "profile", "default"):
            continue
        out[name] = classify(name, node.spec.fn, None, policy)
    return out


# -- the profile --------------------------------------------------------------


class Profile:
    """Per-node measurements of one compiled graph, across runs.

    Invariant: ``_nodes[n].calls`` never decreases; ``_before`` is the
    snapshot taken at the start of the latest ``observe_run``; ``_decisions``
    holds the lane each node ran on in the latest run whose decisions were
    applied. All access goes through ``_lock`` (runs may finish on different
    threads when ``invoke`` is used from several).
    """

    def __init__(self, *, alpha: float = 0.3, thresholds: Thresholds | None = None) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha (weight of the newest call) must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.thresholds = thresholds or Thresholds()
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeProfile] = {}
        self._before: dict[str, NodeProfile] = {}
        self._decisions: dict[str, LaneDecision] = {}
        self._changes: tuple[LaneChange, ...] = ()
        self._dispatch: DispatchCost | None = None

    def __repr__(self) -> str:
        d = f"{fmt_seconds(self._dispatch.fixed_s)}" if self._dispatch else "unmeasured"
        return f"<Profile nodes={len(self._nodes)} dispatch={d}>"

    def __contains__(self, node: object) -> bool:
        with self._lock:
            return node in self._nodes

    def __len__(self) -> int:
        with self._lock:
            return len(self._nodes)

    def get(self, node: str) -> NodeProfile | None:
        with self._lock:
            return self._nodes.get(node)

    @property
    def nodes(self) -> dict[str, NodeProfile]:
        """A copy of every node's profile."""
        with self._lock:
            return dict(self._nodes)

    @property
    def dispatch(self) -> DispatchCost | None:
        with self._lock:
            return self._dispatch

    @property
    def decisions(self) -> dict[str, LaneDecision]:
        """The decisions applied to the latest run (what "last run" means in diffs)."""
        with self._lock:
            return dict(self._decisions)

    @property
    def changes(self) -> tuple[LaneChange, ...]:
        """Lane changes found by the latest ``apply_decisions``."""
        with self._lock:
            return self._changes

    # -- learning -------------------------------------------------------

    def observe_dispatch(self, cost: DispatchCost) -> None:
        with self._lock:
            old, self._dispatch = self._dispatch, cost
        if old is None or abs(old.fixed_s - cost.fixed_s) > 0.25 * old.fixed_s:
            log.info(
                "dispatch_cost_measured",
                fixed_ms=round(cost.fixed_s * 1e3, 4),
                per_mb_ms=round(cost.per_byte_s * 1e9, 4),
                workers=cost.workers,
            )

    def observe_run(
        self,
        calls: Iterable[NodeCall],
        *,
        blamed: Mapping[str, Blame] | None = None,
        driver_pid: int | None = None,
    ) -> None:
        """Fold one run's call records (and the watchdog's blame) into the profile.

        ``driver_pid`` identifies in-process calls; one that overlapped
        another in-process call and looks like waiting may have been waiting
        for the GIL, so it counts but moves neither wall time nor the ratio.
        """
        calls = list(calls)
        pid = os.getpid() if driver_pid is None else driver_pid
        shared = _gil_shared(calls, pid)
        with self._lock:
            self._before = dict(self._nodes)
            touched: dict[str, int] = {}
            for i, c in enumerate(calls):
                prof = self._nodes.get(c.node) or NodeProfile(node=c.node)
                touched[c.node] = touched.get(c.node, 0) + 1
                self._nodes[c.node] = self._fold(prof, c, contended=i in shared)
            for node, blame in (blamed or {}).items():
                prof = self._nodes.get(node) or NodeProfile(node=node)
                per_call = blame.blocked_s / max(1, touched.get(node, 1))
                ran = blame.blocked_s - blame.queued_s  # preempted time is no evidence
                cpu_share = blame.cpu_s / ran if ran > 0 else 0.0
                self._nodes[node] = replace(
                    prof,
                    blocked_s=_ewma(prof.blocked_s if prof.blocks else None, per_call, self.alpha),
                    blocked_cpu=_ewma(prof.blocked_cpu, min(1.0, cpu_share), self.alpha),
                    blocks=prof.blocks + blame.reports,
                )
            for node in touched:
                p = self._nodes[node]
                if p.blocks and node not in (blamed or {}) and p.last_lane in ("io", "inline"):
                    # Ran on the loop again without blocking it: the evidence fades.
                    # (Off the loop there is no evidence either way, so it stays.)
                    p = replace(p, blocked_s=_ewma(p.blocked_s, 0.0, self.alpha))
                self._nodes[node] = replace(p, runs=p.runs + 1)

    def _fold(self, p: NodeProfile, c: NodeCall, *, contended: bool) -> NodeProfile:
        # One replace per call: a fan-out of thousands of calls folds them all.
        a = self.alpha
        if not c.ok:
            return replace(p, calls=p.calls + 1, last_lane=c.lane, failures=p.failures + 1)
        # Time spent runnable but not running (preempted by other processes:
        # Linux schedstat, where the worker records it) is not the node's doing.
        queued = float(getattr(c, "queued_s", 0.0) or 0.0)
        wall = max(c.wall_s - queued, c.cpu_s, 0.0)
        ratio = min(1.0, c.cpu_s / wall) if wall > 0 else None
        attributable = ratio is not None and not (c.lane == "io" and c.cpu_s == 0.0)
        if contended and ratio is not None and ratio < self.thresholds.cpu_ratio:
            # Low ratio under GIL sharing: waiting for the GIL or for I/O?
            return replace(p, calls=p.calls + 1, last_lane=c.lane)
        moved = c.bytes_in or c.bytes_out
        return replace(
            p,
            calls=p.calls + 1,
            last_lane=c.lane,
            wall_s=_ewma(p.wall_s, wall, a),
            cpu_ratio=(
                _ewma(p.cpu_ratio, ratio, a) if attributable and ratio is not None else p.cpu_ratio
            ),
            bytes_in=_ewma(p.bytes_in, float(c.bytes_in), a) if moved else p.bytes_in,
            bytes_out=_ewma(p.bytes_out, float(c.bytes_out), a) if moved else p.bytes_out,
        )

    # -- deciding -------------------------------------------------------

    def policy(self, thresholds: Thresholds | None = None) -> MeasuredPolicy:
        """A frozen snapshot to decide lanes from (for one compile or one run)."""
        with self._lock:
            return MeasuredPolicy(
                nodes=dict(self._nodes),
                dispatch=self._dispatch,
                # Hysteresis holds measured decisions only: a default is no evidence.
                previous={n: d.lane for n, d in self._decisions.items() if d.source == "profile"},
                thresholds=thresholds or self.thresholds,
            )

    def apply_decisions(self, decisions: Mapping[str, LaneDecision]) -> tuple[LaneChange, ...]:
        """Record the decisions the next run uses; log and return what changed.

        Call it between runs. A node whose lane differs from the one recorded
        for the previous run is a change, logged as ``lane_changed``.
        """
        changes: list[LaneChange] = []
        with self._lock:
            for node in sorted(decisions):
                new = decisions[node]
                old = self._decisions.get(node)
                if old is not None and old.lane != new.lane:
                    changes.append(LaneChange(node, old.lane, new.lane, new.reason))
                self._decisions[node] = new
            self._changes = tuple(changes)
        for ch in changes:
            log.info(
                "lane_changed", node=ch.node, before=ch.before, after=ch.after, reason=ch.reason
            )
        return tuple(changes)

    def diff(self) -> tuple[NodeDelta, ...]:
        """The nodes whose numbers moved in the latest observed run (``NodeDelta.moved``)."""
        with self._lock:
            deltas = (NodeDelta(n, self._before.get(n), p) for n, p in sorted(self._nodes.items()))
            return tuple(d for d in deltas if d.moved)

    def summary(self, node: str) -> str:
        prof = self.get(node)
        return prof.describe() if prof is not None else "not measured yet"

    # -- persistence ----------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "format": "engine.profile",
                "version": FORMAT_VERSION,
                "alpha": self.alpha,
                "dispatch": asdict(self._dispatch) if self._dispatch else None,
                "nodes": {n: asdict(p) for n, p in sorted(self._nodes.items())},
                "decisions": {
                    n: {"lane": d.lane, "reason": d.reason, "source": d.source}
                    for n, d in sorted(self._decisions.items())
                },
            }

    @classmethod
    def from_dict(cls, data: object, *, where: str = "profile") -> Profile:
        """Rebuild a profile from ``to_dict()`` output; ProfileError says what is wrong."""
        if not isinstance(data, dict) or data.get("format") != "engine.profile":
            raise ProfileError(
                f'{where} is not an engine profile (no "format": "engine.profile"); '
                "pass a file written by app.save_profile(path)"
            )
        if data.get("version") != FORMAT_VERSION:
            raise ProfileError(
                f"{where} has format version {data.get('version')!r}; this engine reads "
                f"version {FORMAT_VERSION}. Delete the file to start measuring afresh"
            )
        try:
            prof = cls(alpha=float(data.get("alpha", 0.3)))
            raw_dispatch = data.get("dispatch")
            if raw_dispatch is not None:
                prof._dispatch = DispatchCost(**raw_dispatch)
            for name, raw in dict(data.get("nodes", {})).items():
                node = NodeProfile(**raw)
                if node.node != name or node.calls < 0:
                    raise ValueError(f"entry {name!r} is inconsistent")
                prof._nodes[name] = node
            for name, raw in dict(data.get("decisions", {})).items():
                if raw["lane"] not in LANES:
                    raise ValueError(f"decision of {name!r} names unknown lane {raw['lane']!r}")
                prof._decisions[name] = LaneDecision(raw["lane"], raw["reason"], raw["source"])
        except ProfileError:
            raise
        except (TypeError, ValueError, KeyError) as exc:
            raise ProfileError(
                f"{where} is damaged: {type(exc).__name__}: {exc}; delete it to start afresh"
            ) from exc
        return prof

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the profile as JSON, atomically (a reader never sees half a file)."""
        out = Path(path)
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, missing_ok: bool = False) -> Profile:
        """Read a profile saved by ``save``; a missing file is an empty profile if allowed."""
        src = Path(path)
        try:
            text = src.read_text()
        except FileNotFoundError:
            if missing_ok:
                return cls()
            raise
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProfileError(
                f"profile {str(src)!r} is not valid JSON ({exc}); delete it to start afresh"
            ) from exc
        return cls.from_dict(data, where=f"profile {str(src)!r}")


# -- measuring the pool -------------------------------------------------------


async def measure_dispatch(
    executor: Executor,
    *,
    samples: int = 15,
    probe_bytes: int = 1 << 20,
    workers: int | None = None,
) -> DispatchCost:
    """Measure what one cpu-lane call costs on ``executor``, the way the lane sends it.

    Round trips of a no-op in the cpu lane's own wire format
    (``engine.lanes.worker.run_call``: the argument pickled for the worker,
    the outcome decoded in the driver) give
    the fixed cost (median); round trips carrying ``probe_bytes`` give the
    cost per byte. The pool is warmed first, so process start-up is not
    counted. Takes a few tens of milliseconds on a warm local pool.
    """
    from .lanes.pool import executor_workers
    from .lanes.worker import call_payload, dumps_for_worker, load_outcome, run_call

    if samples < 3:
        raise ValueError(f"samples must be >= 3, got {samples}")
    loop = asyncio.get_running_loop()
    n_workers = workers or executor_workers(executor)
    fn_bytes = cloudpickle.dumps(len)

    async def round_trip(arg: bytes) -> float:
        t0 = time.perf_counter()
        payload = call_payload(fn_bytes, dumps_for_worker(arg))
        data = await loop.run_in_executor(executor, run_call, payload)
        load_outcome(data)
        return time.perf_counter() - t0

    # Warm every worker (start-up is not dispatch), concurrently.
    await asyncio.gather(*(round_trip(b"") for _ in range(2 * n_workers)))
    small = [await round_trip(b"") for _ in range(samples)]
    big_arg = b"\0" * probe_bytes
    big = [await round_trip(big_arg) for _ in range(max(3, samples // 3))]
    fixed = statistics.median(small)
    per_byte = max(0.0, (statistics.median(big) - fixed) / probe_bytes) if probe_bytes else 0.0
    return DispatchCost(
        fixed_s=fixed,
        per_byte_s=per_byte,
        samples=len(small) + len(big),
        workers=n_workers,
        measured_at=time.time(),
    )


# -- helpers -----------------------------------------------------------------


def _ewma(old: float | None, new: float, alpha: float) -> float:
    return new if old is None else alpha * new + (1.0 - alpha) * old


def _gil_shared(calls: list[NodeCall], driver_pid: int) -> set[int]:
    """Indices of in-process (driver) calls whose interval overlapped another's."""
    local = sorted(
        (c.start, c.end, i) for i, c in enumerate(calls) if c.pid == driver_pid and c.lane != "io"
    )
    shared: set[int] = set()
    # Sweep by start time: a call overlaps the previous ones if it starts
    # before the latest end seen so far.
    latest_end, latest_i = -math.inf, -1
    for start, end, i in local:
        if start < latest_end:
            shared.update((i, latest_i))
        if end > latest_end:
            latest_end, latest_i = end, i
    return shared


def fmt_seconds(seconds: float) -> str:
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 1:
        return f"{ms:.1f} ms"
    return f"{ms:.2f} ms"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover - loop always returns


__all__ = [
    "Blame",
    "DispatchCost",
    "LaneChange",
    "MeasuredPolicy",
    "NodeDelta",
    "NodeProfile",
    "Profile",
    "ProfileError",
    "Thresholds",
    "measure_dispatch",
    "redecide",
]

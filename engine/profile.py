"""What one compiled graph learns about its nodes across runs (``Profile``).

The numbers and the policy that decides lanes from them live in
``engine.measured``; this module folds runs into them, diffs them, and
saves them. Data flow (between runs, never mid-step)::

    a run's NodeCall records ----+
    watchdog blame (LoopBlocked) -+--observe_run--> Profile (EWMA per node)
    lanes.pool.measure_dispatch -----observe_dispatch--^        |
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

import json
import math
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .classify import LANES, LaneDecision
from .errors import EngineError
from .fmt import fmt_bytes, fmt_seconds
from .logs import get_logger
from .measured import (
    Blame,
    DispatchCost,
    MeasuredPolicy,
    NodeProfile,
    PlanNodeLike,
    Thresholds,
    redecide,
)

if TYPE_CHECKING:
    from .trace import NodeCall

log = get_logger("engine.profile")

FORMAT_VERSION = 1


class ProfileError(EngineError, ValueError):
    """A saved profile cannot be read: not JSON, a foreign format, or a bad value."""


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


# -- the profile --------------------------------------------------------------


class Profile:
    """Per-node measurements of one compiled graph, across runs.

    Invariant: ``_nodes[n].calls`` never decreases; ``_before`` holds, for
    each node the latest ``observe_run`` changed, its profile before (None:
    it had none), so a run of a few nodes of a big graph copies no more than
    those; ``_decisions``
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
        self._before: dict[str, NodeProfile | None] = {}
        self._observed = False  # whether a run was observed (``diff`` before one: all new)
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
            before: dict[str, NodeProfile | None] = {}
            self._before = before
            self._observed = True
            by_node: dict[str, list[int]] = {}
            for i, c in enumerate(calls):
                at = by_node.get(c.node)
                if at is None:
                    by_node[c.node] = [i]
                else:
                    at.append(i)
            folds: dict[str, _Fold] = {}
            for node, at in by_node.items():
                fold = folds[node] = _Fold(self._nodes.get(node) or NodeProfile(node))
                # Only a node's newest calls move its averages measurably: the
                # older ones' weight is below (1 - alpha) ** FOLD_NEWEST. They count.
                older = at[:-FOLD_NEWEST]
                fold.calls += len(older)
                fold.failures += sum(1 for i in older if not calls[i].ok)
                for i in at[-FOLD_NEWEST:]:
                    fold.add(calls[i], self.alpha, self.thresholds.cpu_ratio, contended=i in shared)
            blamed = blamed or {}
            for node, blame in blamed.items():
                if node not in folds:  # blamed, but no call of it recorded: evidence all the same
                    before[node] = self._nodes.get(node)
                    self._nodes[node] = _blamed(
                        self._nodes.get(node) or NodeProfile(node), blame, 1, self.alpha
                    )
            for node, fold in folds.items():
                p = fold.profile()
                evidence = blamed.get(node)
                if evidence is not None:
                    p = _blamed(p, evidence, fold.calls - fold.before.calls, self.alpha)
                elif p.blocks and p.last_lane in ("io", "inline"):
                    # Ran on the loop again without blocking it: the evidence fades.
                    # (Off the loop there is no evidence either way, so it stays.)
                    p = replace(p, blocked_s=_ewma(p.blocked_s, 0.0, self.alpha))
                before[node] = self._nodes.get(node)
                self._nodes[node] = p

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
            was = self._before
            deltas = (
                NodeDelta(n, was.get(n, p) if self._observed else None, p)
                for n, p in sorted(self._nodes.items())
            )
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


# -- helpers -----------------------------------------------------------------


#: The newest calls of a node per run folded into its averages (the rest only counted):
#: with alpha=0.3 an older call weighs less than 0.7 ** 64, about 1e-10.
FOLD_NEWEST = 64


class _Fold:
    """One node's profile while a run's calls are folded into it, one call at a time.

    A fan-out of thousands of calls used to build a new frozen profile per
    call; this keeps the numbers in plain attributes and builds one at the end.
    Invariant: ``calls`` counts ``before``'s calls and those folded since.
    """

    __slots__ = (
        "before", "bytes_in", "bytes_out", "calls", "cpu_ratio", "failures", "last_lane", "wall_s",
    )  # fmt: skip

    def __init__(self, before: NodeProfile) -> None:
        self.before = before
        self.calls = before.calls
        self.failures = before.failures
        self.last_lane = before.last_lane
        self.wall_s = before.wall_s
        self.cpu_ratio = before.cpu_ratio
        self.bytes_in = before.bytes_in
        self.bytes_out = before.bytes_out

    def add(self, c: NodeCall, alpha: float, cpu_bar: float, *, contended: bool) -> None:
        self.calls += 1
        self.last_lane = c.lane
        if not c.ok:
            self.failures += 1
            return
        # Time spent runnable but not running (preempted by other processes:
        # Linux schedstat, where the worker records it) is not the node's doing.
        wall = max(c.wall_s - c.queued_s, c.cpu_s, 0.0)
        ratio = min(1.0, c.cpu_s / wall) if wall > 0 else None
        if contended and ratio is not None and ratio < cpu_bar:
            return  # a low ratio under GIL sharing: waiting for the GIL or for I/O?
        self.wall_s = _ewma(self.wall_s, wall, alpha)
        if ratio is not None and not (c.lane == "io" and c.cpu_s == 0.0):
            self.cpu_ratio = _ewma(self.cpu_ratio, ratio, alpha)
        if c.bytes_in or c.bytes_out:
            self.bytes_in = _ewma(self.bytes_in, float(c.bytes_in), alpha)
            self.bytes_out = _ewma(self.bytes_out, float(c.bytes_out), alpha)

    def profile(self) -> NodeProfile:
        """The node's profile after this run (one more run of it)."""
        b = self.before
        # ``NodeProfile(...)`` with every field given, 2x faster (as ``trace.call_record``):
        # a run of a long chain of nodes folds one per node.
        p = object.__new__(NodeProfile)
        p.__dict__.update(
            node=b.node, calls=self.calls, runs=b.runs + 1, failures=self.failures,
            wall_s=self.wall_s, cpu_ratio=self.cpu_ratio, bytes_in=self.bytes_in,
            bytes_out=self.bytes_out, blocked_s=b.blocked_s, blocked_cpu=b.blocked_cpu,
            blocks=b.blocks, last_lane=self.last_lane,
        )  # fmt: skip
        return p


def _blamed(prof: NodeProfile, blame: Blame, calls: int, alpha: float) -> NodeProfile:
    """``prof`` with one run's loop-blocking evidence (``calls`` calls of it) folded in."""
    per_call = blame.blocked_s / max(1, calls)
    ran = blame.blocked_s - blame.queued_s  # preempted time is no evidence
    cpu_share = blame.cpu_s / ran if ran > 0 else 0.0
    return replace(
        prof,
        blocked_s=_ewma(prof.blocked_s if prof.blocks else None, per_call, alpha),
        blocked_cpu=_ewma(prof.blocked_cpu, min(1.0, cpu_share), alpha),
        blocks=prof.blocks + blame.reports,
    )


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


__all__ = [
    "Blame",
    "DispatchCost",
    "LaneChange",
    "MeasuredPolicy",
    "NodeDelta",
    "NodeProfile",
    "PlanNodeLike",
    "Profile",
    "ProfileError",
    "Thresholds",
    "fmt_bytes",
    "fmt_seconds",
    "redecide",
]

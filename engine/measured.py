"""The numbers measured about nodes and the pool, and the lane policy that decides from them.

::

    Profile (engine.profile) --policy()--> MeasuredPolicy: a frozen snapshot
        nodes: NodeProfile per node          decide(node, fn) -> LaneDecision | None
        dispatch: DispatchCost of the pool   (classify asks it for undeclared nodes only)

A ``MeasuredPolicy`` is frozen: decisions made from it cannot change while a
run is under way, whatever the profile learns meanwhile. The pool's
``DispatchCost`` is measured by the cpu lane (``lanes.pool.measure_dispatch``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .classify import LaneDecision, classify, is_coroutine_function
from .fmt import fmt_bytes, fmt_seconds

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


__all__ = [
    "Blame",
    "DispatchCost",
    "MeasuredPolicy",
    "NodeProfile",
    "PlanNodeLike",
    "Thresholds",
    "redecide",
]

"""Lane decisions, each with the reason it was made.

Precedence, highest first:

1. declared: ``add_node(..., lane=...)`` or an ``@engine.io/thread/cpu/inline`` decorator;
2. coroutine: an ``async def`` runs on the event loop (``io``), unless the
   profile caught it blocking the loop with CPU work: then it runs whole on an
   event loop inside a worker (``cpu``), if it can be pickled;
3. picklability: a sync function cloudpickle cannot serialize cannot reach a
   worker process, so it runs on a thread (``thread``), and the reason says why;
4. profile: measured behaviour from earlier runs (a policy may be passed in,
   see ``engine.profile.MeasuredPolicy``);
5. default: a sync function is presumed CPU-bound (``cpu``).

A policy is only ever consulted for nodes without a declared lane: a
declaration always wins over a measurement.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import cloudpickle

Lane = Literal["io", "thread", "cpu", "inline"]
LANES: tuple[Lane, ...] = ("io", "thread", "cpu", "inline")
DecisionSource = Literal["declared", "coroutine", "picklability", "profile", "default"]

F = TypeVar("F", bound=Callable[..., Any])

_LANE_ATTR = "__engine_lane__"


@dataclass(frozen=True)
class LaneDecision:
    """Which lane a node runs on, and why."""

    lane: Lane
    reason: str
    source: DecisionSource


class ProfilePolicy(Protocol):
    """A measured policy: returns a decision for an undeclared node, or None to abstain."""

    def decide(self, node: str, fn: Callable[..., Any]) -> LaneDecision | None: ...


def _declare(lane: Lane) -> Callable[[F], F]:
    def mark(fn: F) -> F:
        try:
            setattr(fn, _LANE_ATTR, lane)
        except (AttributeError, TypeError) as exc:
            raise TypeError(
                f"@engine.{lane} cannot mark {fn!r}; decorate a plain function, "
                f"or pass lane={lane!r} to add_node"
            ) from exc
        return fn

    mark.__name__ = lane
    mark.__doc__ = f"Declare that a node function runs on the {lane!r} lane."
    return mark


io = _declare("io")
thread = _declare("thread")
cpu = _declare("cpu")
inline = _declare("inline")


def declared_lane(fn: Callable[..., Any]) -> Lane | None:
    """The lane a decorator declared on ``fn``, if any."""
    lane = getattr(fn, _LANE_ATTR, None)
    return lane if lane in LANES else None


def is_coroutine_function(fn: Callable[..., Any]) -> bool:
    target = getattr(fn, "__call__", None) if not inspect.isroutine(fn) else fn  # noqa: B004
    return inspect.iscoroutinefunction(fn) or (
        target is not None and inspect.iscoroutinefunction(target)
    )


def pickle_problem(fn: Callable[..., Any]) -> str | None:
    """Why cloudpickle cannot serialize ``fn``, or None when it can."""
    try:
        cloudpickle.dumps(fn)
    except Exception as exc:  # any failure means: cannot cross a process boundary
        return f"{type(exc).__name__}: {exc}"
    return None


def classify(
    node: str,
    fn: Callable[..., Any],
    declared: Lane | None = None,
    policy: ProfilePolicy | None = None,
) -> LaneDecision:
    """Decide ``fn``'s lane; ``declared`` is the ``lane=`` argument of add_node."""
    if declared is not None:
        return LaneDecision(declared, f"declared lane={declared!r} in add_node", "declared")
    marked = declared_lane(fn)
    if marked is not None:
        return LaneDecision(marked, f"declared by @engine.{marked}", "declared")
    if is_coroutine_function(fn):
        if policy is not None:
            measured = policy.decide(node, fn)
            if measured is not None and measured.lane == "cpu" and pickle_problem(fn) is None:
                return measured
        return LaneDecision("io", "async def: runs as a task on the event loop", "coroutine")
    problem = pickle_problem(fn)
    if problem is not None:
        return LaneDecision(
            "thread",
            f"sync but cannot be sent to a worker process ({problem}); runs on a thread",
            "picklability",
        )
    if policy is not None:
        decided = policy.decide(node, fn)
        if decided is not None:
            return decided
    return LaneDecision(
        "cpu", "sync function: presumed CPU-bound, runs in the process pool", "default"
    )

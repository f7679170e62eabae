"""Typed events a run emits as it happens (``app.astream`` yields them, ``on_event`` hears them).

Events are frozen pydantic models; ``type`` tells them apart when they are
serialized (``Event`` validates any of them from JSON). ``time`` is
``time.time()`` in the driver (or the run's clock). The run's log lines are
these same events (``engine.recorder``): a line's name is the event's
``type`` and its values are the event's fields.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class RunStatus(enum.StrEnum):
    """How a run ended (``RunFinished.status``); compares equal to its value."""

    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: Stopped to ask a person (``interrupt()``, or a breakpoint): resumed later.
    INTERRUPTED = "interrupted"


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)

    run_id: str
    time: float

    def fields(self) -> dict[str, Any]:
        """The event's own values (not its type, run or time): what its log line carries."""
        return {k: v for k, v in self.__dict__.items() if k not in ("type", "run_id", "time")}


class RunStarted(_Event):
    """A run started (or resumed: ``resumed_from_step``) at step ``step``."""

    type: Literal["run_started"] = "run_started"
    thread_id: str | None
    mode: str
    step: int = 0
    resumed_from_step: int | None = None


class StepStarted(_Event):
    """A step started with these node calls (the ones a resume still has to make)."""

    type: Literal["step_started"] = "step_started"
    step: int
    nodes: list[str]


class NodeStarted(_Event):
    """A node call (one attempt) was handed to its lane."""

    type: Literal["node_started"] = "node_started"
    step: int
    node: str
    index: int
    lane: str
    attempt: int


class NodeFinished(_Event):
    """A node call returned an update the state takes; ``pid`` is the process that ran it."""

    type: Literal["node_finished"] = "node_finished"
    step: int
    node: str
    index: int
    lane: str
    attempt: int
    duration_s: float
    pid: int
    cached: bool = False  # answered from the node cache: the node did not run


class NodeFailed(_Event):
    """A node call failed; ``will_retry`` says whether it runs again."""

    type: Literal["node_failed"] = "node_failed"
    step: int
    node: str
    index: int
    lane: str
    attempt: int
    error: str
    will_retry: bool
    error_type: str = ""


class StepFinished(_Event):
    """A step reached its barrier; ``ok`` is false when a call of it failed."""

    type: Literal["step_finished"] = "step_finished"
    step: int
    duration_s: float
    ok: bool


class LoopBlocked(_Event):
    """The event loop was blocked for ``lag_s``; ``nodes`` are the run's calls caught on it."""

    type: Literal["loop_blocked"] = "loop_blocked"
    lag_s: float
    nodes: list[str]


class BudgetWaited(_Event):
    """A node call waited for a resource budget (limits, rates, lane caps) before running."""

    type: Literal["budget_waited"] = "budget_waited"
    step: int
    node: str
    index: int
    resources: list[str]
    wait_s: float


class WorkerLoaded(_Event):
    """A worker built a node's per-worker resource (``worker_init``) for the first time."""

    type: Literal["worker_loaded"] = "worker_loaded"
    node: str
    resource: str
    pid: int
    load_s: float


class RunFinished(_Event):
    """A run ended, however it ended; ``error`` names its error when it failed."""

    type: Literal["run_finished"] = "run_finished"
    status: RunStatus
    steps: int
    wall_s: float
    error: str | None = None


#: Any event a run emits: what ``on_event`` receives and ``astream`` yields.
#: Validating JSON against it gives back the right event type (by ``type``).
Event = Annotated[
    RunStarted
    | StepStarted
    | NodeStarted
    | NodeFinished
    | NodeFailed
    | StepFinished
    | LoopBlocked
    | BudgetWaited
    | WorkerLoaded
    | RunFinished,
    Field(discriminator="type"),
]


__all__ = [
    "BudgetWaited",
    "Event",
    "LoopBlocked",
    "NodeFailed",
    "NodeFinished",
    "NodeStarted",
    "RunFinished",
    "RunStarted",
    "RunStatus",
    "StepFinished",
    "StepStarted",
    "WorkerLoaded",
]

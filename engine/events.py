"""Typed events a run emits as it happens (``app.astream`` yields them).

Events are frozen pydantic models; ``type`` tells them apart when they are
serialized. ``time`` is ``time.time()`` in the driver.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)

    run_id: str
    time: float


class RunStarted(_Event):
    type: Literal["run_started"] = "run_started"
    thread_id: str | None
    mode: str
    resumed_from_step: int | None = None


class StepStarted(_Event):
    type: Literal["step_started"] = "step_started"
    step: int
    nodes: list[str]


class NodeStarted(_Event):
    type: Literal["node_started"] = "node_started"
    step: int
    node: str
    index: int
    lane: str
    attempt: int


class NodeFinished(_Event):
    type: Literal["node_finished"] = "node_finished"
    step: int
    node: str
    index: int
    lane: str
    attempt: int
    duration_s: float
    pid: int


class NodeFailed(_Event):
    type: Literal["node_failed"] = "node_failed"
    step: int
    node: str
    index: int
    lane: str
    attempt: int
    error: str
    will_retry: bool


class StepFinished(_Event):
    type: Literal["step_finished"] = "step_finished"
    step: int
    duration_s: float
    ok: bool


class LoopBlocked(_Event):
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
    type: Literal["run_finished"] = "run_finished"
    status: Literal["done", "failed", "cancelled"]
    steps: int
    wall_s: float
    error: str | None = None


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

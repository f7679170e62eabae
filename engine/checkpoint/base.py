"""Checkpoint data, the ``Checkpointer`` protocol, and what every backend shares.

A checkpoint is JSON from end to end: the scheduler dumps the state model in
JSON mode, a backend stores text (or jsonb), and loading parses JSON and
validates it with pydantic. Nothing here unpickles or imports anything named
by stored data, so loading a checkpoint can never run code.

Storage layout, the same in every backend::

    checkpoints(thread_id, step) -> the checkpoint without its pending writes
    writes(thread_id, step, node, idx) -> one finished node's updates
    locks(thread_id) -> which run (pid, host) is driving the thread now
"""

from __future__ import annotations

import abc
import builtins
import enum
import json
import socket
import time
from collections.abc import Iterable
from typing import Any, Literal, Protocol, Self, runtime_checkable

from pydantic import BaseModel

from ..errors import CheckpointError
from ..procs import pid_alive

#: The layout version this engine writes and reads.
SCHEMA_VERSION = 1

#: One stored pending write as it comes back from a backend: (node, index, JSON text).
WriteRow = tuple[str, int, str | bytes]


class TaskRef(BaseModel, frozen=True):
    """One task to run in a step."""

    node: str
    #: Send index within the step; -1 for an edge-triggered task.
    index: int = -1
    #: JSON data of a Send payload (None for edge-triggered).
    payload: Any = None
    payload_kind: Literal["none", "json", "state"] = "none"


class PendingWrite(BaseModel, frozen=True):
    """A finished node's updates in a step that failed or was interrupted."""

    node: str
    index: int = -1
    #: JSON data.
    updates: dict[str, Any]


class Checkpoint(BaseModel, frozen=True):
    """Where a thread stands between two steps; JSON data only."""

    thread_id: str
    run_id: str
    #: The step the saved tasks will run in (== completed steps).
    step: int
    #: JSON-mode dump of the state model.
    state: dict[str, Any]
    #: What runs in ``step`` (empty, with status "done", when finished).
    next_tasks: list[TaskRef]
    #: Fan-in bookkeeping: edge key -> sources finished since its target last ran.
    fanin: dict[str, list[str]] = {}
    #: Writes of nodes that finished in a failed or interrupted step.
    pending_writes: list[PendingWrite] = []
    status: Literal["running", "done", "failed", "interrupted"]
    #: ``time.time()`` when the checkpoint was made, i.e. saved (the step's end).
    created_at: float
    #: ``time.time()`` when the run that saved it started (a resume is a new
    #: run); None in checkpoints written before this field existed.
    run_started_at: float | None = None
    schema_version: int = SCHEMA_VERSION


@runtime_checkable
class Checkpointer(Protocol):
    """Durable storage of checkpoints, plus a per-thread run lock.

    ``put`` stores one step atomically and is idempotent per (thread_id,
    step); ``get_latest`` returns the highest step. ``acquire`` refuses a
    second live run on one thread with :class:`CheckpointError`; a lock whose
    holder died does not block. Backends are async context managers.
    """

    async def setup(self) -> None:
        """Create the storage (idempotent); the other methods call it lazily."""
        ...

    async def put(self, checkpoint: Checkpoint) -> None:
        """Store one step (checkpoint and pending writes) in one transaction."""
        ...

    async def get_latest(self, thread_id: str) -> Checkpoint | None:
        """The checkpoint with the highest step of ``thread_id``, or None."""
        ...

    async def list(self, thread_id: str) -> builtins.list[Checkpoint]:
        """Every checkpoint of ``thread_id``, oldest step first."""
        ...

    async def acquire(self, thread_id: str, run_id: str) -> None:
        """Mark ``run_id`` as the one run driving ``thread_id``, or refuse."""
        ...

    async def release(self, thread_id: str, run_id: str) -> None:
        """Drop ``run_id``'s lock on ``thread_id`` (no-op when not held)."""
        ...

    async def aclose(self) -> None:
        """Release held locks and storage handles; idempotent."""
        ...

    async def __aenter__(self) -> Self:
        """``setup()``, then the checkpointer itself."""
        ...

    async def __aexit__(self, *exc_info: object) -> None:
        """``aclose()``."""
        ...


# -- encoding and decoding -----------------------------------------------------


def encode(checkpoint: Checkpoint) -> tuple[str, builtins.list[tuple[str, int, str]]]:
    """The checkpoint row's JSON text and its pending writes, one per (node, index)."""
    if not isinstance(checkpoint, Checkpoint):
        raise TypeError(f"put() takes a Checkpoint, got {type(checkpoint).__name__}")
    try:
        data = checkpoint.model_dump_json(exclude={"pending_writes"})
        # Last write wins per (node, index): that is the key in storage.
        writes = {(w.node, w.index): json.dumps(w.updates) for w in checkpoint.pending_writes}
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint of thread {checkpoint.thread_id!r} at step {checkpoint.step} is not "
            f"JSON data: {type(exc).__name__}: {exc}; keep state fields and Send payloads "
            "JSON-compatible"
        ) from exc
    return data, [(node, index, text) for (node, index), text in sorted(writes.items())]


def decode(thread_id: str, step: int, data: str | bytes, writes: Iterable[WriteRow]) -> Checkpoint:
    """Parse and validate one stored checkpoint; JSON only, never runs code.

    Raises :class:`CheckpointError` naming the thread and step, with the
    parse or validation error as ``__cause__``.
    """
    where = f"checkpoint of thread {thread_id!r} at step {step}"
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            # Its own message (what to do differs from corruption), with a
            # cause like every other load failure.
            raise CheckpointError(
                f"{where} has schema_version {version!r}; this engine reads version "
                f"{SCHEMA_VERSION}: resume it with the engine that wrote it, or use a new "
                "thread_id"
            ) from ValueError(f"unsupported schema_version {version!r}")
        raw["pending_writes"] = [
            {"node": node, "index": index, "updates": json.loads(text)}
            for node, index, text in writes
        ]
        checkpoint = Checkpoint.model_validate(raw)
        if checkpoint.thread_id != thread_id or checkpoint.step != step:
            raise ValueError(
                f"the stored data says thread {checkpoint.thread_id!r} step {checkpoint.step}"
            )
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"{where} is corrupt ({type(exc).__name__}: {exc}); it cannot be resumed: "
            "start the work under a new thread_id (or delete the thread's rows)"
        ) from exc
    return checkpoint


# -- locks ---------------------------------------------------------------------


def this_host() -> str:
    """The host name a lock records."""
    return socket.gethostname()


def busy_message(thread_id: str, run_id: object, pid: object, host: object) -> str:
    """The refusal of a second run on one thread, naming the holder."""
    return (
        f"thread {thread_id!r} is already being run by run {run_id} (pid {pid} on host "
        f"{host}); wait for it or use another thread_id"
    )


def lock_is_stale(pid: int, host: str) -> bool:
    """A lock row whose holder provably died: same host, pid gone."""
    return host == this_host() and not pid_alive(pid)


def now() -> float:
    """Wall-clock time stamps for lock rows."""
    return time.time()


# -- lifecycle -----------------------------------------------------------------


class Lifecycle(enum.Enum):
    """Where a checkpointer is in its life."""

    CREATED = "created"
    OPEN = "open"
    CLOSED = "closed"


class CheckpointerBase(abc.ABC):
    """Lifecycle, ``repr`` and context management shared by the backends.

    A backend must say where it stores (``_location``), and how it sets up
    and closes; a class missing one cannot be instantiated.
    """

    # Invariant: ``_lifecycle`` only moves CREATED -> OPEN -> CLOSED (or
    # CREATED -> CLOSED); once CLOSED every storage call raises RuntimeError.

    _lifecycle: Lifecycle = Lifecycle.CREATED

    @abc.abstractmethod
    def _location(self) -> str:
        """Where the checkpoints are, for ``repr`` and messages."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._lifecycle.value} {self._location()}>"

    def _check_usable(self, what: str) -> None:
        if self._lifecycle is Lifecycle.CLOSED:
            raise RuntimeError(
                f"{self!r} is closed: cannot {what}; create a new checkpointer, or keep "
                "'async with' open around every run that uses it"
            )

    @abc.abstractmethod
    async def setup(self) -> None:
        """Create what the store needs (idempotent)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release this checkpointer's locks and close the store (idempotent)."""

    async def __aenter__(self) -> Self:
        await self.setup()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

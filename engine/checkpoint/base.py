"""Checkpoint data, the ``Checkpointer`` protocol, and what every backend shares.

A checkpoint is JSON from end to end: the scheduler writes the state with the
checkpoint codec (``codec.py``: tagged JSON that keeps NaN, bytes, tuples,
datetimes... exactly), a backend stores the JSON text, and loading parses it
and validates it with pydantic. Nothing here unpickles or imports anything
named by stored data, so loading a checkpoint can never run code.

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
from .codec import dumps

#: The layout version this engine writes. Version 1 held plain JSON (JSON-mode
#: dumps, NaN saved as null); version 2 holds the codec's tagged JSON, and its
#: rows of pending writes also say which fields are ``typed``.
SCHEMA_VERSION = 2

#: The versions this engine reads.
READABLE_VERSIONS = (1, 2)

#: The longest thread id, in UTF-8 bytes, every checkpointer accepts: it is
#: part of PostgreSQL's primary-key index entries, which hold about 2,700 bytes
#: with the node name of a pending write.
THREAD_ID_MAX_BYTES = 1024

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
    #: JSON data (the codec's), field -> value as the node returned it.
    updates: dict[str, Any]
    #: Fields whose value is plain data that validation into the field's type
    #: turns back into what the node returned (an enum member, a model...).
    typed: list[str] = []


class Checkpoint(BaseModel, frozen=True):
    """Where a thread stands between two steps; JSON data only."""

    thread_id: str
    run_id: str
    #: The step the saved tasks will run in (== completed steps).
    step: int
    #: The state model's fields as JSON data (the codec's, from schema_version 2).
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

    async def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint and pending write of ``thread_id``.

        Refuses with :class:`CheckpointError` while a live run holds the
        thread; a lock whose holder died is dropped with the rest.
        """
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


def check_thread_id(thread_id: object) -> str:
    """``thread_id`` if every checkpointer can store it, else CheckpointError saying why.

    Checked up front on every backend, so the same id is refused the same way
    everywhere (SQLite and PostgreSQL would each fail differently, or not at
    all, deep in a save). The message never echoes a long id whole.
    """
    if not isinstance(thread_id, str):
        raise CheckpointError(
            f"thread_id must be a str, got {type(thread_id).__name__}; pass str(...) of it"
        )
    shown = repr(thread_id[:40]) + ("..." if len(thread_id) > 40 else "")
    if "\x00" in thread_id:
        raise CheckpointError(
            f"thread_id {shown} contains a NUL character (at {thread_id.index(chr(0))}), which "
            "a checkpoint store cannot index; use an id without it"
        )
    try:
        size = len(thread_id.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise CheckpointError(
            f"thread_id {shown} contains a lone surrogate ({thread_id[exc.start]!r} at "
            f"{exc.start}), which is not valid Unicode text and cannot be stored; decode the "
            "id properly (bytes.decode('utf-8'), not 'surrogateescape') or hash it"
        ) from None
    if size > THREAD_ID_MAX_BYTES:
        raise CheckpointError(
            f"thread_id {shown} is {size} bytes long in UTF-8; checkpointers accept at most "
            f"{THREAD_ID_MAX_BYTES}: use a shorter id (a hash of this one, say)"
        )
    return thread_id


def encode(checkpoint: Checkpoint) -> tuple[str, builtins.list[tuple[str, int, str]]]:
    """The checkpoint row's JSON text and its pending writes, one per (node, index).

    The text is ASCII (every other character escaped), strict JSON (no NaN),
    with object keys in order: a store keeping it as text keeps it exactly.
    """
    if not isinstance(checkpoint, Checkpoint):
        raise TypeError(f"put() takes a Checkpoint, got {type(checkpoint).__name__}")
    check_thread_id(checkpoint.thread_id)
    try:
        # The state is JSON data already (often most of the checkpoint): dump
        # the rest, in field order, without copying it.
        rest = checkpoint.model_dump(mode="python", exclude={"pending_writes", "state"})
        row = {
            name: checkpoint.state if name == "state" else rest[name]
            for name in Checkpoint.model_fields
            if name != "pending_writes"
        }
        data = dumps(row)
        # Last write wins per (node, index): that is the key in storage.
        writes = {
            (w.node, w.index): dumps({"updates": w.updates, "typed": w.typed})
            for w in checkpoint.pending_writes
        }
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint of thread {checkpoint.thread_id!r} at step {checkpoint.step} is not "
            f"JSON data: {type(exc).__name__}: {exc}; build it with the engine's checkpoint "
            "codec (engine.checkpoint.codec), which writes every value a state can hold"
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
        if version not in READABLE_VERSIONS:
            # Its own message (what to do differs from corruption), with a
            # cause like every other load failure.
            raise CheckpointError(
                f"{where} has schema_version {version!r:.40}; this engine reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}: resume it with the engine that "
                "wrote it, or use a new thread_id"
            ) from ValueError(f"unsupported schema_version {version!r:.40}")
        pending = []
        for node, index, text in writes:
            row = json.loads(text)
            if version == 1 or not isinstance(row, dict):  # version 1: the updates alone
                row = {"updates": row}
            pending.append({**row, "node": node, "index": index})
        raw["pending_writes"] = pending
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
            f"start the work under a new thread_id, or delete the thread with "
            f"checkpointer.delete_thread({thread_id!r})"
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


def busy_unnamed_message(thread_id: str) -> str:
    """The refusal when the thread is locked but the holder's record is not there.

    Scenario: the holder took the lock a moment ago and has not written its
    record yet, or deleted its record and is releasing the lock right now.
    """
    return (
        f"thread {thread_id!r} is already being run by another run, which was just taking "
        "or just releasing it (its lock record was not written yet, or already removed); "
        "try again in a moment, or use another thread_id"
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

"""Checkpoint data, the ``Checkpointer`` protocol, and what every backend shares.

A checkpoint is JSON from end to end: the scheduler writes the state with the
checkpoint codec (``codec.py``: tagged JSON that keeps NaN, bytes, tuples,
datetimes... exactly), a backend stores the JSON text, and loading parses it
and validates it with pydantic. Nothing here unpickles or imports anything
named by stored data, so loading a checkpoint can never run code.

Storage layout, the same in every backend::

    checkpoints(thread_id, checkpoint_ns, checkpoint_id) -> the checkpoint without its writes,
        with parent_id, step, source and seq (the order checkpoints were made in)
    writes(thread_id, checkpoint_ns, checkpoint_id, node, idx) -> one task's updates: the
        writes of the tasks that ran from that checkpoint (all of them once its step
        finished, those that finished when it failed or was interrupted)
    locks(thread_id) -> which run (pid, host) is driving the thread now

A thread's checkpoints form a tree: each names its parent. A run appends to
the newest one; ``update_state`` and a time-travel fork add a child to any
checkpoint, so several may share a step. "Latest" is the newest made (highest
``seq``), never the highest step.
"""

from __future__ import annotations

import abc
import builtins
import enum
import json
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Self, runtime_checkable

from pydantic import BaseModel

from ..errors import CheckpointError
from ..procs import pid_alive
from .codec import dumps

#: The layout version this engine writes. Version 1 held plain JSON (JSON-mode
#: dumps, NaN saved as null); version 2 holds the codec's tagged JSON, and its
#: rows of pending writes also say which fields are ``typed``; version 3 rows
#: belong to a tree of checkpoints (ids, parents, source, metadata, errors).
SCHEMA_VERSION = 3

#: The versions this engine reads (rows of 1 and 2 were moved into the tree by
#: the migration of their store, each the child of the thread's previous step).
READABLE_VERSIONS = (1, 2, 3)

#: How a checkpoint came to be: the input of a run, a step of a run, an
#: ``update_state``, or a fork (a run resumed from a past checkpoint).
Source = Literal["input", "loop", "update", "fork"]

#: The fields of a checkpoint its store keeps in columns, not in its JSON row.
IDENTITY = ("checkpoint_ns", "checkpoint_id", "parent_id")

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
    #: For a "state" payload: which of the graph's schema classes it is ("" for the state's).
    payload_schema: str = ""


class PendingWrite(BaseModel, frozen=True):
    """The updates one task returned (a node call, or ``__start__``'s input)."""

    node: str
    index: int = -1
    #: JSON data (the codec's), field -> value as the node returned it.
    updates: dict[str, Any]
    #: Fields whose value is plain data that validation into the field's type
    #: turns back into what the node returned (an enum member, a model...).
    typed: list[str] = []
    #: Where the task's ``Command(goto=...)`` sends the run: node names (``index`` -1)
    #: and Sends (their payload as a task's); empty without one, and in older checkpoints.
    goto: list[TaskRef] = []


class TaskError(BaseModel, frozen=True):
    """A task of the checkpoint's step that failed: its exception's ``repr``."""

    node: str
    index: int = -1
    error: str


class TaskInterrupt(BaseModel, frozen=True):
    """A question a task of the checkpoint's step asked (``interrupt(value)``), still open."""

    node: str
    index: int = -1
    #: Its position among the task's questions (0: the call's first ``interrupt()``).
    n: int = 0
    id: str
    #: The question, JSON data (the codec's).
    value: Any = None


class TaskResume(BaseModel, frozen=True):
    """The answers an interrupted task of the checkpoint's step was given so far."""

    node: str
    index: int = -1
    #: JSON data (the codec's), one per answered ``interrupt()``, in order.
    values: list[Any] = []


class Checkpoint(BaseModel, frozen=True):
    """Where a thread stands between two steps; JSON data only.

    ``checkpoint_id`` is empty until a store keeps the checkpoint: ``put``
    gives it one (see :meth:`Checkpointer.put`) and returns it.
    """

    thread_id: str
    #: The namespace of a subgraph's checkpoints ("" for the graph itself).
    checkpoint_ns: str = ""
    checkpoint_id: str = ""
    #: The checkpoint this one follows (None: the first of its thread, or of a fresh update).
    parent_id: str | None = None
    run_id: str
    #: The step the saved tasks will run in (== completed steps); -1 for the input.
    step: int
    source: Source = "loop"
    #: The channel values (or a pydantic state's fields) as JSON data (the codec's).
    state: dict[str, Any]
    #: Channels whose value is plain data that validation into the channel's type
    #: turns back into what it was (an enum member, a model...).
    typed: list[str] = []
    #: What runs in ``step`` (empty, with status "done", when finished).
    next_tasks: list[TaskRef]
    #: Fan-in bookkeeping: edge key -> sources finished since its target last ran.
    fanin: dict[str, list[str]] = {}
    #: Writes of this checkpoint's tasks: those that finished in a failed or
    #: interrupted step and, once its step finished, all of them.
    pending_writes: list[PendingWrite] = []
    #: Given to ``put`` only: the writes of the parent's tasks that made this
    #: checkpoint. The store keeps them as the parent's ``pending_writes``; a
    #: checkpoint read back has none here.
    parent_writes: list[PendingWrite] = []
    #: The nodes whose writes made this checkpoint: its parent's tasks,
    #: ``update_state``'s ``as_node``; empty for a run's first checkpoint (its input).
    writers: list[str] = []
    #: Tasks of this checkpoint's step that failed.
    errors: list[TaskError] = []
    #: Questions tasks of this checkpoint's step asked, unanswered (status "interrupted").
    interrupts: list[TaskInterrupt] = []
    #: Answers given so far to interrupted tasks of this checkpoint's step.
    resumes: list[TaskResume] = []
    #: The run stopped here on purpose (questions, or a breakpoint), not by a failure or a
    #: cancellation: a new input may start over from it.
    paused: bool = False
    status: Literal["running", "done", "failed", "interrupted"]
    #: ``time.time()`` when the checkpoint was made, i.e. saved (the step's end).
    created_at: float
    #: ``time.time()`` when the run that saved it started (a resume is a new
    #: run); None in checkpoints written before this field existed.
    run_started_at: float | None = None
    #: The caller's metadata (config["metadata"]), JSON data (the codec's).
    metadata: dict[str, Any] = {}
    #: Namespace -> checkpoint id of the graphs above a subgraph's checkpoint ({} at the root).
    parents: dict[str, str] = {}
    schema_version: int = SCHEMA_VERSION

    def describe_metadata(self) -> dict[str, Any]:
        """The metadata a snapshot shows and ``filter`` matches: source, step, parents, and
        the caller's own keys (the codec's JSON data, as stored)."""
        return {**self.metadata, "source": self.source, "step": self.step, "parents": self.parents}


@runtime_checkable
class Checkpointer(Protocol):
    """Durable storage of a tree of checkpoints per thread, plus a per-thread run lock.

    ``put`` stores one checkpoint atomically and returns it with its id;
    ``get_latest``/``get`` read one back, ``history`` lists them newest
    first. ``acquire`` refuses a second live run on one thread with
    :class:`CheckpointError`; a lock whose holder died does not block.
    Backends are async context managers.
    """

    async def setup(self) -> None:
        """Create the storage (idempotent); the other methods call it lazily."""
        ...

    async def put(self, checkpoint: Checkpoint) -> Checkpoint:
        """Store one checkpoint, its writes and its ``parent_writes`` in one transaction.

        Which checkpoint it is (see :func:`place`): the one ``checkpoint_id``
        names (replaced when it exists); else, without ``parent_id``, the
        thread's latest when that has the same step (a step saved again:
        failed, interrupted, resumed), or a new child of the latest; else a
        new child of ``parent_id``. Returns the checkpoint as stored, with its
        id and parent, without ``parent_writes``.
        """
        ...

    async def get_latest(self, thread_id: str) -> Checkpoint | None:
        """The newest checkpoint of ``thread_id`` (namespace ""), or None."""
        ...

    async def get(
        self, thread_id: str, checkpoint_id: str | None = None, *, checkpoint_ns: str = ""
    ) -> Checkpoint | None:
        """The checkpoint ``checkpoint_id`` (the newest when None) of the thread, or None."""
        ...

    async def history(
        self,
        thread_id: str,
        *,
        checkpoint_ns: str = "",
        before: str | None = None,
        limit: int | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> builtins.list[Checkpoint]:
        """The thread's checkpoints, newest first, across every branch.

        ``before``: only those made before that checkpoint; ``filter``: only
        those whose metadata (``describe_metadata``) has these items;
        ``limit``: at most that many.
        """
        ...

    async def list(self, thread_id: str) -> builtins.list[Checkpoint]:
        """Every checkpoint of ``thread_id`` (namespace ""), oldest first."""
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


#: Fields a JSON row leaves out: its writes, and what the store keeps in columns.
_NOT_IN_ROW = frozenset({"pending_writes", "parent_writes", *IDENTITY})


@dataclass(frozen=True)
class Encoded:
    """A checkpoint as a store writes it: its JSON row, its writes, its parent's writes."""

    data: str
    writes: builtins.list[tuple[str, int, str]]
    parent_writes: builtins.list[tuple[str, int, str]]


def _write_rows(writes: Iterable[PendingWrite]) -> builtins.list[tuple[str, int, str]]:
    # Last write wins per (node, index): that is the key in storage.
    rows = {(w.node, w.index): dumps(_write_row(w)) for w in writes}
    return [(node, index, text) for (node, index), text in sorted(rows.items())]


def _write_row(w: PendingWrite) -> dict[str, Any]:
    row: dict[str, Any] = {"updates": w.updates, "typed": w.typed}
    if w.goto:  # (a row without one reads as before)
        row["goto"] = [ref.model_dump(mode="json") for ref in w.goto]
    return row


def encode(checkpoint: Checkpoint) -> Encoded:
    """The checkpoint row's JSON text and its writes (and its parent's), one per (node, index).

    The text is ASCII (every other character escaped), strict JSON (no NaN),
    with object keys in order: a store keeping it as text keeps it exactly.
    The identity fields (namespace, id, parent) are not in it: stores keep
    them in columns.
    """
    if not isinstance(checkpoint, Checkpoint):
        raise TypeError(f"put() takes a Checkpoint, got {type(checkpoint).__name__}")
    check_thread_id(checkpoint.thread_id)
    try:
        # The state is JSON data already (often most of the checkpoint): dump
        # the rest, in field order, without copying it.
        rest = checkpoint.model_dump(mode="python", exclude={*_NOT_IN_ROW, "state"})
        row = {
            name: checkpoint.state if name == "state" else rest[name]
            for name in Checkpoint.model_fields
            if name not in _NOT_IN_ROW
        }
        return Encoded(
            dumps(row),
            _write_rows(checkpoint.pending_writes),
            _write_rows(checkpoint.parent_writes),
        )
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint of thread {checkpoint.thread_id!r} at step {checkpoint.step} is not "
            f"JSON data: {type(exc).__name__}: {exc}; build it with the engine's checkpoint "
            "codec (engine.checkpoint.codec), which writes every value a state can hold"
        ) from exc


@dataclass(frozen=True)
class Identity:
    """Where a stored checkpoint sits in its thread's tree (the store's columns)."""

    checkpoint_ns: str
    checkpoint_id: str
    parent_id: str | None


def decode(
    thread_id: str,
    step: int,
    data: str | bytes,
    writes: Iterable[WriteRow],
    identity: Identity | None = None,
) -> Checkpoint:
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
        for name in (*IDENTITY, "parent_writes"):
            raw.pop(name, None)  # never trusted from the row: the columns say
        if identity is not None:
            raw.update(
                checkpoint_ns=identity.checkpoint_ns,
                checkpoint_id=identity.checkpoint_id,
                parent_id=identity.parent_id,
            )
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


# -- where a put goes ------------------------------------------------------------


def new_checkpoint_id(at: float | None = None) -> str:
    """A fresh checkpoint id: a version-7 UUID (its text sorts by the time it was made).

    Stores order checkpoints by when they were stored (``seq``), not by id:
    two drivers' clocks need not agree.
    """
    ms = int((time.time() if at is None else at) * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = (rand >> 62) & 0xFFF  # 12 bits
    rand_b = rand & ((1 << 62) - 1)  # 62 bits
    value = (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return str(uuid.UUID(int=value))


@dataclass(frozen=True)
class Latest:
    """What a store knows of a thread's newest checkpoint when placing a put."""

    checkpoint_id: str
    parent_id: str | None
    step: int


@dataclass(frozen=True)
class Placement:
    """Where a put goes: which checkpoint id, which parent."""

    checkpoint_id: str
    parent_id: str | None


def place(cp: Checkpoint, latest: Latest | None, fresh_id: str) -> Placement:
    """Where ``put(cp)`` stores ``cp``, given the thread's newest checkpoint.

    ``fresh_id`` is minted before the store's transaction, so a put retried
    after a lost connection lands on the same row instead of a second one.
    """
    if cp.checkpoint_id:
        return Placement(cp.checkpoint_id, cp.parent_id)
    if cp.parent_id is None and latest is not None and latest.step == cp.step:
        # The same step saved again (failed, interrupted, resumed): the same checkpoint.
        return Placement(latest.checkpoint_id, latest.parent_id)
    parent = cp.parent_id
    if parent is None and latest is not None:
        parent = latest.checkpoint_id
    return Placement(fresh_id, parent)


def stored(cp: Checkpoint, where: Placement) -> Checkpoint:
    """``cp`` as ``put`` stored it: with its id and parent, without its parent's writes."""
    return cp.model_copy(
        update={
            "checkpoint_id": where.checkpoint_id,
            "parent_id": where.parent_id,
            "parent_writes": [],
        }
    )


def matches(cp: Checkpoint, filter: Mapping[str, Any] | None) -> bool:
    """Whether ``cp``'s metadata has every item of ``filter``."""
    if not filter:
        return True
    meta = cp.describe_metadata()
    return all(k in meta and meta[k] == v for k, v in filter.items())


def check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")


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

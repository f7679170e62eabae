"""In-process checkpoints: JSON text in dicts, for tests and throwaway runs."""

from __future__ import annotations

import builtins
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointError
from .base import (
    Checkpoint,
    CheckpointerBase,
    Identity,
    Latest,
    Lifecycle,
    busy_message,
    check_limit,
    check_thread_id,
    decode,
    encode,
    matches,
    new_checkpoint_id,
    place,
    stored,
    this_host,
)


@dataclass
class _Row:
    """One stored checkpoint: its place in the tree, its JSON text and its writes."""

    checkpoint_id: str
    parent_id: str | None
    step: int
    data: str
    writes: dict[tuple[str, int], str] = field(default_factory=dict)


class MemoryCheckpointer(CheckpointerBase):
    """Checkpoints kept in this process, stored as JSON text.

    Storing text (not the models) means a caller can never mutate what was
    saved, and loading goes through the same validation as the durable
    backends. Locks are an in-process dict: they keep two runs of one
    process off a thread, nothing more.
    """

    # Invariant: ``_trees[(t, ns)]`` lists thread t's checkpoints of namespace
    # ns in the order they were first stored (a row replaced in place keeps
    # its position), each id at most once; a put changes a row and its
    # parent's writes with no await in between, so readers see whole puts.
    # ``_locks[t]`` is the run id driving thread t.

    def __init__(self) -> None:
        self._trees: dict[tuple[str, str], list[_Row]] = {}
        self._locks: dict[str, str] = {}

    def _location(self) -> str:
        return f"in process {os.getpid()}"

    async def setup(self) -> None:
        """Nothing to create; marks the checkpointer open."""
        self._check_usable("set up")
        self._lifecycle = Lifecycle.OPEN

    async def put(self, checkpoint: Checkpoint) -> Checkpoint:
        """Store one checkpoint (see ``Checkpointer.put``); returns it as stored."""
        self._check_usable("put a checkpoint")
        self._lifecycle = Lifecycle.OPEN
        enc = encode(checkpoint)
        rows = self._trees.setdefault((checkpoint.thread_id, checkpoint.checkpoint_ns), [])
        latest = Latest(rows[-1].checkpoint_id, rows[-1].parent_id, rows[-1].step) if rows else None
        where = place(checkpoint, latest, new_checkpoint_id())
        row = _Row(
            where.checkpoint_id,
            where.parent_id,
            checkpoint.step,
            enc.data,
            {(n, i): text for n, i, text in enc.writes},
        )
        at = next((i for i, r in enumerate(rows) if r.checkpoint_id == row.checkpoint_id), None)
        if at is None:
            rows.append(row)
        else:
            rows[at] = row
        if where.parent_id is not None and enc.parent_writes:
            parent = next((r for r in rows if r.checkpoint_id == where.parent_id), None)
            if parent is not None:
                parent.writes = {(n, i): text for n, i, text in enc.parent_writes}
        return stored(checkpoint, where)

    def _load(self, thread_id: str, ns: str, row: _Row) -> Checkpoint:
        writes = [(n, i, text) for (n, i), text in sorted(row.writes.items())]
        identity = Identity(ns, row.checkpoint_id, row.parent_id)
        return decode(thread_id, row.step, row.data, writes, identity)

    def _rows(self, thread_id: str, ns: str) -> builtins.list[_Row]:
        check_thread_id(thread_id)
        return self._trees.get((thread_id, ns), [])

    async def get_latest(self, thread_id: str) -> Checkpoint | None:
        """The newest checkpoint of the thread, or None."""
        return await self.get(thread_id)

    async def get(
        self, thread_id: str, checkpoint_id: str | None = None, *, checkpoint_ns: str = ""
    ) -> Checkpoint | None:
        """The checkpoint ``checkpoint_id`` (the newest when None), or None."""
        self._check_usable("read a checkpoint")
        rows = self._rows(thread_id, checkpoint_ns)
        if checkpoint_id is None:
            found = rows[-1] if rows else None
        else:
            found = next((r for r in rows if r.checkpoint_id == checkpoint_id), None)
        return None if found is None else self._load(thread_id, checkpoint_ns, found)

    async def history(
        self,
        thread_id: str,
        *,
        checkpoint_ns: str = "",
        before: str | None = None,
        limit: int | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> builtins.list[Checkpoint]:
        """The thread's checkpoints, newest first (see ``Checkpointer.history``)."""
        self._check_usable("list checkpoints")
        check_limit(limit)
        rows = self._rows(thread_id, checkpoint_ns)
        if before is not None:
            cut = next((i for i, r in enumerate(rows) if r.checkpoint_id == before), 0)
            rows = rows[:cut]
        out: builtins.list[Checkpoint] = []
        for row in reversed(rows):
            if limit is not None and len(out) >= limit:
                break
            cp = self._load(thread_id, checkpoint_ns, row)
            if matches(cp, filter):
                out.append(cp)
        return out

    async def list(self, thread_id: str) -> builtins.list[Checkpoint]:
        """Every checkpoint of the thread, oldest first."""
        self._check_usable("list checkpoints")
        return [self._load(thread_id, "", r) for r in self._rows(thread_id, "")]

    async def acquire(self, thread_id: str, run_id: str) -> None:
        """Take the thread for ``run_id`` or raise CheckpointError naming the holder."""
        self._check_usable("acquire a thread")
        check_thread_id(thread_id)
        holder = self._locks.get(thread_id)
        if holder is not None and holder != run_id:
            raise CheckpointError(busy_message(thread_id, holder, os.getpid(), this_host()))
        self._locks[thread_id] = run_id

    async def release(self, thread_id: str, run_id: str) -> None:
        """Drop ``run_id``'s lock; a lock held by another run is left alone."""
        self._check_usable("release a thread")
        check_thread_id(thread_id)
        if self._locks.get(thread_id) == run_id:
            del self._locks[thread_id]

    async def delete_thread(self, thread_id: str) -> None:
        """Delete the thread's checkpoints (every namespace); refused while a run holds it."""
        self._check_usable("delete a thread")
        check_thread_id(thread_id)
        holder = self._locks.get(thread_id)
        if holder is not None:
            raise CheckpointError(busy_message(thread_id, holder, os.getpid(), this_host()))
        for key in [k for k in self._trees if k[0] == thread_id]:
            del self._trees[key]

    async def aclose(self) -> None:
        """Drop the locks; stored checkpoints become unreachable. Idempotent."""
        if self._lifecycle is Lifecycle.CLOSED:
            return
        self._lifecycle = Lifecycle.CLOSED
        self._locks.clear()

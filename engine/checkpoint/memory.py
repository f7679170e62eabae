"""In-process checkpoints: dicts of JSON text, for tests and throwaway runs."""

from __future__ import annotations

import builtins
import os

from ..errors import CheckpointError
from .base import (
    Checkpoint,
    CheckpointerBase,
    Lifecycle,
    busy_message,
    check_thread_id,
    decode,
    encode,
    this_host,
)


class MemoryCheckpointer(CheckpointerBase):
    """Checkpoints kept in this process, stored as JSON text.

    Storing text (not the models) means a caller can never mutate what was
    saved, and loading goes through the same validation as the durable
    backends. Locks are an in-process dict: they keep two runs of one
    process off a thread, nothing more.
    """

    # Invariant: ``_rows[t][s]`` is the JSON text of thread t's step s, and
    # ``_writes[t][s]`` its pending writes keyed (node, index); both change
    # together, with no await in between, so readers see whole steps.
    # ``_locks[t]`` is the run id driving thread t.

    def __init__(self) -> None:
        self._rows: dict[str, dict[int, str]] = {}
        self._writes: dict[str, dict[int, dict[tuple[str, int], str]]] = {}
        self._locks: dict[str, str] = {}

    def _location(self) -> str:
        return f"in process {os.getpid()}"

    async def setup(self) -> None:
        """Nothing to create; marks the checkpointer open."""
        self._check_usable("set up")
        self._lifecycle = Lifecycle.OPEN

    async def put(self, checkpoint: Checkpoint) -> None:
        """Store one step; a re-put of the same step replaces it."""
        self._check_usable("put a checkpoint")
        self._lifecycle = Lifecycle.OPEN
        data, writes = encode(checkpoint)
        tid, step = checkpoint.thread_id, checkpoint.step
        self._rows.setdefault(tid, {})[step] = data
        self._writes.setdefault(tid, {})[step] = {(n, i): text for n, i, text in writes}

    def _load(self, thread_id: str, step: int) -> Checkpoint:
        writes = self._writes.get(thread_id, {}).get(step, {})
        rows = [(n, i, text) for (n, i), text in sorted(writes.items())]
        return decode(thread_id, step, self._rows[thread_id][step], rows)

    async def get_latest(self, thread_id: str) -> Checkpoint | None:
        """The checkpoint with the highest step, or None."""
        self._check_usable("read a checkpoint")
        check_thread_id(thread_id)
        steps = self._rows.get(thread_id)
        if not steps:
            return None
        return self._load(thread_id, max(steps))

    async def list(self, thread_id: str) -> builtins.list[Checkpoint]:
        """Every checkpoint of the thread, oldest step first."""
        self._check_usable("list checkpoints")
        check_thread_id(thread_id)
        return [self._load(thread_id, s) for s in sorted(self._rows.get(thread_id, {}))]

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
        """Delete the thread's checkpoints; refused while a run holds the thread."""
        self._check_usable("delete a thread")
        check_thread_id(thread_id)
        holder = self._locks.get(thread_id)
        if holder is not None:
            raise CheckpointError(busy_message(thread_id, holder, os.getpid(), this_host()))
        self._rows.pop(thread_id, None)
        self._writes.pop(thread_id, None)

    async def aclose(self) -> None:
        """Drop the locks; stored checkpoints become unreachable. Idempotent."""
        if self._lifecycle is Lifecycle.CLOSED:
            return
        self._lifecycle = Lifecycle.CLOSED
        self._locks.clear()

"""Moving a store of the first layout (one row per thread and step) into the tree layout.

The first layout keyed checkpoints by ``(thread_id, step)``: one line of
steps per thread, no ids, no parents. Its rows become a chain: each step
a ``loop`` checkpoint with a fresh id, child of the thread's previous step,
in step order; its pending writes follow it. The JSON rows are kept as they
are (schema_version 1 or 2, which this engine still reads). Stores run this
once, in the transaction that sets them up, so a store is either all old or
all new.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .base import new_checkpoint_id

#: The columns of the first layout's ``checkpoints`` table.
OLD_CHECKPOINT_COLUMNS = frozenset({"thread_id", "step", "run_id", "status", "created_at", "data"})

#: Columns only the tree layout's ``checkpoints`` table has.
NEW_CHECKPOINT_COLUMNS = frozenset({"seq", "checkpoint_ns", "checkpoint_id", "parent_id", "source"})

Layout = Literal["absent", "old", "new", "foreign"]


def layout(columns: Iterable[str]) -> Layout:
    """Which layout a ``checkpoints`` table with these columns has ("absent": no table).

    "foreign": another program's table of the same name, left alone (every
    read and write of it then fails with a CheckpointError naming the store).
    """
    cols = set(columns)
    if not cols:
        return "absent"
    if cols == OLD_CHECKPOINT_COLUMNS:
        return "old"
    if cols >= OLD_CHECKPOINT_COLUMNS | NEW_CHECKPOINT_COLUMNS:
        return "new"
    return "foreign"


@dataclass(frozen=True)
class Moved:
    """The first layout's rows in the tree layout, in the order to insert them."""

    #: (thread_id, checkpoint_ns, checkpoint_id, parent_id, step, source, run_id,
    #:  status, created_at, data), oldest step first per thread.
    checkpoints: list[tuple[Any, ...]]
    #: (thread_id, checkpoint_ns, checkpoint_id, node, idx, data).
    writes: list[tuple[Any, ...]]


def move(old_checkpoints: Sequence[Sequence[Any]], old_writes: Sequence[Sequence[Any]]) -> Moved:
    """Map rows ``(thread_id, step, run_id, status, created_at, data)`` and writes
    ``(thread_id, step, node, idx, data)`` of the first layout onto the tree layout."""
    ids: dict[tuple[str, int], str] = {}
    checkpoints: list[tuple[Any, ...]] = []
    previous: dict[str, str] = {}
    for thread_id, step, run_id, status, created_at, data in sorted(
        old_checkpoints, key=lambda r: (r[0], r[1])
    ):
        cid = new_checkpoint_id(at=created_at)
        ids[(thread_id, step)] = cid
        parent = previous.get(thread_id)
        previous[thread_id] = cid
        checkpoints.append(
            (thread_id, "", cid, parent, step, "loop", run_id, status, created_at, data)
        )
    writes = [
        (thread_id, "", ids[(thread_id, step)], node, idx, data)
        for thread_id, step, node, idx, data in old_writes
        if (thread_id, step) in ids
    ]
    return Moved(checkpoints, writes)

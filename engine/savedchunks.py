"""The ``checkpoints`` stream mode and ``debug``'s checkpoint chunks: one per checkpoint saved.

::

    app, a streamed run with a checkpointer and a thread, streaming "checkpoints"
    or "debug": its RunSaver saves through ``announcing(checkpointer, ...)``
      threads.input_cursor: put(input checkpoint, step -1) -> chunks
      scheduler: put(each step's cursor)                   -> chunks
        ("checkpoints", payload)
        ("debug", {"step", "timestamp", "type": "checkpoint", "payload": payload})

The payload is LangGraph's: the checkpoint's ``config`` and
``parent_config``, ``values``, ``metadata``, ``next`` and ``tasks`` (each
task's id the one its ``debug``/``tasks`` chunks carry, ``streaming.task_id``).
A chunk follows the save it describes: it names a checkpoint that exists.
A run nobody streams that way saves through its checkpointer itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .streaming import ChunkSink, now, task_id

if TYPE_CHECKING:
    from .checkpoint import Checkpoint, Checkpointer
    from .checkpoint.snapshot import RunCodec
    from .saving import RunSaver

#: The stream modes that carry checkpoint chunks.
MODES = frozenset({"checkpoints", "debug"})


class Announcing:
    """A checkpointer that, after each ``put``, sends the checkpoint's chunks to ``sink``;
    everything else is the wrapped checkpointer's."""

    def __init__(
        self, inner: Checkpointer, sink: ChunkSink, run_id: str, codec: Callable[[], RunCodec]
    ) -> None:
        self._inner = inner
        self._sink = sink
        self._run_id = run_id
        self._codec = codec  # how to read what is saved (the run saver's)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def put(self, checkpoint: Checkpoint) -> Checkpoint:
        cp = await self._inner.put(checkpoint)  # as stored: with its id and parent
        payload = checkpoint_payload(self._codec(), cp, self._run_id)
        self._sink("checkpoints", payload)
        self._sink(
            "debug", {"step": cp.step, "timestamp": now(), "type": "checkpoint", "payload": payload}
        )
        return cp


def announcing(saver: RunSaver, sink: ChunkSink | None, modes: frozenset[str]) -> Any:
    """The checkpointer ``saver`` saves through: its own, announcing each save when the run
    streams a mode that shows them."""
    inner = saver.checkpointer
    if inner is None or sink is None or not (modes & MODES):
        return inner
    return Announcing(inner, sink, saver.run_id, lambda: saver.codec)


def checkpoint_payload(codec: RunCodec, cp: Checkpoint, run_id: str) -> dict[str, Any]:
    """LangGraph's ``checkpoints`` chunk for a saved checkpoint."""
    from .checkpoint.history import snapshot

    snap = snapshot(codec, cp)
    tasks = [
        {
            "id": task_id(run_id, cp.step, ref.node, ref.index),
            "name": ref.node,
            "interrupts": (),
            "state": None,
        }
        for ref in cp.next_tasks
    ]
    return {
        "config": snap.config,
        "parent_config": snap.parent_config,
        "values": snap.values,
        "metadata": snap.metadata,
        "next": list(snap.next),
        "tasks": tasks,
    }


__all__ = ["MODES", "Announcing", "announcing", "checkpoint_payload"]

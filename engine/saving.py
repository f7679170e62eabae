"""Where a run stands between steps (``RunCursor``), and saving it after every step.

::

    scheduler, at a barrier --RunCursor--> RunSaver.save  --> checkpoint.snapshot.RunCodec
                                                              (state -> JSON, validated)
                                                          --> Checkpointer.put
    app, to resume  <--RunCursor-- RunSaver.cursor_of(checkpoint)

A cursor is what a checkpoint holds: the state, the step, the step's tasks,
the fan-in bookkeeping, and the writes the step's calls already made (a
step that failed or was stopped keeps those, so a resume runs only the
rest). A save that the run's cancellation interrupts is finished first
(``finish``): a checkpoint is never left half written behind a run.

How often (``RunOptions(durability=...)``): ``"sync"`` writes each step's
checkpoint before the next step starts; ``"async"`` serializes it at the
barrier and writes it while the next step runs (the write before it is
awaited first, so they land in order, and the run ends only once the last
one has: ``flush``); ``"exit"`` writes only the run's last checkpoint (done,
failed or interrupted), none of the running ones, nor the input's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .errors import NodeError
from .interrupts import Asked
from .logs import get_logger
from .plan import deferred_key
from .spec import Send, Task

if TYPE_CHECKING:
    from .checkpoint import Checkpoint, Checkpointer
    from .checkpoint.snapshot import RunCodec
    from .plan import Plan

log = get_logger("engine")

Writes = Mapping[tuple[str, int], Mapping[str, Any]]
Gotos = Mapping[tuple[str, int], tuple[str | Send, ...]]

#: How often a run saves its checkpoints (``RunOptions.durability``).
Durability = Literal["sync", "async", "exit"]
DURABILITIES: tuple[Durability, ...] = ("sync", "async", "exit")


@dataclass
class RunCursor:
    """Where a run stands between steps (what a checkpoint saves).

    Invariant: ``tasks`` are the tasks of step ``step``, sorted by order;
    ``pending`` holds writes already made in step ``step`` by a previous,
    failed (or stopped, or interrupted) attempt at it, ``gotos`` the
    ``Command(goto=...)`` targets of those of them that returned one; ``asked`` the
    questions its tasks asked and nobody answered yet, ``resumes`` the
    answers its interrupted tasks were given so far (``engine.interrupts``).
    """

    state: Any
    step: int
    tasks: list[Task]
    fanin: dict[str, set[str]] = field(default_factory=dict)
    pending: dict[tuple[str, int], Mapping[str, Any]] = field(default_factory=dict)
    asked: list[Asked] = field(default_factory=list)
    resumes: dict[tuple[str, int], tuple[Any, ...]] = field(default_factory=dict)
    gotos: dict[tuple[str, int], tuple[str | Send, ...]] = field(default_factory=dict)
    #: The run stops here on purpose (questions, a breakpoint): saved as ``paused``.
    paused: bool = False

    def todo(self) -> list[Task]:
        """The step's tasks that have not written yet."""
        if not self.pending:
            return self.tasks
        return [t for t in self.tasks if (t.node, t.index) not in self.pending]

    def with_pending(
        self,
        writes: Writes,
        asked: list[Asked] | None = None,
        resumes: Mapping[tuple[str, int], tuple[Any, ...]] | None = None,
        gotos: Gotos | None = None,
    ) -> RunCursor:
        """This step again, with ``writes`` kept for the resume, and the gotos of those
        that returned one (and its open questions, and the answers given so far, when it
        was interrupted). A goto without its write is not kept."""
        return RunCursor(
            self.state,
            self.step,
            self.tasks,
            self.fanin,
            dict(writes),
            list(asked or ()),
            dict(resumes or {}),
            {order: g for order, g in (gotos or {}).items() if order in writes},
        )


class RunSaver:
    """Saves one run's cursors to its thread's checkpointer (or nowhere).

    Invariant: ``active`` exactly when there is a checkpointer and a
    thread; the codec is built once, from the plan the run keeps; at most
    one write is in flight (``async`` durability), and every write starts
    only once the one before it has ended.
    """

    def __init__(
        self,
        plan: Plan,
        checkpointer: Checkpointer | None,
        *,
        thread_id: str | None,
        run_id: str,
        durability: Durability = "sync",
    ) -> None:
        if durability not in DURABILITIES:
            raise ValueError(
                f"unknown durability {durability!r}; use one of {', '.join(DURABILITIES)}"
            )
        self.durability = durability
        self._inflight: asyncio.Future[Any] | None = None
        self.plan = plan
        self.checkpointer = checkpointer
        self.thread_id = thread_id
        self.run_id = run_id
        self.started_at: float | None = None  # time.time() when the run began
        #: The id of the checkpoint the current step runs from, once saved or loaded
        #: (what an interrupt's id is made from); None without a checkpointer.
        self.checkpoint_id: str | None = None
        #: The nodes whose writes made the current step's checkpoint, once saved or loaded:
        #: a step saved again (stopped, failed) keeps them for update_state's ``as_node``.
        self.writers: list[str] | None = None
        #: A subgraph's run: the namespace its checkpoints are saved under ("" for a graph
        #: run on its own), and the checkpoint ids of the runs above it per namespace.
        self.checkpoint_ns = ""
        self.parents: dict[str, str] = {}
        self._codec: RunCodec | None = None

    def __repr__(self) -> str:
        return f"<RunSaver thread={self.thread_id!r} active={self.active}>"

    @property
    def active(self) -> bool:
        return self.checkpointer is not None and self.thread_id is not None

    @property
    def writing(self) -> bool:
        """Whether a checkpoint write is in flight (``async``): until it ends, the id of
        the checkpoint the current step runs from is not known."""
        return self._inflight is not None and not self._inflight.done()

    @property
    def codec(self) -> RunCodec:
        if self._codec is None:
            from .checkpoint.snapshot import RunCodec, Topology

            fanins = {f.key: f.sources for f in self.plan.fanins}
            # A deferred node's held trigger is kept as a fan-in of itself.
            fanins.update({deferred_key(n): frozenset({n}) for n in self.plan.deferred})
            topology = Topology(nodes=frozenset(self.plan.nodes), fanins=fanins)
            self._codec = RunCodec(self.plan.schema, topology, held=self.plan.schema.held)
        return self._codec

    async def save(
        self,
        cursor: RunCursor,
        status: str,
        written: Writes | None = None,
        errors: Mapping[tuple[str, int], BaseException] | None = None,
    ) -> None:
        """Save ``cursor`` with ``status``, to the end even if the run is cancelled meanwhile.

        ``written``: the writes of the step that made ``cursor.state``, to
        name the node behind a value that cannot be saved. ``errors``: the
        step's failed tasks, kept on the checkpoint (``get_state`` shows them).
        """
        if not self.active or (status == "running" and self.durability == "exit"):
            return
        await self.put(self.checkpoint_of(cursor, status, written, errors))

    async def put(self, checkpoint: Checkpoint) -> None:
        """Write a checkpoint made for this run, as its durability says: a running one
        in the background (``async``) or not at all (``exit``); any other now, in order.
        Once written, its id and writers are the current step's (``checkpoint_id``)."""
        if not self.active:
            return
        running = checkpoint.status == "running"
        if running and self.durability == "exit":
            return
        await self.flush()
        if running and self.durability == "async":
            self._inflight = asyncio.ensure_future(self._stored(checkpoint))
            return
        await finish(self._stored(checkpoint))

    async def flush(self, *, quiet: bool = False) -> None:
        """Wait for the write in flight (``async`` durability) to end; its error is raised
        here (logged instead when ``quiet``: the run already fails with its own)."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return
        try:
            await finish(_awaited(inflight))
        except Exception:
            if not quiet:
                raise
            log.exception("checkpoint_failed", thread_id=self.thread_id)

    async def save_stopped(
        self, cursor: RunCursor, writes: Writes, status: str, gotos: Gotos | None = None
    ) -> None:
        """Save a step that was stopped (cancelled, or an engine error) with what it wrote
        (and the gotos of those writes).

        Never raises: the run is already on its way out with its own error.
        """
        if not self.active:
            return
        kept = dict(cursor.pending)
        kept.update(writes)
        # The answers interrupted calls were given are kept too: they are not asked again.
        stopped = cursor.with_pending(
            kept, resumes=cursor.resumes, gotos={**cursor.gotos, **(gotos or {})}
        )
        try:
            await self.flush()
            await finish(self._put(stopped, status, None))
        except Exception:
            log.exception("checkpoint_on_stop_failed", step=cursor.step, status=status)

    async def _put(
        self,
        cursor: RunCursor,
        status: str,
        written: Writes | None,
        errors: Mapping[tuple[str, int], BaseException] | None = None,
    ) -> None:
        await self._stored(self.checkpoint_of(cursor, status, written, errors))

    async def _stored(self, checkpoint: Checkpoint) -> None:
        assert self.checkpointer is not None
        stored = await self.checkpointer.put(checkpoint)
        self.checkpoint_id = stored.checkpoint_id
        self.writers = list(stored.writers)

    def checkpoint_of(
        self,
        cursor: RunCursor,
        status: str,
        written: Writes | None = None,
        errors: Mapping[tuple[str, int], BaseException] | None = None,
    ) -> Checkpoint:
        """The checkpoint of ``cursor`` (``engine.checkpoint.snapshot``), or CheckpointError."""
        cp = self.codec.save(
            thread_id=self.thread_id or "",
            run_id=self.run_id,
            step=cursor.step,
            state=cursor.state,
            tasks=cursor.tasks,
            fanin=cursor.fanin,
            pending=cursor.pending,
            status=status,
            started_at=self.started_at,
            written=written,
            errors={order: _shown(exc) for order, exc in (errors or {}).items()},
            asked=cursor.asked,
            resumes=cursor.resumes,
            paused=cursor.paused,
            writers=self.writers if written is None else None,
            checkpoint_ns=self.checkpoint_ns,
            gotos=cursor.gotos,
        )
        return self.placed(cp)

    def placed(self, cp: Checkpoint) -> Checkpoint:
        """``cp`` with the parents of this run's namespace (a subgraph's run)."""
        if not self.parents:
            return cp
        return cp.model_copy(update={"parents": dict(self.parents)})

    def cursor_of(self, cp: Checkpoint) -> RunCursor:
        """The cursor a checkpoint describes; validated, never executes stored code."""
        restored = self.codec.load(cp)
        self.checkpoint_id = cp.checkpoint_id
        self.writers = list(cp.writers)
        return RunCursor(
            state=restored.state,
            step=restored.step,
            tasks=[Task(t.node, t.index, t.payload, t.has_payload) for t in restored.tasks],
            fanin=restored.fanin,
            pending=restored.pending,
            asked=restored.asked,
            resumes=restored.resumes,
            gotos=restored.gotos,
        )


async def _awaited(future: asyncio.Future[Any]) -> None:
    await future


def _shown(exc: BaseException) -> BaseException:
    """The error a checkpoint keeps for a failed task: the node's own exception where the
    engine's error wraps one (its ``__cause__``), as LangGraph shows it."""
    if isinstance(exc, NodeError) and exc.__cause__ is not None:
        return exc.__cause__
    return exc


async def finish(save: Coroutine[Any, Any, None]) -> None:
    """Await a checkpoint write to its end even when cancelled, then let the cancel through.

    Scenario: the run is cancelled while a step's checkpoint is being
    written. ``shield`` alone would raise at once and leave the write running
    unsupervised past the run's end (and past the release of the thread's
    lock); here the cancelled run waits for the write, then stops.
    """
    task = asyncio.ensure_future(save)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            log.error("checkpoint_failed_while_cancelling", error=repr(task.exception()))
        raise


__all__ = ["DURABILITIES", "Durability", "RunCursor", "RunSaver", "finish"]

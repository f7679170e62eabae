"""``CompiledGraph``: the runnable face of a plan (arun, ainvoke, invoke, astream, explain)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, MutableMapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel

from .errors import CheckpointError
from .events import Event
from .lanes import MODES, LaneRunner, Mode
from .plan import Plan
from .scheduler import RunCursor, RunResult, Scheduler

if TYPE_CHECKING:
    from .checkpoint import Checkpointer

log = structlog.get_logger("engine")


@dataclass(frozen=True)
class ExplainRow:
    node: str
    lane: str
    reason: str
    source: str


@dataclass(frozen=True)
class Explanation:
    """One row per node: which lane it runs on and why. Prints as a table."""

    rows: tuple[ExplainRow, ...]

    def __iter__(self) -> Any:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def lane_of(self, node: str) -> str:
        for row in self.rows:
            if row.node == node:
                return row.lane
        raise KeyError(node)

    def __str__(self) -> str:
        headers = ("node", "lane", "decided by", "reason")
        table = [headers] + [(r.node, r.lane, r.source, r.reason) for r in self.rows]
        widths = [max(len(row[i]) for row in table) for i in range(3)]
        lines = []
        for i, row in enumerate(table):
            cells = [row[j].ljust(widths[j]) for j in range(3)] + [row[3]]
            lines.append("  ".join(cells).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
        return "\n".join(lines)


class _Sinks:
    """Event observers. Invariant: a sink that raised once is dropped (and logged once)."""

    def __init__(self, sinks: list[Callable[[Any], None]]) -> None:
        self._sinks = list(sinks)

    def __call__(self, event: Any) -> None:
        for sink in list(self._sinks):
            try:
                sink(event)
            except Exception:
                self._sinks.remove(sink)
                log.exception("event_sink_failed_and_dropped", sink=repr(sink))


class CompiledGraph:
    """A validated graph, ready to run any number of times, in any mode.

    Invariant: ``plan`` never changes after compile; per-run state lives in
    the ``Scheduler`` each run creates.
    """

    def __init__(self, plan: Plan, *, checkpointer: Checkpointer | None = None) -> None:
        self.plan = plan
        self.checkpointer = checkpointer
        # Pickled node functions, reused across runs (a node's function never changes).
        self._fn_cache: MutableMapping[str, bytes] = {}

    def __repr__(self) -> str:
        return f"<CompiledGraph nodes={list(self.plan.nodes)}>"

    def explain(self) -> Explanation:
        """Lane and reason for every node."""
        return Explanation(
            tuple(
                ExplainRow(name, node.decision.lane, node.decision.reason, node.decision.source)
                for name, node in self.plan.nodes.items()
            )
        )

    async def arun(
        self,
        input: BaseModel | dict[str, Any] | None,
        *,
        mode: Mode = "parallel",
        executor: Executor | None = None,
        thread_id: str | None = None,
        recursion_limit: int = 100,
        on_event: Callable[[Any], None] | None = None,
    ) -> RunResult:
        """Run the graph to the end; ``input=None`` resumes ``thread_id``."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        if recursion_limit < 1:
            raise ValueError(f"recursion_limit must be >= 1, got {recursion_limit}")
        if thread_id is not None and self.checkpointer is None:
            raise ValueError(
                f"thread_id={thread_id!r} needs a checkpointer: compile(checkpointer=...)"
            )
        if input is None and thread_id is None:
            raise ValueError("arun(None) resumes a thread: pass thread_id= (and a checkpointer)")
        # Validate before anything runs (pydantic ValidationError on bad input).
        state = self.plan.schema.validate_input(input) if input is not None else None
        run_id = uuid.uuid4().hex[:12]
        runner = LaneRunner(mode, executor, fn_cache=self._fn_cache)
        scheduler = Scheduler(
            self.plan,
            runner,
            run_id=run_id,
            thread_id=thread_id,
            recursion_limit=recursion_limit,
            checkpointer=self.checkpointer,
            emit=_Sinks([on_event] if on_event else []),
        )
        cp = self.checkpointer
        try:
            if cp is not None and thread_id is not None:
                await cp.acquire(thread_id, run_id)
            try:
                cursor = await self._cursor(scheduler, state, thread_id)
                return await scheduler.run(cursor, resumed=state is None)
            finally:
                if cp is not None and thread_id is not None:
                    await asyncio.shield(cp.release(thread_id, run_id))
        finally:
            await asyncio.shield(runner.aclose())

    async def _cursor(
        self, scheduler: Scheduler, state: BaseModel | None, thread_id: str | None
    ) -> RunCursor:
        latest = None
        if self.checkpointer is not None and thread_id is not None:
            latest = await self.checkpointer.get_latest(thread_id)
        if state is None:
            if latest is None:
                raise CheckpointError(
                    f"thread {thread_id!r} has no checkpoint to resume; start it with an input"
                )
            return scheduler.from_checkpoint(latest)
        if latest is not None and latest.status != "done":
            raise CheckpointError(
                f"thread {thread_id!r} has an unfinished run (step {latest.step}, "
                f"{latest.status}); resume it with arun(None, thread_id={thread_id!r}) "
                "or use a new thread_id"
            )
        # A new input on a finished thread continues its step numbering.
        return scheduler.start_cursor(state, step=latest.step + 1 if latest else 0)

    async def ainvoke(self, input: BaseModel | dict[str, Any] | None, **kwargs: Any) -> BaseModel:
        """Run and return only the final state."""
        return (await self.arun(input, **kwargs)).state

    def invoke(self, input: BaseModel | dict[str, Any] | None, **kwargs: Any) -> BaseModel:
        """Synchronous ``ainvoke`` on a fresh event loop (uvloop when importable)."""
        return run_sync(self.ainvoke(input, **kwargs))

    def run(self, input: BaseModel | dict[str, Any] | None, **kwargs: Any) -> RunResult:
        """Synchronous ``arun`` on a fresh event loop (uvloop when importable)."""
        return run_sync(self.arun(input, **kwargs))

    async def astream(
        self, input: BaseModel | dict[str, Any] | None, **kwargs: Any
    ) -> AsyncIterator[Event]:
        """Yield typed events as they happen; raises the run's error at the end."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        done = object()
        user_sink = kwargs.pop("on_event", None)

        def sink(event: Any) -> None:
            queue.put_nowait(event)
            if user_sink is not None:
                user_sink(event)

        task = asyncio.create_task(self.arun(input, on_event=sink, **kwargs))
        task.add_done_callback(lambda _: queue.put_nowait(done))
        try:
            while True:
                item = await queue.get()
                if item is done:
                    break
                yield item
            task.result()  # re-raise the run's error, if any
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


def run_sync(coro: Any) -> Any:
    """Run a coroutine to completion on a new loop: uvloop's when it is installed.

    SIGINT and SIGTERM (in the main thread) cancel the coroutine instead of
    killing the process where it stands: a run stops dispatching, cancels its
    io calls and kills its cpu calls' workers, and saves the writes of the
    nodes that finished as pending writes. Then SIGINT raises
    ``KeyboardInterrupt`` (asyncio's own behaviour) and SIGTERM raises
    ``SystemExit(128 + SIGTERM)``, the exit status a shell expects.
    """
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:  # uvloop is optional (e.g. on Windows)
        factory = None
    terminated: list[int] = []
    with asyncio.Runner(loop_factory=factory) as runner:
        # asyncio.Runner turns SIGINT into a cancellation of the main task
        # already; SIGTERM gets the same treatment here.
        try:
            return runner.run(_cancel_on_sigterm(coro, terminated))
        except asyncio.CancelledError:
            if not terminated:
                raise
    raise SystemExit(128 + terminated[0])


async def _cancel_on_sigterm(coro: Any, terminated: list[int]) -> Any:
    import signal
    import threading

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def on_sigterm() -> None:
        terminated.append(int(signal.SIGTERM))
        task.cancel()

    installed = False
    if threading.current_thread() is threading.main_thread():
        try:
            loop.add_signal_handler(signal.SIGTERM, on_sigterm)
            installed = True
        except (NotImplementedError, RuntimeError, ValueError):  # e.g. Windows
            pass
    try:
        return await coro
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGTERM)

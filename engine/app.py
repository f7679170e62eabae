"""``CompiledGraph``: the runnable face of a plan (arun, ainvoke, invoke, astream, explain)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, MutableMapping
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from .errors import CheckpointError
from .events import Event
from .lanes import MODES, LaneRunner, Mode
from .lanes.pool import default_workers, executor_workers
from .lanes.worker import Resources
from .lean import estimate_payload
from .logs import get_logger
from .plan import Plan
from .profile import MeasuredPolicy, Profile, measure_dispatch, redecide
from .resources import Budgets, Rate
from .scheduler import RunCursor, RunResult, Scheduler
from .warm import parse_size, workers_for_memory
from .watchdog import DEFAULT_THRESHOLD_S, LoopWatchdog

if TYPE_CHECKING:
    from .checkpoint import Checkpointer

log = get_logger("engine")


@dataclass(frozen=True)
class ExplainRow:
    node: str
    lane: str
    reason: str
    source: str
    measured: str = ""  # the profile's numbers for the node
    change: str = ""  # "cpu -> thread" when the next run moves it
    reads: str = ""  # lean dispatch: what it receives of the state


@dataclass(frozen=True)
class Explanation:
    """One row per node: which lane it runs on and why. Prints as a table.

    ``changes`` lists what changed since the last run (lanes, then numbers);
    ``warnings`` the cpu nodes whose payload costs more to send than compute.
    """

    rows: tuple[ExplainRow, ...]
    changes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

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
        measured = [f"  {r.node}: {r.measured}" for r in self.rows if r.measured]
        reads = [f"  {r.node}: {r.reads}" for r in self.rows if r.reads]
        for title, items in (
            ("measured:", measured),
            ("lean dispatch:", reads),
            ("changed since the last run:", [f"  {c}" for c in self.changes]),
            ("warnings:", [f"  {w}" for w in self.warnings]),
        ):
            if items:
                lines += ["", title, *items]
        return "\n".join(lines)


class _Sinks:
    """Event observers. Invariant: a sink that raised once is dropped (and logged once)."""

    def __init__(self, sinks: list[Callable[[Any], None]]) -> None:
        self._sinks = list(sinks)

    def __bool__(self) -> bool:
        """False when nobody listens: the scheduler then skips building per-call events."""
        return bool(self._sinks)

    def __call__(self, event: Any) -> None:
        for sink in list(self._sinks):
            try:
                sink(event)
            except Exception:
                self._sinks.remove(sink)
                log.exception("event_sink_failed_and_dropped", sink=repr(sink))


class CompiledGraph:
    """A validated graph, ready to run any number of times, in any mode.

    Invariant: ``plan`` is replaced only between runs, when the profile moves
    an undeclared node's lane (``_plan_for_run``); a run keeps the plan it
    started with, so a decision never changes mid-step. Per-run state lives
    in the ``Scheduler`` each run creates; ``profile`` learns from every run.
    """

    def __init__(
        self,
        plan: Plan,
        *,
        checkpointer: Checkpointer | None = None,
        profile: Profile | None = None,
        profile_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.plan = plan
        self.checkpointer = checkpointer
        self.profile = profile if profile is not None else Profile()
        self._profile_path = profile_path
        # Pickled node functions, reused across runs (a node's function never changes).
        self._fn_cache: MutableMapping[str, bytes] = {}
        # worker_init resources built in this process (in-driver lanes), kept across runs.
        self._resources = Resources()
        # Pool sizes decided from memory hints: (hint, size) -> workers. Decided once:
        # later runs would count this app's own warm workers' memory as taken.
        self._caps: dict[tuple[int, int], int] = {}

    def __repr__(self) -> str:
        return f"<CompiledGraph nodes={list(self.plan.nodes)}>"

    def explain(self) -> Explanation:
        """Lane and reason for every node as the next run will decide them, with the
        numbers behind each decision and what changed since the last run."""
        upcoming = redecide(self.plan.nodes, self.profile.policy())
        last = self.profile.decisions
        dispatch = self.profile.dispatch
        rows, warnings = [], []
        for name, node in self.plan.nodes.items():
            d = upcoming.get(name, node.decision)
            before = last.get(name)
            change = f"{before.lane} -> {d.lane}" if before and before.lane != d.lane else ""
            rows.append(
                ExplainRow(
                    name,
                    d.lane,
                    d.reason,
                    d.source,
                    measured=self.profile.summary(name) if name in self.profile else "",
                    change=change,
                    reads=node.reads.describe() if node.reads else "",
                )
            )
            est = estimate_payload(name, self.profile.get(name), dispatch)
            if d.lane == "cpu" and est is not None and est.costs_more_to_send:
                warnings.append(est.message())
        changes = [f"{r.node}: {r.change} ({r.reason})" for r in rows if r.change]
        changes += [d.describe() for d in self.profile.diff() if d.before and d.before.calls]
        return Explanation(tuple(rows), changes=tuple(changes), warnings=tuple(warnings))

    def save_profile(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the measured profile as JSON (``compile(profile=path)`` reads it back)."""
        target = path if path is not None else self._profile_path
        if target is None:
            raise ValueError(
                "save_profile() needs a path: app.save_profile('profile.json'), or "
                "compile(profile='profile.json') to read and save the same file"
            )
        return self.profile.save(target)

    def warm(self, executor: Executor | None = None, *, timeout: float = 60.0) -> int:
        """Start the cpu lane's worker processes now; returns how many the lane has.

        A process pool starts its workers on its first call: without this, the
        first ``parallel`` run in a process pays for starting them (0.4-2 s on
        2 cores, more on a busy machine) inside its first step, and a worker
        still starting can leave its share of that step's calls to another.
        ``warm()`` returns once every worker has answered, so the first run
        finds them all. ``executor``: the one you will pass to ``arun`` (the
        default pool, sized as this graph's runs size it, otherwise). A thread
        pool has nothing to start. Blocking: from async code, ``await
        asyncio.to_thread(app.warm)``.
        """
        from concurrent.futures import ThreadPoolExecutor

        from .lanes.pool import default_executor
        from .lanes.pool import warm as start_workers

        if executor is None:
            size = _pool_cap(self.plan, "parallel", None, None, "warm", self._caps)
            executor = default_executor(size)
        if not isinstance(executor, ThreadPoolExecutor):
            start_workers(executor, timeout=timeout)
        return executor_workers(executor)

    def _plan_for_run(self) -> tuple[Plan, MeasuredPolicy]:
        """Decide undeclared lanes from the profile: between runs, never mid-step."""
        policy = self.profile.policy()
        decisions = redecide(self.plan.nodes, policy)
        if any(self.plan.nodes[n].decision != d for n, d in decisions.items()):
            self.plan = self.plan.with_decisions(decisions)
        self.profile.apply_decisions({n: node.decision for n, node in self.plan.nodes.items()})
        return self.plan, policy

    async def _measure_dispatch(self, runner: LaneRunner, scheduler: Scheduler) -> None:
        """After a parallel run that used the pool, measure its dispatch cost once."""
        if self.profile.dispatch is not None or not any(
            c.lane == "cpu" and c.pid != os.getpid() for c in scheduler.calls
        ):
            return
        try:
            self.profile.observe_dispatch(await measure_dispatch(runner.process_executor))
        except Exception:  # a measurement must never fail the run it follows
            log.exception("dispatch_measurement_failed")

    async def arun(
        self,
        input: BaseModel | dict[str, Any] | None,
        *,
        mode: Mode = "parallel",
        executor: Executor | None = None,
        thread_id: str | None = None,
        recursion_limit: int = 100,
        on_event: Callable[[Any], None] | None = None,
        limits: Mapping[str, int] | None = None,
        rates: Mapping[str, str | Rate] | None = None,
        max_concurrency: Mapping[str, int] | None = None,
        loop_threshold: float | None = DEFAULT_THRESHOLD_S,
        memory_per_worker: int | str | None = None,
    ) -> RunResult:
        """Run the graph to the end; ``input=None`` resumes ``thread_id``.

        ``limits``/``rates`` budget the resources nodes declare
        (``add_node(..., resources=...)``) across the whole run, Send fan-outs
        included; ``max_concurrency`` caps calls per lane; ``loop_threshold``
        (seconds, None to disable) is when the watchdog reports a blocked loop.
        ``memory_per_worker`` (bytes, or ``"2GB"``; the largest of it and the
        cpu nodes' own hints counts) caps the process pool at what the memory
        available now can hold.
        """
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
        budgets = None
        if limits or rates or max_concurrency:
            budgets = Budgets(limits=limits, rates=rates, max_concurrency=max_concurrency)
            for name, node in self.plan.nodes.items():
                budgets.check_node(name, node.spec.resources)
        plan, policy = self._plan_for_run()
        run_id = uuid.uuid4().hex[:12]
        pool_size = _pool_cap(plan, mode, executor, memory_per_worker, run_id, self._caps)
        runner = LaneRunner(
            mode,
            executor,
            fn_cache=self._fn_cache,
            resources=self._resources,
            pool_size=pool_size,
            memory_limit=parse_size(memory_per_worker) if memory_per_worker is not None else None,
        )
        emit = _Sinks([on_event] if on_event else [])
        watchdog = None
        if loop_threshold is not None and mode != "sequential":
            # Sequential mode runs everything on the loop by design: nothing to guard.
            watchdog = LoopWatchdog(
                threshold_s=loop_threshold,
                interval_s=min(0.01, loop_threshold / 2),
                run_id=run_id,
                emit=emit,
            )
        scheduler = Scheduler(
            plan,
            runner,
            run_id=run_id,
            thread_id=thread_id,
            recursion_limit=recursion_limit,
            checkpointer=self.checkpointer,
            emit=emit,
            watchdog=watchdog,
            budgets=budgets,
            measured=policy,
        )
        cp = self.checkpointer
        try:
            if cp is not None and thread_id is not None:
                await cp.acquire(thread_id, run_id)
            try:
                cursor = await self._cursor(scheduler, state, thread_id)
                result = await scheduler.run(cursor, resumed=state is None)
            finally:
                # Learn from every run, failed ones too (between runs: the next
                # run's plan reads it, this one's never does).
                blamed = watchdog.blamed() if watchdog is not None else None
                self.profile.observe_run(scheduler.calls, blamed=blamed)
                if cp is not None and thread_id is not None:
                    await asyncio.shield(cp.release(thread_id, run_id))
            await self._measure_dispatch(runner, scheduler)
            return result
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
                f"{latest.status}); resume it with arun(None, thread_id={thread_id!r}), "
                f"abandon it with `await checkpointer.delete_thread({thread_id!r})`, "
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
        # The user's observer is dropped on its own when it raises; the stream's
        # queue must keep receiving every event regardless.
        observers = _Sinks([user_sink] if user_sink is not None else [])

        def sink(event: Any) -> None:
            queue.put_nowait(event)
            observers(event)

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


def _pool_cap(
    plan: Plan,
    mode: str,
    executor: Executor | None,
    memory_per_worker: int | str | None,
    run_id: str,
    decided: dict[tuple[int, int], int],
) -> int | None:
    """How many workers the memory hints allow this run (None: no hint, no cap).

    ``decided`` keeps the answer per (hint, pool size) for the app's later
    runs: by then its own warm workers hold memory that is theirs already.
    """
    hints = [
        n.spec.memory_per_worker
        for n in plan.nodes.values()
        if n.lane == "cpu" and n.spec.memory_per_worker is not None
    ]
    if memory_per_worker is not None:
        hints.append(parse_size(memory_per_worker))
    if not hints or mode != "parallel":
        return None
    size = executor_workers(executor) if executor is not None else default_workers()
    key = (max(hints), size)
    if key not in decided:
        cap = workers_for_memory(max(hints), max_workers=size)
        if cap.workers < size:
            log.warning(
                "pool_capped_by_memory", run_id=run_id, workers=cap.workers, reason=cap.reason
            )
        decided[key] = cap.workers
    return decided[key]


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

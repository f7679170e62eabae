"""``CompiledGraph``: the runnable face of a plan (arun, ainvoke, invoke, astream, explain).

It wires one run's parts together, each with one concern::

    RunOptions -> Lanes (where calls run)            -> Dispatcher (a step's calls)
               -> Recorder (events, logs, trace)     -> Scheduler (route, dispatch,
               -> RunSaver (checkpoints)                barrier, merge, save)
               -> LoopWatchdog (the loop's guard)
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from typing_extensions import Unpack

from .context import RunContext, enter, leave
from .context import current as current_context
from .dispatch import Dispatcher, Route, plan_routes
from .drawing import Drawing
from .errors import GraphError, NodeError, own_error
from .events import Event
from .explain import ExplainRow, Explanation
from .interrupts import breakpoints as _breakpoints
from .interrupts import joined, shown_values
from .lanes import Lanes, Mode
from .lanes.measure import Resources
from .lanes.pool import default_workers, executor_workers, measure_dispatch
from .lean import estimate_payload
from .logs import get_logger
from .options import RunKwargs, RunOptions, merged_options
from .plan import Plan
from .profile import MeasuredPolicy, Profile, redecide
from .recorder import EventSink, Recorder
from .resources import Budgets, SystemClock
from .running import run_sync
from .savedchunks import announcing
from .saving import RunSaver
from .scheduler import RunResult, Scheduler
from .streaming import (
    ChunkSink,
    NestedChunk,
    chunks_of,
    iterate_sync,
    parse_modes,
    shape_debug,
    streaming_modes,
)
from .subgraphs import (
    SubgraphInterrupt,
    child,
    chunk_forwarder,
    handing_to_parent,
    inherited_config,
    inherited_thread,
    namespace_of,
    nested_cursor,
    nested_saver,
    nested_state,
    parent_run,
    root,
    task_states,
)
from .subgraphs import enter as enter_parent
from .subgraphs import leave as leave_parent
from .threads import (
    NO_RESUME,
    StateSnapshot,
    Target,
    answered,
    get_state,
    get_state_history,
    resume_of,
    run_cursor,
    update_state,
)
from .warm import parse_size, workers_for_memory
from .watchdog import LoopWatchdog

if TYPE_CHECKING:
    from .cache import NodeCache
    from .checkpoint import Checkpointer

S = TypeVar("S")
T = TypeVar("T")

log = get_logger("engine")


class _Sinks:
    """Event observers. Invariant: a sink that raised once is dropped (and logged once)."""

    def __init__(self, sinks: list[EventSink]) -> None:
        self._sinks = list(sinks)

    def __bool__(self) -> bool:
        """False when nobody listens: the run then skips building per-call events."""
        return bool(self._sinks)

    def __call__(self, event: Event) -> None:
        for sink in list(self._sinks):
            try:
                sink(event)
            except Exception:
                self._sinks.remove(sink)
                log.exception("event_sink_failed_and_dropped", sink=repr(sink))


class CompiledGraph(Generic[S]):
    """A validated graph, ready to run any number of times, in any mode.

    ``S`` is the state's type: ``ainvoke`` returns one, ``arun``'s result
    holds one.

    Invariant: ``plan`` is replaced only between runs, when the profile moves
    an undeclared node's lane (``_plan_for_run``); a run keeps the plan it
    started with, so a decision never changes mid-step. Per-run state lives
    in the parts each run wires (``arun``); ``profile`` learns from every run.
    """

    def __init__(
        self,
        plan: Plan,
        *,
        checkpointer: Checkpointer | None = None,
        profile: Profile | None = None,
        profile_path: str | os.PathLike[str] | None = None,
        cache: NodeCache | None = None,
        interrupt_before: Sequence[str] | str | None = None,
        interrupt_after: Sequence[str] | str | None = None,
    ) -> None:
        self.plan = plan
        self.checkpointer = checkpointer
        #: Breakpoints (``compile(interrupt_before=..., interrupt_after=...)``).
        self.interrupt_before = _breakpoints(plan.nodes, interrupt_before, "interrupt_before")
        self.interrupt_after = _breakpoints(plan.nodes, interrupt_after, "interrupt_after")
        #: Where results of nodes with a ``cache_policy`` are kept (``compile(cache=...)``).
        self.cache = cache
        self.profile = profile if profile is not None else Profile()
        self._profile_path = profile_path
        # Pickled node functions, reused across runs (a node's function never changes).
        self._fn_cache: MutableMapping[str, bytes] = {}
        # The same for this graph's runs as a subgraph (its nodes hand Command.PARENT up),
        # and the plan they run: (plan it was made from, the plan as a subgraph).
        self._nested_fn_cache: MutableMapping[str, bytes] = {}
        self._nested_plan: tuple[Plan, Plan] | None = None
        # worker_init resources built in this process (in-driver lanes), kept across runs.
        self._resources = Resources()
        # Pool sizes decided from memory hints: (hint, size) -> workers. Decided once:
        # later runs would count this app's own warm workers' memory as taken.
        self._caps: dict[tuple[int, int], int] = {}
        # Routes of runs without budgets, per (mode, guarded), for the current plan.
        self._routes: tuple[Plan, dict[tuple[str, bool], dict[str, Route]]] = (plan, {})
        #: How this app's chunks look to a stream (``values`` shown as the app returns its
        #: state...): ``engine.langgraph`` puts LangGraph's shapes here. A subgraph's chunks
        #: are shaped by its own app's.
        self.shape_chunk: Callable[[str, Any], Any] = self._native_shape

    def _native_shape(self, mode: str, chunk: Any) -> Any:
        if mode == "values":
            return shown_values(chunk, self.plan.schema.final)
        if mode == "debug":
            return shape_debug(chunk, self.plan.schema.final)
        return chunk

    def __repr__(self) -> str:
        return f"<CompiledGraph nodes={list(self.plan.nodes)}>"

    # -- the state API (needs a checkpointer) --------------------------------------
    # ``thread``: a thread id, or a LangGraph-style config naming the thread (and a
    # checkpoint: ``{"configurable": {"thread_id": ..., "checkpoint_id": ...}}``).

    async def aget_state(
        self, thread: Target, checkpoint_id: str | None = None, *, subgraphs: bool = False
    ) -> StateSnapshot:
        """The thread's state at ``checkpoint_id`` (its latest when None): values, next
        tasks, config, metadata, created_at, parent_config, tasks. A task that runs a
        subgraph shows the config of the subgraph's namespace as its ``state``, or with
        ``subgraphs=True`` the subgraph's own snapshot; a config naming a subgraph's
        namespace (``checkpoint_ns``) gives that subgraph's state."""
        if namespace_of(thread):
            return await nested_state(self, thread, checkpoint_id, subgraphs=subgraphs)
        snap = await get_state(self.plan, self.checkpointer, thread, checkpoint_id)
        return await task_states(self, self.checkpointer, snap, subgraphs=subgraphs)

    def get_state(
        self, thread: Target, checkpoint_id: str | None = None, *, subgraphs: bool = False
    ) -> StateSnapshot:
        return run_sync(self.aget_state(thread, checkpoint_id, subgraphs=subgraphs))

    async def aget_state_history(
        self,
        thread: Target,
        *,
        before: Target | None = None,
        limit: int | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> list[StateSnapshot]:
        """The thread's snapshots, newest first, across every branch (forks included)."""
        return await get_state_history(
            self.plan, self.checkpointer, thread, before=before, limit=limit, filter=filter
        )

    def get_state_history(
        self,
        thread: Target,
        *,
        before: Target | None = None,
        limit: int | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> list[StateSnapshot]:
        return run_sync(self.aget_state_history(thread, before=before, limit=limit, filter=filter))

    async def aupdate_state(
        self,
        thread: Target,
        values: object,
        *,
        as_node: str | None = None,
        checkpoint_id: str | None = None,
    ) -> dict[str, Any]:
        """Write ``values`` through the reducers as if ``as_node`` had returned them, as a
        new checkpoint; the next tasks are what routing after ``as_node`` gives. Returns the
        config naming the new checkpoint."""
        return await update_state(
            self.plan,
            self.checkpointer,
            thread,
            values,
            as_node=as_node,
            checkpoint_id=checkpoint_id,
        )

    def update_state(
        self,
        thread: Target,
        values: object,
        *,
        as_node: str | None = None,
        checkpoint_id: str | None = None,
    ) -> dict[str, Any]:
        return run_sync(
            self.aupdate_state(thread, values, as_node=as_node, checkpoint_id=checkpoint_id)
        )

    def get_graph(self) -> Drawing:
        """The graph's nodes and edges, to draw: ``app.get_graph().draw_mermaid()``."""
        return Drawing.of(self.plan)

    def clear_cache(self, nodes: Sequence[str] | None = None) -> None:
        """Forget the cached results of every node (of ``nodes`` only, when given)."""
        if self.cache is None:
            return
        if nodes is not None:
            unknown = [n for n in nodes if n not in self.plan.nodes]
            if unknown:
                raise GraphError(f"clear_cache(nodes=...) names unknown nodes {unknown}")
        self.cache.clear(None if nodes is None else list(nodes))

    async def aclear_cache(self, nodes: Sequence[str] | None = None) -> None:
        """``clear_cache`` off the event loop (a SQLite cache writes a file)."""
        await asyncio.to_thread(self.clear_cache, nodes)

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

    def _as_subgraph(self, plan: Plan) -> Plan:
        """``plan`` for a run inside a node of another run (kept while ``plan`` is)."""
        if self._nested_plan is None or self._nested_plan[0] is not plan:
            self._nested_plan = (plan, handing_to_parent(plan))
        return self._nested_plan[1]

    def _routes_for(self, plan: Plan, mode: Mode, guarded: bool) -> dict[str, Route]:
        """The routes of ``plan`` in ``mode``, decided once per plan (lanes change between runs)."""
        kept, by_mode = self._routes
        if kept is not plan:
            by_mode = {}
            self._routes = (plan, by_mode)
        routes = by_mode.get((mode, guarded))
        if routes is None:
            routes = by_mode[(mode, guarded)] = plan_routes(plan, mode, guarded=guarded)
        return routes

    async def _measure_dispatch(self, lanes: Lanes, recorder: Recorder) -> None:
        """After a parallel run that used the pool, measure its dispatch cost once."""
        if self.profile.dispatch is not None or not lanes.used_pool:
            return
        if not any(c.lane == "cpu" and c.pid != os.getpid() for c in recorder.calls):
            return
        try:
            self.profile.observe_dispatch(await measure_dispatch(lanes.process_executor))
        except Exception:  # a measurement must never fail the run it follows
            log.exception("dispatch_measurement_failed")

    async def arun(
        self,
        input: S | Mapping[str, Any] | None,
        options: RunOptions | None = None,
        /,
        **kwargs: Unpack[RunKwargs],
    ) -> RunResult[S]:
        """Run the graph to the end; ``input=None`` resumes ``thread_id``.

        Options (``RunOptions``, or the same names as keywords): ``mode``,
        ``executor``, ``thread_id``, ``recursion_limit``, ``on_event``,
        ``limits``/``rates`` (budget the resources nodes declare with
        ``add_node(..., resources=...)``, across the whole run, Send fan-outs
        included), ``max_concurrency`` (calls per lane), ``loop_threshold``
        (seconds before the watchdog reports a blocked loop; None: off),
        ``memory_per_worker`` (bytes, or ``"2GB"``; the largest of it and the
        cpu nodes' own hints caps the process pool at what the memory
        available now can hold), ``clock``.
        """
        opts = merged_options(options, kwargs)
        parent = parent_run()
        above = None  # the saver of the run this one is nested in, when it saves for both
        calling = current_context()
        if parent is not None:
            # Called inside a node of another run: a subgraph of it, in its mode, on its
            # executor, its chunks to the root stream under its own namespace, the calling
            # task's config its own when it was given none (as LangGraph passes it down).
            me = child(parent)
            opts = dataclasses.replace(
                opts,
                mode=parent.mode,  # type: ignore[arg-type]
                executor=parent.executor if parent.executor is not None else opts.executor,
                context=opts.context if opts.context is not None else parent.context,
                on_chunk=opts.on_chunk or chunk_forwarder(me, self.shape_chunk),
                config=opts.config or inherited_config(calling),
            )
            above = inherited_thread(parent, me, self.checkpointer)
        else:
            me = root(opts.mode, opts.executor, opts.context)
        answers = calling.answers if parent is not None and calling is not None else ()
        resume = resume_of(input)
        input = None if resume is not NO_RESUME else input
        thread_id = opts.thread_id if above is None else above.thread_id
        if above is not None:
            pass  # a subgraph's run saves to the thread of the run it is nested in
        elif thread_id is not None and self.checkpointer is None and opts.thread_from_config:
            # As in LangGraph: without a checkpointer a config's thread_id is only a name
            # the nodes see; nothing is saved.
            thread_id = None
        elif thread_id is not None and self.checkpointer is None:
            raise ValueError(
                f"thread_id={thread_id!r} needs a checkpointer: compile(checkpointer=...)"
            )
        if input is None and thread_id is None:
            raise ValueError("arun(None) resumes a thread: pass thread_id= (and a checkpointer)")
        # Validate before anything runs (pydantic ValidationError on bad input).
        state = self.plan.schema.validate_input(input) if input is not None else None
        clock = opts.clock or SystemClock()
        budgets = None
        if opts.limits or opts.rates or opts.max_concurrency:
            budgets = Budgets(
                limits=opts.limits,
                rates=opts.rates,
                max_concurrency=opts.max_concurrency,
                clock=clock,
            )
            for name, node in self.plan.nodes.items():
                budgets.check_node(name, node.spec.resources)
        plan, policy = self._plan_for_run()
        if parent is not None:
            plan = self._as_subgraph(plan)
        run_id = uuid.uuid4().hex[:12]
        run_context = self._run_context(plan, opts, run_id)  # TypeError here, before anything

        mode = opts.mode
        sinks = _Sinks([opts.on_event] if opts.on_event else [])
        watchdog = None
        if opts.loop_threshold is not None and mode != "sequential":
            # Sequential mode runs everything on the loop by design: nothing to guard.
            watchdog = LoopWatchdog(
                threshold_s=opts.loop_threshold,
                interval_s=min(0.01, opts.loop_threshold / 2),
                run_id=run_id,
                emit=sinks,
            )
        memory = opts.memory_per_worker
        lanes = Lanes(
            mode,
            opts.executor,
            fn_cache=self._fn_cache if parent is None else self._nested_fn_cache,
            resources=self._resources,
            pool_size=_pool_cap(plan, mode, opts.executor, memory, run_id, self._caps),
            memory_limit=parse_size(memory) if memory is not None else None,
            guard=watchdog,
        )
        recorder = Recorder(
            run_id,
            thread_id=thread_id,
            mode=mode,
            sink=sinks,
            clock=clock,
            watchdog=watchdog,
            budgets=budgets,
            chunks=opts.on_chunk,
        )
        dispatcher = Dispatcher(
            plan,
            lanes,
            recorder,
            clock=clock,
            budgets=budgets,
            watchdog=watchdog,
            measured=policy,
            cache=self.cache,
            routes=self._routes_for(plan, mode, watchdog is not None) if budgets is None else None,
        )
        saver = RunSaver(
            plan,
            self.checkpointer if above is None else above.checkpointer,
            thread_id=thread_id,
            run_id=run_id,
            durability=opts.durability,
        )
        if above is not None:
            saver = nested_saver(saver, above, me)
        me = dataclasses.replace(me, saver=saver)
        saver.checkpointer = announcing(saver, opts.on_chunk, streaming_modes())
        scheduler = Scheduler(
            plan,
            dispatcher,
            recorder,
            saver,
            clock=clock,
            recursion_limit=opts.recursion_limit,
            interrupt_before=joined(
                self.interrupt_before,
                _breakpoints(plan.nodes, opts.interrupt_before, "interrupt_before"),
            ),
            interrupt_after=joined(
                self.interrupt_after,
                _breakpoints(plan.nodes, opts.interrupt_after, "interrupt_after"),
            ),
            checkpoint_ns=saver.checkpoint_ns,
        )
        entered = enter(run_context)
        attached = enter_parent(me)
        cp = self.checkpointer if above is None else None  # the thread's lock: the root's
        try:
            if cp is not None and thread_id is not None:
                await cp.acquire(thread_id, run_id)
            try:
                if above is not None:
                    cursor, resumed = await nested_cursor(saver, state, input, answers)
                else:
                    resumed = state is None
                    cursor = await run_cursor(
                        self.checkpointer,
                        saver,
                        state,
                        thread_id,
                        opts.checkpoint_id,
                        input,
                        start=scheduler.start_cursor,
                    )
                if resume is not NO_RESUME:
                    cursor = answered(cursor, resume, thread_id or "", plan)
                if watchdog is None:
                    result = await scheduler.run(cursor, resumed=resumed)
                else:
                    async with watchdog:
                        result = await scheduler.run(cursor, resumed=resumed)
            finally:
                # Learn from every run, failed ones too (between runs: the next
                # run's plan reads it, this one's never does).
                blamed = watchdog.blamed() if watchdog is not None else None
                self.profile.observe_run(recorder.calls, blamed=blamed)
                if cp is not None and thread_id is not None:
                    await asyncio.shield(cp.release(thread_id, run_id))
            await self._measure_dispatch(lanes, recorder)
            if parent is not None and result.interrupts:
                # A subgraph's questions stop the node that runs it, and so the run above.
                raise SubgraphInterrupt(result.interrupts)
            return result
        except NodeError as exc:
            own = own_error(exc)
            if own is exc:
                raise
        finally:
            leave_parent(attached)
            leave(entered)
            await asyncio.shield(lanes.aclose())
        # Raised outside the handler: the node's exception keeps its own chain.
        raise own

    def _run_context(self, plan: Plan, opts: RunOptions, run_id: str) -> RunContext:
        """The run's config and context, checked to pickle when a worker may need them."""
        context = opts.context
        cls = plan.context_schema
        if isinstance(context, Mapping) and isinstance(cls, type) and not issubclass(cls, dict):
            context = cls(**context)
        langgraph = plan.schema.conventions == "langgraph"
        ctx = RunContext.of(opts, context, run_id=run_id, langgraph=langgraph)
        if opts.mode == "parallel" and any(n.lane == "cpu" for n in plan.nodes.values()):
            ctx.wire()  # TypeError, before anything runs, when it cannot reach a worker
        return ctx

    async def ainvoke(
        self,
        input: S | Mapping[str, Any] | None,
        options: RunOptions | None = None,
        /,
        **kwargs: Unpack[RunKwargs],
    ) -> S:
        """Run and return only the final state."""
        return (await self.arun(input, options, **kwargs)).state

    def invoke(
        self,
        input: S | Mapping[str, Any] | None,
        options: RunOptions | None = None,
        /,
        **kwargs: Unpack[RunKwargs],
    ) -> S:
        """Synchronous ``ainvoke`` on a fresh event loop (uvloop when importable)."""
        return run_sync(self.ainvoke(input, options, **kwargs))

    async def abatch(
        self,
        inputs: Sequence[S | Mapping[str, Any]],
        options: RunOptions | None = None,
        /,
        *,
        configs: Sequence[Mapping[str, Any] | None] | None = None,
        return_exceptions: bool = False,
        **kwargs: Unpack[RunKwargs],
    ) -> list[Any]:
        """``ainvoke`` each input, all at once; final states in the inputs' order.

        ``configs``: one config per input (LangGraph's ``batch(inputs, [config, ...])``);
        ``return_exceptions=True`` puts a run's error in its place instead of raising.
        """
        if configs is not None and len(configs) != len(inputs):
            raise ValueError(f"abatch got {len(inputs)} inputs but {len(configs)} configs")
        opts = merged_options(options, kwargs)
        each = [opts] * len(inputs)
        if configs is not None:
            each = [dataclasses.replace(opts, config=c) if c else opts for c in configs]
        runs = [self.ainvoke(i, o) for i, o in zip(inputs, each, strict=True)]
        return list(await asyncio.gather(*runs, return_exceptions=return_exceptions))

    def batch(
        self,
        inputs: Sequence[S | Mapping[str, Any]],
        options: RunOptions | None = None,
        /,
        *,
        configs: Sequence[Mapping[str, Any] | None] | None = None,
        return_exceptions: bool = False,
        **kwargs: Unpack[RunKwargs],
    ) -> list[Any]:
        """``abatch`` from synchronous code (inside a running event loop too)."""
        return run_sync(
            self.abatch(
                inputs, options, configs=configs, return_exceptions=return_exceptions, **kwargs
            )
        )

    def run(
        self,
        input: S | Mapping[str, Any] | None,
        options: RunOptions | None = None,
        /,
        **kwargs: Unpack[RunKwargs],
    ) -> RunResult[S]:
        """Synchronous ``arun`` on a fresh event loop (uvloop when importable)."""
        return run_sync(self.arun(input, options, **kwargs))

    def astream(
        self,
        input: S | Mapping[str, Any] | None,
        options: RunOptions | None = None,
        /,
        *,
        stream_mode: str | Sequence[str] | None = None,
        subgraphs: bool = False,
        **kwargs: Unpack[RunKwargs],
    ) -> AsyncIterator[Any]:
        """Yield typed events as they happen; raises the run's error at the end.

        With ``stream_mode`` (``"values"``, ``"updates"``, ``"custom"``,
        ``"messages"``, ``"debug"`` or a list of them) it yields LangGraph's
        chunks instead: the state after the input and after each step, each
        node's update as ``{node: update}``, what nodes write with
        ``get_stream_writer()`` (from every lane, while they run), tokens as
        ``(message_chunk, metadata)``, each task and its result; a list
        yields ``(mode, chunk)`` pairs. ``subgraphs=True`` adds the chunks of the
        subgraphs run inside nodes, each item prefixed by its namespace (``()`` for
        this graph's own, ``("node:task_id", ...)`` for a subgraph's): ``(ns, chunk)``,
        or ``(ns, mode, chunk)`` for a list of modes. An ``on_event`` observer given too
        hears the events; one that raises is dropped on its own.
        """
        opts = merged_options(options, kwargs)
        if stream_mode is None:
            return self._events(input, opts)
        modes, pairs = parse_modes(stream_mode)
        shape = self.shape_chunk

        def run(sink: ChunkSink) -> Coroutine[Any, Any, RunResult[S]]:
            def shaped(mode: str, chunk: Any) -> None:
                sink(mode, shape(mode, chunk))

            return self.arun(input, dataclasses.replace(opts, on_chunk=shaped))

        if not subgraphs:
            return chunks_of(run, modes, pairs)
        return _namespaced(chunks_of(run, modes, pairs, subgraphs=True), pairs)

    def stream(
        self,
        input: S | Mapping[str, Any] | None,
        options: RunOptions | None = None,
        /,
        *,
        stream_mode: str | Sequence[str] | None = None,
        subgraphs: bool = False,
        **kwargs: Unpack[RunKwargs],
    ) -> Iterator[Any]:
        """``astream`` from synchronous code (inside a running event loop too)."""
        opts = merged_options(options, kwargs)
        if stream_mode is not None:
            parse_modes(stream_mode)  # a bad mode fails here, not at the first item
        return iterate_sync(
            lambda: self.astream(input, opts, stream_mode=stream_mode, subgraphs=subgraphs)
        )

    async def _events(
        self, input: S | Mapping[str, Any] | None, opts: RunOptions
    ) -> AsyncIterator[Event]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        observers = _Sinks([opts.on_event] if opts.on_event is not None else [])

        def sink(event: Event) -> None:
            queue.put_nowait(event)
            observers(event)

        task = asyncio.create_task(self.arun(input, dataclasses.replace(opts, on_event=sink)))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                yield item
            task.result()  # re-raise the run's error, if any
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


async def _namespaced(items: AsyncIterator[NestedChunk], pairs: bool) -> AsyncIterator[Any]:
    """``(ns, chunk)`` or, for a list of modes, ``(ns, mode, chunk)``."""
    async for ns, mode, chunk in items:
        yield (ns, mode, chunk) if pairs else (ns, chunk)


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

"""Running one node call on its lane, per the run's mode.

==========  ============  =====================  ============================
lane        sequential    concurrent             parallel
==========  ============  =====================  ============================
io          awaited       task on the loop       task on the loop
thread      called        thread pool            thread pool
cpu         called        thread pool (GIL)      process pool (ProcessLane)
inline      on the loop   on the loop            on the loop
==========  ============  =====================  ============================

The scheduler decides *how many* calls run at once (one at a time in
``sequential``); a ``LaneRunner`` decides *where* one call runs and measures it.
The process pool is reached through ``process.ProcessLane``, which bounds,
times out, kills and re-dispatches calls when workers die.

Timeouts: an io call is cancelled; a cpu call in ``parallel`` mode has its
worker process killed; a thread (or ``concurrent``-mode cpu) call cannot be
stopped, so it runs on in the background and its result is discarded. Sync
calls made on the loop thread (inline, and sync nodes in ``sequential``) are
not timed out.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import os
import pickle
import threading
import time
from collections.abc import Callable, Hashable, Mapping, MutableMapping
from concurrent.futures import Executor
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Literal, Protocol

import cloudpickle

from .batching import Batch, ChunkPlan, replan
from .failures import (
    CallRefused,
    ExecutorUnusable,
    PayloadError,
    WorkerLost,
    describe_exit,
    is_worker_crash,
)
from .placement import Placement, place
from .pool import default_workers, executor_workers
from .process import ProcessLane
from .results import is_large, opened
from .threads import POOLS, LoopThreads
from .worker import (
    CallOutcome,
    Resources,
    call_payload,
    call_with_init,
    dumps_for_worker,
    failed_outcome,
    hostname,
    load_outcome,
    run_call,
    run_chunk,
)

if TYPE_CHECKING:
    from ..warm import WorkerInit

Mode = Literal["sequential", "concurrent", "parallel"]
MODES: tuple[Mode, ...] = ("sequential", "concurrent", "parallel")


class Guard(Protocol):
    """The loop guard, as far as lanes use it: a registration of a node's work on the loop."""

    def running(
        self, node: str, *, index: int = -1, fn: Callable[..., Any] | None = None
    ) -> AbstractContextManager[Any]: ...


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class LaneRunner:
    """Runs node calls for one run.

    Invariant: the process lane exists only while OPEN and is closed by
    ``aclose``; the process executor is borrowed (the default pool or the
    user's) and never shut down here (only replacements the process lane
    made for a broken user pool are). The thread pool is the event loop's,
    shared with the other runs on it (``threads``): held from the first
    thread call until ``aclose`` gives it back.
    """

    def __init__(
        self,
        mode: Mode,
        executor: Executor | None = None,
        *,
        fn_cache: MutableMapping[str, bytes] | None = None,
        resources: Resources | None = None,
        pool_size: int | None = None,
        memory_limit: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        self.mode: Mode = mode
        self._user_executor = executor
        self._process: ProcessLane | None = None
        # The loop whose shared thread pool this run holds, and the pool.
        self._threads: tuple[asyncio.AbstractEventLoop, LoopThreads] | None = None
        self._fn_cache: MutableMapping[str, bytes] = fn_cache if fn_cache is not None else {}
        # worker_init resources of calls made in this process (kept per app, across runs).
        self._resources = resources if resources is not None else Resources()
        # A cap on the default pool's size (memory_per_worker); None: sized to the machine.
        self._pool_size = pool_size
        # The run's memory_per_worker (bytes): the least any cpu call may use (see call).
        self._memory_limit = memory_limit
        self._batches: dict[str, Batch] = {}
        self._state = _State.OPEN

    def __repr__(self) -> str:
        return f"<LaneRunner mode={self.mode} state={self._state.value}>"

    @property
    def process_lane(self) -> ProcessLane:
        """The cpu lane's pool front in ``parallel`` mode (created on first use)."""
        if self._state is _State.CLOSED:
            raise RuntimeError(f"{self!r} is closed; start a new run")
        if self._process is None:
            self._process = ProcessLane(
                self._user_executor,
                workers=self.cpu_workers,
                pool_size=self._pool_size if self._user_executor is None else None,
            )
        return self._process

    @property
    def process_executor(self) -> Executor:
        """The executor of the cpu lane in ``parallel`` mode (created on first use)."""
        return self.process_lane.executor

    @functools.cached_property
    def cpu_workers(self) -> int:
        """Workers the parallel cpu lane can use: the bound the metrics divide by.

        Asked without creating the default pool, so sequential runs start no
        process; worked out once per run (counting CPUs reads cgroup files).
        """
        if self._user_executor is not None:
            n = executor_workers(self._user_executor)
        else:
            n = default_workers()
        # A memory cap binds a user's pool too: fewer calls in flight than workers.
        return min(n, self._pool_size) if self._pool_size else n

    def crosses_process(self, lane: str) -> bool:
        """True when a call on ``lane`` is pickled to another process (no copy needed)."""
        # A coroutine or a function: on the cpu lane in parallel mode both go to a worker.
        return place(lane, self.mode, is_coroutine=False) is Placement.PROCESS

    def _thread_pool(self) -> LoopThreads:
        """The running loop's shared thread pool, held by this run until ``aclose``."""
        if self._state is _State.CLOSED:
            raise RuntimeError(f"{self!r} is closed; start a new run")
        if self._threads is None:
            loop = asyncio.get_running_loop()
            self._threads = (loop, POOLS.acquire(loop))
        return self._threads[1]

    def fn_bytes(self, node: str, fn: Callable[..., Any]) -> bytes:
        """The node function pickled once and reused for every call."""
        data = self._fn_cache.get(node)
        if data is None:
            data = cloudpickle.dumps(fn)
            self._fn_cache[node] = data
        return data

    async def call(
        self,
        node: str,
        lane: str,
        fn: Callable[..., Any],
        arg: Any,
        *,
        is_coroutine: bool,
        timeout: float | None = None,
        init: WorkerInit | None = None,
        key: Hashable | None = None,
        memory: int | None = None,
        guard: Guard | None = None,
        index: int = -1,
    ) -> CallOutcome:
        """Run ``fn(arg)`` on ``lane``; raises TimeoutError past ``timeout``.

        With ``init`` (a node's ``worker_init``) the call is ``fn(arg,
        resource)``, the resource built once per process. A ``key`` that
        ``open_batch`` sent already collects that call's result instead.
        In a worker process, the call may use ``memory`` bytes (the node's
        ``memory_per_worker``; the run's, if that is larger), its worker and
        what it starts together: past that, the worker is ended and the call
        fails as a crash (``WorkerLost``). ``guard`` (the loop guard) is told
        when a large result is decoded, as ``index`` of node ``node``.
        """
        where = place(lane, self.mode, is_coroutine=is_coroutine)
        if where is Placement.LOOP_TASK:
            return await self._on_loop_async(fn, arg, timeout, init)
        if where is Placement.PROCESS:
            attribution = _Attribution(node, index, fn, guard)
            batch = self._batches.get(node) if key is not None else None
            if batch is not None and key in batch:
                return await attribution.decoded(await batch.result(key))
            limit = self._limit(memory)
            return await self._in_process_pool(node, fn, arg, timeout, init, limit, attribution)
        # In the driver a KeyboardInterrupt is the user's Ctrl-C: it propagates
        # (in_driver), where a worker's would fail only its call.
        if where is Placement.LOOP_CALL:
            return call_with_init(fn, arg, init, self._resources, in_driver=True)
        # thread lane, sync io, cpu in concurrent mode, or a coroutine that
        # must run outside this loop: a thread of the loop's pool. Past its
        # timeout it runs on, its result discarded (a thread cannot be stopped).
        call = functools.partial(call_with_init, fn, arg, init, self._resources, in_driver=True)
        outcome: CallOutcome = await self._thread_pool().run(call, timeout)
        return outcome

    async def _on_loop_async(
        self, fn: Callable[..., Any], arg: Any, timeout: float | None, init: WorkerInit | None
    ) -> CallOutcome:
        built: tuple[float, float] | None = None
        if init is not None:
            t = time.time()
            try:
                # A build may be slow (it loads something): never on the loop's thread.
                resource, built, builder = await asyncio.to_thread(
                    _build_here, self._resources, init
                )
            except Exception as exc:
                return failed_outcome(exc, t, f"worker_init {init.name} failed: {exc}")
            fn = functools.partial(_resource_last, fn, resource)
        start = time.time()
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                value = await fn(arg)
        except asyncio.CancelledError:
            raise
        except TimeoutError as exc:
            if deadline.expired():  # the engine's timeout: the scheduler's NodeTimeoutError
                raise
            return failed_outcome(exc, start)  # the node's own (e.g. its wait_for): a NodeError
        except Exception as exc:
            return failed_outcome(exc, start)
        load = (
            (init.name, built[0], built[1], builder)
            if init is not None and built is not None
            else ("", 0.0, 0.0, 0)
        )
        return CallOutcome(
            ok=True,
            value=value,
            pid=os.getpid(),
            thread=threading.get_native_id(),
            host=hostname(),
            start=start,
            end=time.time(),
            cpu_s=0.0,  # not attributable: other tasks interleave on this thread
            load_name=load[0],
            load_start=load[1],
            load_end=load[2],
            load_thread=load[3],
        )

    async def _in_process_pool(
        self,
        node: str,
        fn: Callable[..., Any],
        arg: Any,
        timeout: float | None,
        init: WorkerInit | None,
        memory_limit: int | None,
        attribution: _Attribution,
    ) -> CallOutcome:
        try:
            fn_bytes = self.fn_bytes(node, fn)
        except Exception as exc:
            raise PayloadError(
                f"its function {fn!r} cannot be pickled for a worker process: "
                f"{type(exc).__name__}: {exc}; define it at module level"
            ) from exc
        try:
            # Check the process boundary before anything is submitted (or reserved).
            blob = dumps_for_worker(arg)
        except Exception as exc:
            raise _unpicklable_input(arg, exc) from exc
        payload = call_payload(fn_bytes, blob, init)
        data = await self.process_lane.run(
            run_call, payload, timeout=timeout, what=node, memory_limit=memory_limit
        )
        return await attribution.decoded(data)

    def _limit(self, memory: int | None) -> int | None:
        """The memory a cpu call may use: its node's hint or the run's, the larger."""
        if memory is None:
            return self._memory_limit
        return max(memory, self._memory_limit or 0)

    # -- batches -------------------------------------------------------------

    def open_batch(
        self,
        node: str,
        fn: Callable[..., Any],
        plan: ChunkPlan,
        args: Mapping[Any, Any],
        init: WorkerInit | None = None,
        memory: int | None = None,
    ) -> dict[Hashable, PayloadError]:
        """Send ``node``'s calls ``args`` (key -> argument) to the pool in chunks, now.

        Each call then collects its result with ``call(..., batched=True,
        key=key)``. Returns the keys whose argument cannot be pickled, with
        the error each call must fail with (nothing of theirs was sent). One
        batch per node at a time: the scheduler opens it at the start of a
        step and closes it (``close_batches``) at the step's barrier.
        """
        if node in self._batches:
            raise RuntimeError(f"node {node!r} already has an open batch in {self!r}")
        fn_bytes = self.fn_bytes(node, fn)
        blobs: dict[Hashable, bytes] = {}
        refused: dict[Hashable, PayloadError] = {}
        for key, arg in args.items():
            try:
                blobs[key] = dumps_for_worker(arg)
            except Exception as exc:
                refused[key] = _unpicklable_input(arg, exc)
        if refused:
            plan = replan(plan, len(blobs))
        lane = self.process_lane
        limit = self._limit(memory)

        async def submit_chunk(chunk: list[bytes]) -> list[bytes]:
            payload = cloudpickle.dumps((fn_bytes, init, chunk))
            what = f"{node} (a chunk of {len(chunk)} calls)"
            data = await lane.run(run_chunk, payload, what=what, memory_limit=limit)
            if is_large(data):
                return await asyncio.to_thread(_load_chunk, data)
            return _load_chunk(data)

        async def submit_one(blob: bytes) -> bytes:
            payload = call_payload(fn_bytes, blob, init)
            return await lane.run(run_call, payload, what=node, memory_limit=limit)

        if blobs:
            self._batches[node] = Batch(
                node, plan, blobs, submit_chunk=submit_chunk, submit_one=submit_one
            )
        return refused

    async def close_batches(self) -> None:
        """End every open batch: send what is collected, stop what still runs."""
        batches, self._batches = list(self._batches.values()), {}
        for batch in batches:
            await batch.aclose()

    async def aclose(self) -> None:
        """Close the process lane and give the loop's thread pool back; idempotent."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        await self.close_batches()
        if self._process is not None:
            await self._process.aclose()
        if self._threads is not None:
            (loop, pool), self._threads = self._threads, None
            # The loop's last run shuts the pool down, off the loop.
            await POOLS.release(loop, pool)




def _unpicklable_part(arg: Any) -> str:
    """Which part of an input fails to pickle: a field's name and type where one does."""
    from pydantic import BaseModel

    fields: dict[str, Any] = {}
    if isinstance(arg, BaseModel):
        fields = {name: getattr(arg, name, None) for name in type(arg).model_fields}
    elif isinstance(arg, dict):
        fields = {str(k): v for k, v in arg.items()}
    for name, value in fields.items():
        try:
            cloudpickle.dumps(value)
        except Exception:
            return f"(field {name!r}, type {type(value).__name__})"
    return f"(type {type(arg).__name__})"


class _Attribution:
    """Decodes one cpu call's result: a large one in a thread, the node registered meanwhile.

    Building the value of a large result needs the GIL, so the loop may lag
    while a thread builds it; registered with the loop guard, that lag is
    the node's, not "no registered node".
    """

    __slots__ = ("fn", "guard", "index", "node")

    def __init__(self, node: str, index: int, fn: Callable[..., Any], guard: Guard | None) -> None:
        self.node = node
        self.index = index
        self.fn = fn
        self.guard = guard

    async def decoded(self, data: bytes) -> CallOutcome:
        if not is_large(data):
            return _decoded(data)
        held: AbstractContextManager[Any] = (
            self.guard.running(self.node, index=self.index, fn=self.fn)
            if self.guard is not None
            else nullcontext()
        )
        with held:
            return await asyncio.to_thread(_decoded, data)


def _load_chunk(data: bytes) -> list[bytes]:
    """A chunk's results (``run_chunk``): one ``run_call`` frame per call."""
    with opened(data) as buf:
        results: list[bytes] = pickle.loads(buf)
    return results


def _decoded(data: bytes) -> CallOutcome:
    """A process-lane result as an outcome; a value the driver cannot rebuild is a
    PayloadError (a failed node whose exception cannot be rebuilt keeps its text)."""
    with opened(data) as buf:
        outcome, what, error = load_outcome(buf)
    if error is not None and outcome.ok:
        raise PayloadError(
            f"{what} came back from the worker but cannot be unpickled in the driver: "
            f"{type(error).__name__}: {error}; return plain data (dicts, lists, str, "
            "numbers, pydantic models)"
        ) from error
    return outcome


def _unpicklable_input(arg: Any, exc: Exception) -> PayloadError:
    error = PayloadError(
        f"its input {_unpicklable_part(arg)} cannot be pickled for a worker process: "
        f"{type(exc).__name__}: {exc}; keep state fields and Send payloads plain data"
    )
    error.__cause__ = exc
    return error


def _build_here(resources: Resources, init: WorkerInit) -> tuple[Any, Any, int]:
    """``resources.get(init)`` and the thread it ran on (the trace draws the build there)."""
    resource, built = resources.get(init)
    return resource, built, threading.get_native_id()


def _resource_last(fn: Callable[..., Any], resource: Any, arg: Any) -> Any:
    return fn(arg, resource)


__all__ = [
    "MODES",
    "Batch",
    "CallOutcome",
    "CallRefused",
    "ChunkPlan",
    "ExecutorUnusable",
    "Guard",
    "LaneRunner",
    "Mode",
    "PayloadError",
    "ProcessLane",
    "WorkerLost",
    "describe_exit",
    "is_worker_crash",
]

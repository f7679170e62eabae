"""The default process pools.

This is the engine's only process-wide mutable state: lazily created,
lock-guarded loky executors, one per size asked for (the machine's size,
unless a run's ``memory_per_worker`` caps it smaller), each replaced when it
breaks or was shut down (the reusable-executor pattern). A pool of one size
never replaces a pool of another: two apps capped differently, or a capped
and an uncapped one, each keep their warm workers. Idle workers exit after
``IDLE_TIMEOUT_S`` and start again on demand. ``ENGINE_CPU_WORKERS``
overrides the machine's size; it is read when a pool is requested, never at
import. Workers run ``guard_parent`` first, so they die with a driver that is
killed.

Why not ``loky.get_reusable_executor``: its executor is stored per *thread*,
so a replacement made off the loop (where joining a broken pool belongs)
would be a second pool beside the first; process-wide references here keep
one pool per size per driver.
"""

from __future__ import annotations

import asyncio
import functools
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any

import cloudpickle
import loky
from loky import cpu_count
from loky.reusable_executor import _ReusablePoolExecutor as _LOKY_REUSABLE

from ..measured import DispatchCost
from ..procs import kill_group, kill_tree, pid_alive
from .frames import decode, dumps_for_worker, request
from .worker import guard_parent, pid_after, report_initializer, run_calls

# The default pools by size, and the lock that guards them (see the module docstring).
_lock = threading.Lock()
_pools: dict[int, Executor] = {}

#: Seconds an idle default-pool worker lives before it exits (respawned on demand).
IDLE_TIMEOUT_S = 600


def default_workers() -> int:
    """Pool size: ``ENGINE_CPU_WORKERS`` if set, else the CPUs this process may use."""
    env = os.environ.get("ENGINE_CPU_WORKERS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"ENGINE_CPU_WORKERS must be an integer, got {env!r}") from None
        if n < 1:
            raise ValueError(f"ENGINE_CPU_WORKERS must be >= 1, got {n}")
        return n
    return machine_workers()


@functools.cache
def machine_workers() -> int:
    """The CPUs this process may use (affinity, cgroup quota), counted once per process.

    ``loky.cpu_count`` reads the cgroup's files every time it is asked (tens
    of microseconds): every run asks (the metrics' lower bound), so the
    answer is kept, as the host name is (``procs.hostname``). A process
    whose affinity or quota changes while it runs keeps the first count.
    """
    return max(1, int(cpu_count()))


def default_executor(max_workers: int | None = None) -> Executor:
    """The shared loky pool of ``max_workers`` workers (the machine's size by default):
    created on first use, replaced when broken or shut down.

    Creating it starts no process: workers start on the first submit (the
    process lane makes that one from a thread, off the event loop), and each
    runs ``guard_parent``.
    """
    n = max_workers or default_workers()
    with _lock:
        pool = _pools.get(n)
        if pool is not None and not is_broken(pool):
            return pool
        fresh: Executor = loky.ProcessPoolExecutor(
            max_workers=n,
            timeout=IDLE_TIMEOUT_S,
            initializer=guard_parent,
            initargs=(os.getpid(),),
        )
        _pools[n] = fresh
    if pool is not None:
        # A broken pool's workers are gone already (what they started is
        # buried here); this only joins its threads. A pool someone shut
        # down finishes what it has.
        if not is_shut_down(pool):
            bury(list(worker_processes(pool) or ()))
        pool.shutdown(wait=False)
    return fresh


def is_default_pool(executor: Executor | None) -> bool:
    """True for None (meaning a default pool) and for any of the default pools."""
    if executor is None:
        return True
    with _lock:
        return any(executor is pool for pool in _pools.values())


def is_broken(executor: Executor) -> bool:
    """True when ``executor`` refuses new work: a worker died, or it was shut down."""
    flags = getattr(executor, "_flags", None)  # loky
    if flags is not None:
        return bool(getattr(flags, "broken", None) or getattr(flags, "shutdown", False))
    return bool(getattr(executor, "_broken", False))  # concurrent.futures


def is_shut_down(executor: Executor) -> bool:
    """True when ``executor`` was shut down by its owner (and did not break)."""
    flags = getattr(executor, "_flags", None)  # loky
    if flags is not None:
        return bool(getattr(flags, "shutdown", False)) and not getattr(flags, "broken", None)
    broken = getattr(executor, "_broken", False)
    return bool(getattr(executor, "_shutdown_thread", False)) and not broken


def worker_processes(executor: Executor) -> dict[int, Any] | None:
    """pid -> process of a local process pool (loky, stdlib); None for any other executor.

    Only these pools let the engine see which worker runs a call, kill it, and
    read its exit code; the dict is the pool's own, read and never changed here.
    """
    if isinstance(executor, ProcessPoolExecutor | loky.ProcessPoolExecutor):
        procs = getattr(executor, "_processes", None)
        return procs if isinstance(procs, dict) else None
    return None


def bury(pids: Iterable[int]) -> None:
    """Kill what is left of the workers ``pids`` of a broken pool, trees included.

    A broken stdlib pool terminates its surviving workers but not what
    their nodes started (loky kills those trees itself); a dead worker's
    process group may still hold a ``Popen`` or a nested pool.
    """
    for pid in pids:
        if pid == os.getpid():
            continue
        if pid_alive(pid):
            kill_tree(pid)
        else:
            kill_group(pid)


def initializer_of(executor: Executor) -> tuple[Callable[..., Any], tuple[Any, ...]] | None:
    """The initializer a local pool runs in each worker, with its arguments; None if none."""
    if not isinstance(executor, ProcessPoolExecutor | loky.ProcessPoolExecutor):
        return None
    fn = getattr(executor, "_initializer", None)
    return (fn, tuple(getattr(executor, "_initargs", ()))) if fn is not None else None


def clone(
    executor: Executor,
    *,
    max_workers: int | None = None,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] | None = None,
) -> Executor | None:
    """A new pool made the way ``executor`` was: None if the engine cannot tell how.

    Keeps the worker count, the start method (context), the initializer and
    its arguments, and for loky its idle timeout, environment and reducers;
    for the stdlib its ``max_tasks_per_child``. ``max_workers``,
    ``initializer`` and ``initargs`` override (a probe of the initializer).
    Only the exact stdlib class and loky's executors: a subclass may take
    arguments the engine cannot know.
    """
    n = max_workers or executor_workers(executor)
    init = initializer_of(executor)
    fn, args = init if init is not None else (None, ())
    if initializer is not None:
        fn, args = initializer, initargs or ()
    if isinstance(executor, loky.ProcessPoolExecutor) and type(executor) in (
        loky.ProcessPoolExecutor,
        _LOKY_REUSABLE,
    ):
        call_queue = getattr(executor, "_call_queue", None)
        result_queue = getattr(executor, "_result_queue", None)
        fresh: Executor = loky.ProcessPoolExecutor(
            max_workers=n,
            job_reducers=getattr(call_queue, "_reducers", None),
            result_reducers=getattr(result_queue, "_reducers", None),
            timeout=getattr(executor, "_timeout", None),
            context=getattr(executor, "_context", None),
            initializer=fn,
            initargs=args,
            env=getattr(executor, "_env", None),
        )
        return fresh
    if type(executor) is ProcessPoolExecutor:
        kwargs: dict[str, Any] = {}
        per_child = getattr(executor, "_max_tasks_per_child", None)
        if per_child is not None:
            kwargs["max_tasks_per_child"] = per_child
        return ProcessPoolExecutor(
            max_workers=n,
            mp_context=getattr(executor, "_mp_context", None),
            initializer=fn,
            initargs=args,
            **kwargs,
        )
    return None


def probe_initializer(executor: Executor, *, timeout: float = 60.0) -> str | None:
    """Run ``executor``'s initializer in one fresh worker made the same way: its traceback, or None.

    A pool whose initializer raises breaks as soon as it starts a worker,
    with nothing but "a process terminated abruptly" to say why (the error
    is logged in the worker). Blocks (it starts a process): call it off the
    event loop. None also when the pool has no initializer, or cannot be cloned.
    """
    init = initializer_of(executor)
    if init is None:
        return None
    fd, path = tempfile.mkstemp(prefix="engine-initializer-")
    os.close(fd)
    try:
        probe = clone(
            executor, max_workers=1, initializer=report_initializer, initargs=(*init, path)
        )
        if probe is None:
            return None
        try:
            probe.submit(pid_after, 0.0).result(timeout=timeout)
        except Exception:  # it broke (the report says why), or hangs: either way, done
            pass
        finally:
            probe.shutdown(wait=True)
        with open(path, encoding="utf-8") as f:
            return f.read() or None
    finally:
        os.unlink(path)


def replacement(executor: Executor, *, default: bool) -> tuple[Executor, bool] | None:
    """A working pool like the broken ``executor``: (pool, owned by the caller) or None.

    The default pool is replaced here (shared, not owned). A user's pool
    cannot be repaired, so for a stdlib or loky process pool the caller gets
    a new one made the same way (``clone``: size, start method, initializer
    and its arguments), which it owns and must shut down. Any other executor
    (Dask, a custom one, a subclass) cannot be replaced.
    """
    if default:
        return default_executor(executor_workers(executor)), False
    fresh = clone(executor)
    return (fresh, True) if fresh is not None else None


def executor_workers(executor: Executor) -> int:
    """How many calls ``executor`` runs at once (for the lower bound)."""
    n = getattr(executor, "_max_workers", None)
    if isinstance(n, int) and n > 0:
        return n
    # dask.distributed ClientExecutor: count the cluster's worker threads.
    client: Any = getattr(executor, "_client", None)
    if client is not None:
        try:
            return max(1, int(sum(client.nthreads().values())))
        except Exception:  # a closed client: fall back below
            pass
    return default_workers()


async def measure_dispatch(
    executor: Executor,
    *,
    samples: int = 15,
    probe_bytes: int = 1 << 20,
    workers: int | None = None,
) -> DispatchCost:
    """Measure what one cpu-lane call costs on ``executor``, the way the lane sends it.

    Round trips of a no-op in the cpu lane's own wire format
    (``worker.run_calls``: the argument pickled for the worker, the result
    frame decoded in the driver) give the fixed cost (median); round trips
    carrying ``probe_bytes`` give the cost per byte. The pool is warmed
    first, so process start-up is not counted. Takes a few tens of
    milliseconds on a warm local pool.
    """
    if samples < 3:
        raise ValueError(f"samples must be >= 3, got {samples}")
    loop = asyncio.get_running_loop()
    n_workers = workers or executor_workers(executor)
    fn_bytes = cloudpickle.dumps(len)

    async def round_trip(arg: bytes) -> float:
        t0 = time.perf_counter()
        payload = request(fn_bytes, None, [dumps_for_worker(arg)])
        data = await loop.run_in_executor(executor, run_calls, payload)
        decode(data)
        return time.perf_counter() - t0

    # Warm every worker (start-up is not dispatch), concurrently.
    await asyncio.gather(*(round_trip(b"") for _ in range(2 * n_workers)))
    small = [await round_trip(b"") for _ in range(samples)]
    big_arg = b"\0" * probe_bytes
    big = [await round_trip(big_arg) for _ in range(max(3, samples // 3))]
    fixed = statistics.median(small)
    per_byte = max(0.0, (statistics.median(big) - fixed) / probe_bytes) if probe_bytes else 0.0
    return DispatchCost(
        fixed_s=fixed,
        per_byte_s=per_byte,
        samples=len(small) + len(big),
        workers=n_workers,
        measured_at=time.time(),
    )


def warm(executor: Executor, n: int | None = None, *, timeout: float = 60.0) -> None:
    """Start every worker now, so the first step does not pay for process start-up.

    Returns once ``n`` distinct workers (all of them by default) have each
    answered a call that waits a little, so none can answer for another.
    """
    n = n or executor_workers(executor)
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < n and time.monotonic() < deadline:
        futures = [executor.submit(pid_after, 0.05) for _ in range(n)]
        seen |= {f.result() for f in futures}

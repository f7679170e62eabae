"""The one default process pool.

This is the engine's only process-wide mutable state: a lazily created,
lock-guarded loky reusable executor, sized to the machine and replaced when
it breaks (loky hands out a fresh one when the previous one is broken or was
shut down). ``ENGINE_CPU_WORKERS`` overrides the size; it is read when the
pool is requested, never at import.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Executor
from typing import Any

from loky import cpu_count, get_reusable_executor

_lock = threading.Lock()


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
    return max(1, cpu_count())


def default_executor(max_workers: int | None = None) -> Executor:
    """The shared loky executor (created on first use, replaced when broken)."""
    with _lock:
        executor: Executor = get_reusable_executor(
            max_workers=max_workers or default_workers(),
            timeout=600,
            reuse=True,
        )
        return executor


def executor_workers(executor: Executor) -> int:
    """How many calls ``executor`` runs at once (for the lower bound)."""
    n = getattr(executor, "_max_workers", None)
    if isinstance(n, int) and n > 0:
        return n
    # dask.distributed ClientExecutor: count the cluster's worker threads.
    client: Any = getattr(executor, "_client", None)
    if client is not None:
        try:
            return max(1, sum(client.nthreads().values()))
        except Exception:  # a closed client: fall back below
            pass
    return default_workers()


def warm(executor: Executor, n: int | None = None) -> None:
    """Start every worker now, so the first step does not pay for process start-up."""
    n = n or executor_workers(executor)
    futures = [executor.submit(os.getpid) for _ in range(n * 2)]
    for f in futures:
        f.result()

"""The machine a benchmark runs on: its cores, its description, the cpu-lane executor."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
from collections.abc import AsyncIterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Literal

from .. import default_executor

ExecutorName = Literal["loky", "dask", "thread"]
EXECUTORS: tuple[ExecutorName, ...] = ("loky", "dask", "thread")

_VERSIONS = (
    "engine",
    "loky",
    "cloudpickle",
    "pydantic",
    "uvloop",
    "httpx",
    "aiohttp",
    "rich",
    "matplotlib",
    "langgraph",
    "dask",
    "distributed",
)


def cores() -> int:
    """CPUs this process may use (affinity and cgroup quotas), not the pool size."""
    from loky import cpu_count

    return max(1, int(cpu_count()))


def machine_info(**extra: Any) -> dict[str, Any]:
    """The machine and software a result was measured on."""
    versions = {}
    for dist in _VERSIONS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    return {
        "cores": cores(),
        "logical_cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "versions": versions,
        **extra,
    }


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@contextlib.asynccontextmanager
async def cpu_executor(name: ExecutorName, scheduler: str | None = None) -> AsyncIterator[Executor]:
    """The cpu lane's executor for a benchmark (its workers are started by the
    first workload's ``app.warm``).

    ``thread`` is a control, not a backend: cpu-lane calls still cross a
    pickle boundary but share one GIL, which is what the gate must catch.
    """
    if name == "loky":
        yield default_executor()
    elif name == "thread":
        with ThreadPoolExecutor(cores(), thread_name_prefix="bench-cpu-on-threads") as pool:
            yield pool
    else:
        try:
            from ..backends.dask import dask_executor
        except ImportError as exc:  # the backend module itself is missing
            raise RuntimeError(f"--executor dask needs engine.backends.dask: {exc}") from exc
        kwargs: dict[str, Any] = {} if scheduler else {"threads_per_worker": 1}
        async with dask_executor(scheduler, **kwargs) as executor:
            yield executor


__all__ = ["EXECUTORS", "ExecutorName", "cores", "cpu_executor", "cpu_model", "machine_info"]

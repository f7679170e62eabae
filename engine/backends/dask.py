"""The cpu lane on a dask.distributed cluster.

::

    async with dask_executor() as executor:                  # a LocalCluster of worker processes
        result = await app.arun(state, executor=executor)

    async with dask_executor("tcp://10.0.0.5:8786") as executor:   # a running cluster
        result = await app.arun(state, executor=executor)

    with dask_executor() as executor:                        # sync code: scripts, benchmarks
        result = app.run(state, executor=executor)

The engine pickles each cpu-lane call itself and submits one function,
``engine.lanes.worker.run_calls`` (a lone call, or a batch's chunk); Dask
only carries bytes, so nodes and state classes defined in ``__main__`` reach
the workers by value, and any Dask ``ClientExecutor`` works as is. This module
adds the lifecycle: start (or connect to) a cluster, hand out
``client.get_executor(pure=False)``, and close exactly what it started.

The client is a synchronous one, on Dask's own event loop thread, in both
forms; ``async with`` starts and closes it in a worker thread so the caller's
loop never blocks. An ``asynchronous=True`` client on the caller's loop would
break Dask's ``ClientExecutor``: on a cancelled or timed-out call it runs
``future.cancel()`` synchronously, which on such a client returns a coroutine
that nobody awaits, so the task is never cancelled (and
``engine.lanes.pool.executor_workers`` could not ask it for its threads). A
thread of its own also keeps a LocalCluster's scheduler off the engine's loop.

``pure=False`` matters: with Dask's default ``pure=True`` two calls with equal
payloads share one task key, so Dask runs them once, and a retry after a
crashed worker can be handed the failed result of the attempt it retries.

A worker that dies mid-call is Dask's to handle first: the scheduler reruns
the task on another worker up to ``allowed_failures`` times, then fails it
with ``distributed.KilledWorker``, which the engine reports as a
``WorkerCrashedError`` naming the node (retried per the node's RetryPolicy).

Dask is imported only when a backend starts; without it the error names the
``engine[dask]`` extra.
"""

from __future__ import annotations

import asyncio
import enum
from concurrent.futures import Executor
from types import ModuleType, TracebackType
from typing import Any

from ..lanes.pool import default_workers
from ..logs import get_logger

__all__ = ["DaskBackend", "dask_executor", "import_distributed"]

log = get_logger("engine")

_EXTRA_HINT = (
    "the Dask backend needs dask.distributed: pip install 'engine[dask]' "
    "(or pip install 'dask[distributed]')"
)


def import_distributed() -> ModuleType:
    """``distributed``, imported now; an ImportError naming the ``engine[dask]`` extra if absent."""
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(f"{_EXTRA_HINT}: {exc}") from exc
    return distributed


class _State(enum.Enum):
    CREATED = "created"
    OPEN = "open"
    CLOSED = "closed"


class DaskBackend:
    """A Dask client for the cpu lane, and the LocalCluster it started, if any.

    Use it as ``async with`` in a coroutine or ``with`` in sync code; either
    way the value is a ``concurrent.futures.Executor`` for
    ``arun(..., executor=...)`` that serves any event loop (several
    ``app.run(...)`` calls included), since the client runs on Dask's own loop
    thread.

    Invariant: ``_client`` and ``_cluster`` are set only while OPEN (or while
    a start that failed is being undone); closing closes the client, then the
    cluster only if this backend started it: a cluster at ``address`` belongs
    to someone else and is left running.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        allowed_failures: int | None = None,
        wait_for_workers: int | None = None,
        start_timeout: float = 60.0,
        close_timeout: float = 30.0,
        **cluster_kwargs: Any,
    ) -> None:
        if address is not None:
            local_only = {
                "n_workers": n_workers,
                "threads_per_worker": threads_per_worker,
                "allowed_failures": allowed_failures,
                **cluster_kwargs,
            }
            given = sorted(k for k, v in local_only.items() if v is not None)
            if given:
                raise ValueError(
                    f"{', '.join(given)} configure a LocalCluster this backend starts; the "
                    f"cluster at {address!r} is configured where it runs (dask scheduler / "
                    "dask worker options, or DASK_DISTRIBUTED__* environment variables)"
                )
        for name, value, least in (
            ("n_workers", n_workers, 1),
            ("threads_per_worker", threads_per_worker, 1),
            ("allowed_failures", allowed_failures, 0),
            ("wait_for_workers", wait_for_workers, 1),
        ):
            if value is not None and value < least:
                raise ValueError(f"{name} must be >= {least}, got {value}")
        if start_timeout <= 0 or close_timeout <= 0:
            raise ValueError("start_timeout and close_timeout must be > 0 seconds")
        self.address = address
        self._n_workers = n_workers
        self._threads_per_worker = threads_per_worker or 1
        self._allowed_failures = allowed_failures
        self._wait_for = wait_for_workers
        self._start_timeout = start_timeout
        self._close_timeout = close_timeout
        self._cluster_kwargs = cluster_kwargs
        self._state = _State.CREATED
        self._client: Any = None
        self._cluster: Any = None
        self._executor: Executor | None = None
        self._scheduler_address: str | None = None

    def __repr__(self) -> str:
        where = self._scheduler_address or self.address
        kind = "external" if self.address is not None else "local"
        return f"<DaskBackend state={self._state.value} cluster={kind} scheduler={where!r}>"

    # -- what an open backend offers ---------------------------------------

    @property
    def executor(self) -> Executor:
        """The cpu-lane executor (``client.get_executor(pure=False)``)."""
        if self._executor is None or self._state is not _State.OPEN:
            raise RuntimeError(f"{self!r} is not open; enter it with 'async with' or 'with'")
        return self._executor

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` (for ``client.run``, dashboards, diagnostics)."""
        if self._client is None or self._state is not _State.OPEN:
            raise RuntimeError(f"{self!r} is not open; enter it with 'async with' or 'with'")
        return self._client

    @property
    def cluster(self) -> Any:
        """The LocalCluster this backend started; None when it connected to ``address``."""
        return self._cluster

    @property
    def scheduler_address(self) -> str | None:
        """The scheduler's address (``tcp://host:port``), once started."""
        return self._scheduler_address

    @property
    def dashboard_link(self) -> str | None:
        """The Dask dashboard's URL, when the scheduler serves one."""
        if self._client is None:
            return None
        try:
            return str(self._client.dashboard_link)
        except Exception:  # no dashboard on this scheduler
            return None

    # -- async -------------------------------------------------------------

    async def __aenter__(self) -> Executor:
        self._enter()
        starting = asyncio.ensure_future(asyncio.to_thread(self._start))
        try:
            async with asyncio.timeout(self._start_timeout):
                await asyncio.shield(starting)
        except BaseException as exc:
            # Scenario: cancelled, or timed out, while the start-up thread is
            # still spawning workers. A thread cannot be interrupted and Dask
            # cannot close a cluster whose workers are half-started, so the
            # start is let finish, then what it started is closed. Shielded:
            # a second cancellation cannot leave worker processes behind.
            await asyncio.shield(asyncio.ensure_future(self._undo_start(starting)))
            err = self._start_error(exc)
            if err is exc:
                raise
            raise err from exc
        return self.executor

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client, and the cluster if this backend started it; idempotent."""
        if self._state is not _State.OPEN:
            self._state = _State.CLOSED
            return
        self._state = _State.CLOSED
        # In a thread, so the loop runs on; shielded, so a cancelled caller
        # still waits for nothing but leaves no half-closed cluster.
        await asyncio.shield(asyncio.ensure_future(asyncio.to_thread(self._close_started)))

    async def _undo_start(self, starting: asyncio.Future[None]) -> None:
        self._state = _State.CLOSED
        await asyncio.wait([starting], timeout=self._start_timeout + self._close_timeout)
        if not starting.done():
            log.warning(
                "dask_start_still_running", backend=repr(self), hint="closing what exists now"
            )
        elif not starting.cancelled():
            starting.exception()  # reported by __aenter__; retrieved so asyncio does not log it
        try:
            await asyncio.to_thread(self._close_started)
        except Exception:  # the start-up error is the one to report
            log.exception("dask_close_after_failed_start_failed", backend=repr(self))

    # -- sync --------------------------------------------------------------

    def __enter__(self) -> Executor:
        _refuse_on_running_loop(
            f"{self!r}: use 'async with dask_executor(...)' inside a coroutine, not 'with' "
            "(starting a cluster would block the running event loop)"
        )
        self._enter()
        try:
            self._start()
        except BaseException as exc:
            self._state = _State.CLOSED
            try:
                self._close_started()
            except Exception:  # the start-up error is the one to report
                log.exception("dask_close_after_failed_start_failed", backend=repr(self))
            err = self._start_error(exc)
            if err is exc:
                raise
            raise err from exc
        return self.executor

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Sync ``aclose`` (not on a running event loop: it blocks); idempotent."""
        if self._state is not _State.OPEN:
            self._state = _State.CLOSED
            return
        _refuse_on_running_loop(
            f"{self!r}: close it with 'await backend.aclose()' on a running event loop"
        )
        self._state = _State.CLOSED
        self._close_started()

    # -- both --------------------------------------------------------------

    def _enter(self) -> None:
        if self._state is not _State.CREATED:
            raise RuntimeError(
                f"{self!r} has already been entered; a backend is used once, "
                "create a new dask_executor(...)"
            )
        self._state = _State.OPEN

    def _start(self) -> None:
        """Start or connect (blocking); on error, what started stays set for closing."""
        distributed = import_distributed()
        target: Any = self.address
        if self.address is None:
            self._cluster = _local_cluster(distributed, self._local_options())
            target = self._cluster
        self._client = distributed.Client(target, timeout=self._start_timeout, set_as_default=False)
        self._scheduler_address = str(self._client.scheduler.address)
        self._client.wait_for_workers(self._workers_to_wait_for(), timeout=self._start_timeout)
        self._executor = self._client.get_executor(pure=False)

    def _close_started(self) -> None:
        client, cluster = self._client, self._cluster
        self._client = self._cluster = self._executor = None
        try:
            if client is not None:
                client.close(timeout=self._close_timeout)
        finally:
            if cluster is not None:
                cluster.close(timeout=self._close_timeout)

    def _local_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "n_workers": self._n_workers or default_workers(),
            "threads_per_worker": self._threads_per_worker,
            "processes": True,  # the cpu lane holds the GIL: one process per worker
            "dashboard_address": ":0",  # a free port: never clash with another cluster
        }
        if self._allowed_failures is not None:
            options["scheduler_kwargs"] = {"allowed_failures": self._allowed_failures}
        options.update(self._cluster_kwargs)
        return options

    def _workers_to_wait_for(self) -> int:
        if self._wait_for is not None:
            return self._wait_for
        if self.address is None:
            return int(self._local_options()["n_workers"])
        return 1  # a running cluster: at least one worker, or the first step would queue

    def _start_error(self, exc: BaseException) -> BaseException:
        """The error to raise for a failed start: ``exc`` itself, or a clearer one."""
        if not isinstance(exc, OSError):  # cancellation, ImportError, bugs: as they are
            return exc
        if self.address is None:
            if isinstance(exc, TimeoutError):
                return TimeoutError(
                    f"{self!r}: the LocalCluster did not start {self._workers_to_wait_for()} "
                    f"workers within start_timeout={self._start_timeout} s; raise "
                    "start_timeout or ask for fewer workers"
                )
            return exc
        hint = (
            f"check that a scheduler runs there ('dask scheduler') and that workers joined "
            f"it ('dask worker {self.address}')"
        )
        if self._scheduler_address is None:
            return ConnectionError(
                f"{self!r}: cannot reach a Dask scheduler at {self.address!r} within "
                f"start_timeout={self._start_timeout} s ({type(exc).__name__}: {exc}); {hint}"
            )
        return TimeoutError(
            f"{self!r}: the scheduler at {self.address!r} has fewer than "
            f"{self._workers_to_wait_for()} worker(s) after start_timeout="
            f"{self._start_timeout} s; {hint}"
        )


def dask_executor(
    address: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    allowed_failures: int | None = None,
    wait_for_workers: int | None = None,
    start_timeout: float = 60.0,
    close_timeout: float = 30.0,
    **cluster_kwargs: Any,
) -> DaskBackend:
    """A Dask executor for the cpu lane, as an (async) context manager.

    ``address`` connects to a running scheduler (``"tcp://host:8786"``) and
    waits for ``wait_for_workers`` workers (default 1); closing closes only
    the client. Without it a ``LocalCluster`` of ``n_workers`` worker
    processes (default: ``ENGINE_CPU_WORKERS`` or the CPUs) with
    ``threads_per_worker`` threads (default 1) is started, and closed on exit.
    ``allowed_failures`` is how many worker deaths a task survives before
    Dask fails it with ``KilledWorker`` (Dask's config when None). Extra
    keyword arguments go to ``LocalCluster``.
    """
    return DaskBackend(
        address,
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        allowed_failures=allowed_failures,
        wait_for_workers=wait_for_workers,
        start_timeout=start_timeout,
        close_timeout=close_timeout,
        **cluster_kwargs,
    )


def _local_cluster(distributed: ModuleType, options: dict[str, Any]) -> Any:
    import logging

    options = {"silence_logs": logging.ERROR, **options}
    return distributed.LocalCluster(**options)


def _refuse_on_running_loop(message: str) -> None:
    """A blocking lifecycle call made on a running event loop is misuse: say what to use."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(message)

"""The cpu lane on a real dask.distributed LocalCluster (engine.backends.dask).

One module-scoped cluster of 2 worker processes (1 thread each, a task
survives one worker death) serves the run, trace and crash tests; lifecycle
tests start and stop their own clusters and check that no process is left.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

pytest.importorskip(
    "distributed", reason="dask.distributed is not installed (pip install 'engine[dask]')"
)

from engine import END, START, Graph, NodeTimeoutError, RetryPolicy, Send, WorkerCrashedError
from engine.backends.dask import DaskBackend, dask_executor
from engine.procs import descendants, pid_alive
from tests.support import State, burn
from workloads.genai import process
from workloads.seed import SeedState, build

pytestmark = pytest.mark.timeout(90)

RUN_TIMEOUT_S = 45.0

# -- nodes (this module travels to the workers by value, see the fixture) ---


def score(payload: dict[str, Any]) -> dict[str, Any]:
    """A Send target: real CPU work on its payload."""
    out = process(f"passage {payload['i']} " * 30, 30, seed=payload["i"])
    return {"items": [f"{payload['i']}:{out['checksum']}"]}


def fan_out(n: int, state: Any) -> list[Send]:
    return [Send("score", {"i": i}) for i in range(n)]


def summarise(state: Any) -> dict[str, Any]:
    return {"report": ",".join(sorted(state.items))}


def busy(name: str, seconds: float, state: Any) -> dict[str, Any]:
    burn(seconds)
    return {"items": [name]}


def stall_once(marker: str, state: Any) -> dict[str, Any]:
    """First call: publish this worker's pid, then compute until killed. Later calls: finish."""
    path = Path(marker)
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(os.getpid()))
        tmp.rename(path)  # the test never reads a half-written pid
        burn(30.0)
    return {"items": [f"done in {os.getpid()}"]}


def touch(marker: str, state: Any) -> dict[str, Any]:
    Path(marker).touch()
    return {"items": ["ran"]}


def kill_own_worker(state: Any) -> dict[str, Any]:
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


def kill_own_worker_twice(runs: str, state: Any) -> dict[str, Any]:
    """Kills its worker on its first two executions (Dask's rerun included), then succeeds."""
    n = 0
    while True:
        try:
            os.close(os.open(Path(runs) / f"run-{n}", os.O_CREAT | os.O_EXCL))
            break
        except FileExistsError:
            n += 1
    if n < 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"items": [f"survived run {n}"]}


# -- fixtures ---------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def nodes_travel_by_value() -> Iterator[None]:
    """This module's nodes reach the workers by value, as a user's ``__main__`` code does."""
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    yield
    cloudpickle.unregister_pickle_by_value(module)


@pytest.fixture(scope="module")
def backend() -> Iterator[DaskBackend]:
    """A LocalCluster of 2 single-threaded worker processes; a task survives 1 worker death."""
    backend = dask_executor(n_workers=2, threads_per_worker=1, allowed_failures=1)
    with backend:
        yield backend


@pytest.fixture
async def executor(backend: DaskBackend) -> AsyncIterator[Executor]:
    """The module cluster's executor, once both workers run (a crash test may have killed one)."""
    await asyncio.to_thread(backend.client.wait_for_workers, 2, 30)
    yield backend.executor


async def worker_pids(backend: DaskBackend) -> dict[str, int]:
    pids: dict[str, int] = await asyncio.to_thread(backend.client.run, os.getpid)
    return pids


async def bounded(coro: Any) -> Any:
    async with asyncio.timeout(RUN_TIMEOUT_S):
        return await coro


def fan_out_graph(n: int = 6) -> Graph:
    g = Graph(State)
    g.add_node("plan", functools.partial(busy, "plan", 0.01), lane="inline")
    g.add_node("score", score, lane="cpu")
    g.add_node("summarise", summarise, lane="inline")
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", functools.partial(fan_out, n))
    g.add_edge("score", "summarise")
    g.add_edge("summarise", END)
    return g


def one_cpu_node(fn: Any, retry: RetryPolicy | None = None, timeout: float | None = None) -> Graph:
    g = Graph(State)
    g.add_node("crunch", fn, lane="cpu", retry=retry, timeout=timeout)
    g.add_edge(START, "crunch")
    g.add_edge("crunch", END)
    return g


# -- process inspection ------------------------------------------------------


def children() -> set[int]:
    """Live descendants of this process, but multiprocessing's resource tracker.

    The tracker is Python's own per-interpreter singleton, started by the
    first spawn and kept until the interpreter exits; it is not a worker.
    """
    found = set()
    for pid in descendants(os.getpid()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in cmdline:
            found.add(pid)
    return found


async def wait_gone(pids: set[int], timeout: float = 15.0) -> set[int]:
    """The pids of ``pids`` still alive after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = {pid for pid in pids if pid_alive(pid)}
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.05)


# -- tests ------------------------------------------------------------------


class TestSameResult:
    async def test_seed_workload_ends_in_the_same_state_as_on_loky(
        self, executor: Executor
    ) -> None:
        """The seed workload's final state on Dask equals parallel mode on the default loky pool."""
        app = build()
        state = SeedState(api_s=0.02, units=40)
        on_loky = await bounded(app.arun(state, mode="parallel"))
        on_dask = await bounded(app.arun(state, mode="parallel", executor=executor))
        assert on_dask.state == on_loky.state
        assert on_dask.state.report.count(":") == 4

    async def test_send_fan_out_ends_in_the_same_state_as_on_loky(self, executor: Executor) -> None:
        """A Send fan-out to a cpu node merges to the same state on Dask as on loky."""
        app = fan_out_graph(6).compile()
        on_loky = await bounded(app.arun({}, mode="parallel"))
        on_dask = await bounded(app.arun({}, mode="parallel", executor=executor))
        assert on_dask.state == on_loky.state
        assert len(on_dask.state.items) == 7  # plan + 6 Sends
        assert sorted(c.index for c in on_dask.trace.for_node("score")) == list(range(6))


class TestTrace:
    async def test_cpu_calls_carry_the_dask_worker_address_and_pid(
        self, backend: DaskBackend, executor: Executor
    ) -> None:
        """A cpu call's host is the address of the Dask worker whose pid ran it; io stays local."""
        result = await bounded(build().arun(SeedState(api_s=0.02, units=150), executor=executor))
        workers = await worker_pids(backend)
        cpu = [c for c in result.trace.calls if c.lane == "cpu"]
        assert len(cpu) == 4
        for call in cpu:
            assert call.host in workers, f"{call.host} is not a worker of {sorted(workers)}"
            assert workers[call.host] == call.pid
        assert len({c.pid for c in cpu}) == 2, "the 4 cpu nodes ran in 2 distinct worker processes"
        io = [c for c in result.trace.calls if c.lane == "io"]
        assert {c.host for c in io} == {socket.gethostname()}
        assert {c.pid for c in io} == {os.getpid()}

    async def test_chrome_trace_has_one_process_row_per_dask_worker(
        self, backend: DaskBackend, executor: Executor
    ) -> None:
        """The Chrome trace names one process row per worker address, next to the driver's."""
        result = await bounded(build().arun(SeedState(api_s=0.02, units=150), executor=executor))
        workers = await worker_pids(backend)
        rows = [
            e["args"]["name"]
            for e in result.trace.to_chrome_events()
            if e["ph"] == "M" and e["name"] == "process_name"
        ]
        assert len(rows) == len(workers) + 1  # the workers and the driver
        for address, pid in workers.items():
            assert sum(address in row and str(pid) in row for row in rows) == 1, rows

    async def test_metrics_count_the_cluster_worker_threads(
        self, executor: Executor, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """metrics.cpu_workers is the cluster's 2 worker threads, not the local pool size."""
        monkeypatch.setenv("ENGINE_CPU_WORKERS", "7")  # what a fallback would report
        result = await bounded(fan_out_graph(2).compile().arun({}, executor=executor))
        assert result.metrics.cpu_workers == 2


class TestWorkerKilled:
    async def test_worker_killed_mid_call_is_rerun_by_dask(
        self, backend: DaskBackend, executor: Executor, tmp_path: Path
    ) -> None:
        """SIGKILL of the worker running a node: Dask reruns it elsewhere and the run completes."""
        marker = tmp_path / "pid"
        app = one_cpu_node(functools.partial(stall_once, str(marker))).compile()
        run = asyncio.create_task(bounded(app.arun({}, executor=executor)))
        async with asyncio.timeout(20):
            while not marker.exists():
                await asyncio.sleep(0.02)
        killed = int(marker.read_text())
        assert killed in (await worker_pids(backend)).values()
        os.kill(killed, signal.SIGKILL)
        result = await run
        (call,) = result.trace.for_node("crunch")
        assert call.ok and call.pid != killed
        assert result.state.items == [f"done in {call.pid}"]
        assert not pid_alive(killed)

    async def test_node_that_kills_every_worker_fails_with_worker_crashed_error(
        self, executor: Executor
    ) -> None:
        """A node whose worker dies on every try fails with WorkerCrashedError naming it."""
        app = one_cpu_node(kill_own_worker).compile()
        with pytest.raises(WorkerCrashedError) as info:
            await bounded(app.arun({}, executor=executor))
        assert info.value.node == "crunch"
        assert info.value.step == 0
        assert "'crunch'" in str(info.value)

    async def test_worker_crash_is_retried_per_the_node_policy(
        self, executor: Executor, tmp_path: Path
    ) -> None:
        """After Dask gives up (KilledWorker) the node's RetryPolicy runs it again: it succeeds."""
        policy = RetryPolicy(max_attempts=2, initial_interval=0.0, jitter=False)
        app = one_cpu_node(
            functools.partial(kill_own_worker_twice, str(tmp_path)), retry=policy
        ).compile()
        result = await bounded(app.arun({}, executor=executor))
        assert result.state.items == ["survived run 2"]
        attempts = [(c.attempt, c.ok) for c in result.trace.for_node("crunch")]
        assert attempts == [(1, False), (2, True)]


class TestLifecycle:
    async def test_async_with_closes_the_cluster_it_started(self) -> None:
        """After 'async with' exits the worker processes are gone and no child is left."""
        before = children()
        backend = dask_executor(n_workers=2)
        async with backend as executor:
            assert backend.cluster is not None
            pids = set((await worker_pids(backend)).values())
            result = await bounded(fan_out_graph(2).compile().arun({}, executor=executor))
            assert {c.pid for c in result.trace.for_node("score")} <= pids
            assert "state=open" in repr(backend)
        assert "state=closed" in repr(backend)
        assert len(pids) == 2
        assert await wait_gone(pids) == set()
        assert await wait_gone(children() - before) == set()
        await backend.aclose()  # idempotent

    async def test_async_with_metrics_count_the_cluster_threads(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Under 'async with', metrics.cpu_workers is the cluster's 3 threads, not the pool's."""
        monkeypatch.setenv("ENGINE_CPU_WORKERS", "7")  # what a fallback would report
        async with dask_executor(n_workers=1, threads_per_worker=3) as executor:
            result = await bounded(fan_out_graph(2).compile().arun({}, executor=executor))
        assert result.metrics.cpu_workers == 3

    async def test_a_timed_out_call_is_cancelled_on_the_cluster(self, tmp_path: Path) -> None:
        """A node's timeout cancels its Dask task: a call still queued behind others never runs."""
        marker = tmp_path / "ran"
        backend = dask_executor(n_workers=1)
        async with backend as executor:
            blocker = backend.client.submit(time.sleep, 1.5, pure=False)  # the only thread
            app = one_cpu_node(functools.partial(touch, str(marker)), timeout=0.3).compile()
            with pytest.raises(NodeTimeoutError):
                await bounded(app.arun({}, executor=executor))
            await asyncio.to_thread(blocker.result, 30)
            await asyncio.sleep(0.5)  # time enough for a task that was kept to run
            assert not marker.exists()

    async def test_error_inside_the_block_still_closes_the_cluster(self) -> None:
        """An exception raised inside 'async with' propagates and the workers are still stopped."""
        before = children()
        backend = dask_executor(n_workers=1)
        pids: set[int] = set()
        with pytest.raises(KeyError, match="boom"):
            async with backend:
                pids = set((await worker_pids(backend)).values())
                raise KeyError("boom")
        assert pids and await wait_gone(pids) == set()
        assert await wait_gone(children() - before) == set()

    async def test_cancelled_while_starting_workers_leaves_no_process(self) -> None:
        """Cancelled while worker processes are starting: the start is finished, then closed."""
        before = children()

        async def enter() -> None:
            async with dask_executor(n_workers=2):
                pytest.fail("the cancellation should have arrived during start-up")

        entering = asyncio.create_task(enter())
        async with asyncio.timeout(20):
            while not children() - before:  # a worker process is being spawned
                await asyncio.sleep(0.005)
        entering.cancel()
        with pytest.raises(asyncio.CancelledError):
            await entering
        assert await wait_gone(children() - before) == set()

    async def test_start_timeout_raises_and_leaves_no_process(self) -> None:
        """A LocalCluster slower than start_timeout is a TimeoutError saying what to do."""
        before = children()
        with pytest.raises(TimeoutError, match="raise start_timeout"):
            async with dask_executor(n_workers=2, start_timeout=0.01):
                pytest.fail("a cluster cannot start in 10 ms")
        assert await wait_gone(children() - before) == set()

    def test_sync_with_closes_the_cluster_it_started(self) -> None:
        """The sync variant serves app.run() on fresh event loops and stops its workers on exit."""
        before = children()
        backend = dask_executor(n_workers=2)
        with backend as executor:
            pids = set(backend.client.run(os.getpid).values())
            first = fan_out_graph(3).compile().run({}, executor=executor)
            second = fan_out_graph(3).compile().run({}, executor=executor)  # another loop
            assert first.state == second.state
        assert len(pids) == 2
        assert asyncio.run(wait_gone(pids)) == set()
        assert asyncio.run(wait_gone(children() - before)) == set()
        backend.close()  # idempotent

    async def test_connecting_to_an_address_leaves_that_cluster_running(
        self, backend: DaskBackend, executor: Executor
    ) -> None:
        """A backend given an address closes only its client: the cluster and workers live on."""
        address = backend.scheduler_address
        assert address is not None
        pids = set((await worker_pids(backend)).values())
        remote = dask_executor(address)
        async with remote as remote_executor:
            assert remote.cluster is None
            result = await bounded(fan_out_graph(2).compile().arun({}, executor=remote_executor))
            assert {c.pid for c in result.trace.for_node("score")} <= pids
        assert all(pid_alive(pid) for pid in pids)
        assert set((await worker_pids(backend)).values()) == pids


class TestMisuse:
    async def test_sync_with_inside_a_coroutine_says_to_use_async_with(self) -> None:
        """'with' on a running event loop is refused before anything starts."""
        with pytest.raises(RuntimeError, match="async with"), dask_executor(n_workers=1):
            pass

    async def test_a_backend_is_entered_once(self) -> None:
        """Entering a closed backend again names its state and says to create a new one."""
        backend = dask_executor(n_workers=1)
        await backend.aclose()
        with pytest.raises(RuntimeError, match=r"state=closed.*create a new"):
            async with backend:
                pass

    def test_local_cluster_options_with_an_address_are_refused(self) -> None:
        """n_workers and friends configure a LocalCluster, so they conflict with an address."""
        with pytest.raises(ValueError, match="n_workers"):
            dask_executor("tcp://127.0.0.1:8786", n_workers=4)

    async def test_an_unreachable_scheduler_fails_within_start_timeout(self) -> None:
        """Connecting to nothing fails in about start_timeout seconds, naming the address."""
        started = time.monotonic()
        with pytest.raises(ConnectionError, match=r"tcp://127\.0\.0\.1:9'.*dask scheduler"):
            async with dask_executor("tcp://127.0.0.1:9", start_timeout=1.0):
                pass
        assert time.monotonic() - started < 10

    async def test_missing_dask_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without dask.distributed the error says to install engine[dask]."""
        monkeypatch.setitem(sys.modules, "distributed", None)
        with pytest.raises(ImportError, match=r"engine\[dask\]"):
            async with dask_executor(n_workers=1):
                pass

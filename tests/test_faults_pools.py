"""A user's process pool: replaced the way it was made, or refused with an error that says why.

Each case breaks or misconfigures a real pool: a worker killed by
``os._exit``, an initializer that raises, a pool shut down before the run,
a driver out of file descriptors (a subprocess with a low RLIMIT_NOFILE).
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cloudpickle
import loky
import pytest
from structlog.testing import capture_logs

import tests.crashers as crashers
from engine import START, Graph, NodeError, WorkerCrashedError
from tests.crashers import FaultState

cloudpickle.register_pickle_by_value(crashers)

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[1]

#: The address-space cap the pools' initializer sets (8 GiB: far above what a worker maps).
LIMIT = 8 * 1024**3


def one_node(fn: Any) -> Graph:
    g = Graph(FaultState)
    g.add_node("n", fn, lane="cpu")
    g.add_edge(START, "n")
    return g


def pool_of(kind: str, **kwargs: Any) -> Executor:
    if kind == "loky":
        return loky.ProcessPoolExecutor(2, **kwargs)
    return ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("forkserver"), **kwargs)


class TestReplacementKeepsTheInitializer:
    @pytest.mark.parametrize("kind", ["loky", "stdlib"])
    async def test_a_broken_pool_comes_back_with_its_initializer(self, kind: str) -> None:
        """After a crash broke it, the user's pool's replacement still runs its initializer."""
        pool = pool_of(kind, initializer=crashers.limit_address_space, initargs=(LIMIT,))
        with pool:
            before = await one_node(crashers.address_space_limit).compile().arun({}, executor=pool)
            assert before.state.total == LIMIT
            with pytest.raises(WorkerCrashedError):
                await one_node(crashers.hard_exit).compile().arun({}, executor=pool)
            with capture_logs() as logs:
                after = (
                    await one_node(crashers.address_space_limit).compile().arun({}, executor=pool)
                )
        assert any(e["event"] == "process_pool_replaced" for e in logs)  # it was replaced
        assert after.state.total == LIMIT
        assert after.state.pids[0] not in before.state.pids

    @pytest.mark.parametrize("kind", ["loky", "stdlib"])
    def test_clone_keeps_size_context_initializer_and_arguments(self, kind: str) -> None:
        """The clone is made with the pool's worker count, start method, initializer, initargs."""
        from engine.lanes.pool import clone, executor_workers, initializer_of

        pool = pool_of(kind, initializer=crashers.limit_address_space, initargs=(LIMIT,))
        copy = clone(pool)
        try:
            assert copy is not None and type(copy) is type(pool)
            assert executor_workers(copy) == executor_workers(pool) == 2
            assert (
                initializer_of(copy)
                == initializer_of(pool)
                == (
                    crashers.limit_address_space,
                    (LIMIT,),
                )
            )
            context = "_context" if kind == "loky" else "_mp_context"
            assert getattr(copy, context) is getattr(pool, context)
        finally:
            pool.shutdown()
            if copy is not None:
                copy.shutdown()

    async def test_a_pool_it_cannot_clone_is_refused_not_replaced(self) -> None:
        """A subclass broke: NodeError saying the user's pool broke, not a retried crash."""

        class MyPool(ProcessPoolExecutor):
            pass

        with MyPool(2) as pool:
            t0 = time.monotonic()
            with pytest.raises(NodeError) as caught:
                await one_node(crashers.hard_exit).compile().arun({}, executor=pool)
        err = caught.value
        assert not isinstance(err, WorkerCrashedError)
        assert err.node == "n" and err.lane == "cpu" and err.step == 0 and err.attempt == 2
        assert "the executor you passed (MyPool) broke" in str(err)
        assert "cannot rebuild" in str(err) and "none for the default pool" in str(err)
        assert time.monotonic() - t0 < 30


class TestInitializerThatRaises:
    @pytest.mark.parametrize("kind", ["stdlib", "loky"])
    async def test_fails_at_once_with_the_initializers_error(self, kind: str) -> None:
        """No silent retries: a NodeError with the initializer's name, error and traceback."""
        pool = pool_of(kind, initializer=crashers.missing_model)
        with pool, capture_logs() as logs, pytest.raises(NodeError) as caught:
            await one_node(crashers.address_space_limit).compile().arun({}, executor=pool)
        err = caught.value
        assert not isinstance(err, WorkerCrashedError)
        assert err.node == "n" and err.lane == "cpu" and err.attempt == 1
        message = str(err)
        assert "initializer missing_model raised FileNotFoundError" in message
        assert "no model file at /models/tokenizer.bin" in message
        assert "fix the initializer" in message and "Traceback" in message
        assert [e for e in logs if e["event"] == "process_pool_replaced"] == []
        assert len([e for e in logs if e["event"] == "node_failed"]) == 1

    def test_probe_reports_a_failing_initializer_and_passes_a_good_one(self) -> None:
        """probe_initializer runs the initializer in one fresh worker: its traceback, or None."""
        from engine.lanes.pool import probe_initializer

        bad = ProcessPoolExecutor(1, initializer=crashers.missing_model)
        good = ProcessPoolExecutor(1, initializer=crashers.limit_address_space, initargs=(LIMIT,))
        try:
            report = probe_initializer(bad)
            assert report is not None and "FileNotFoundError: no model file" in report
            assert probe_initializer(good) is None
            assert probe_initializer(ProcessPoolExecutor(1)) is None  # none to try
        finally:
            bad.shutdown()
            good.shutdown()


class TestPoolShutDown:
    @pytest.mark.parametrize("kind", ["stdlib", "loky"])
    async def test_a_pool_shut_down_before_the_run_is_a_clear_node_error(self, kind: str) -> None:
        """Not a bare RuntimeError, nor a silent replacement: a NodeError saying what to do."""
        pool = pool_of(kind)
        pool.shutdown()
        with capture_logs() as logs, pytest.raises(NodeError) as caught:
            await one_node(crashers.address_space_limit).compile().arun({}, executor=pool)
        err = caught.value
        assert err.node == "n" and err.lane == "cpu" and err.step == 0
        assert "was shut down while the run still had calls for it" in str(err)
        assert "shut it down only after arun returns" in str(err)
        assert [e for e in logs if e["event"] == "process_pool_replaced"] == []


#: A driver out of file descriptors when its first cpu call starts the pool's workers.
FD_DRIVER = """
import asyncio, os, resource, sys
from pydantic import BaseModel
from engine import START, Graph

class S(BaseModel):
    x: int = 0

def node(state):
    return {"x": 1}

g = Graph(S)
g.add_node("n", node, lane="cpu")
g.add_edge(START, "n")
app = g.compile()
free = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
for fd in held[len(held) - free:]:
    os.close(fd)
try:
    asyncio.run(app.arun({}))
except Exception as exc:
    print("ERROR", type(exc).__name__, str(exc).replace(chr(10), " "), flush=True)
else:
    print("OK", flush=True)
"""


class TestOutOfFileDescriptors:
    @pytest.mark.parametrize("free", [8, 16])
    def test_worker_spawn_without_descriptors_names_the_limit(self, free: int) -> None:
        """A driver at RLIMIT_NOFILE: a NodeError naming the node, the limit and the fix."""
        out = subprocess.run(
            [sys.executable, "-c", FD_DRIVER, str(free)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        (line,) = [x for x in out.stdout.splitlines() if x.startswith(("ERROR", "OK"))]
        assert line.startswith("ERROR NodeError node 'n' (step 0, lane 'cpu', attempt 1)"), line
        assert "Too many open files" in line and "of its limit of 128 (RLIMIT_NOFILE)" in line
        assert "raise the limit (ulimit -n" in line

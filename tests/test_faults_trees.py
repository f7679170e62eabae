"""Nothing a cpu node started outlives its worker: cancelled, timed out, or the driver killed.

A node starts processes of its own (``subprocess.Popen(["sleep", "60"])``,
one in a session of its own, a nested stdlib or loky pool with busy
workers), publishes its worker's pid, and computes. The test then takes the
worker's whole tree from ``/proc``, stops the call the way a user would,
and requires every process of that tree gone within 2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import tests.crashers as crashers
from engine import START, Graph, NodeTimeoutError, WorkerCrashedError
from engine.procs import descendants, pid_alive
from tests.crashers import FaultState

cloudpickle.register_pickle_by_value(crashers)

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process trees: Linux /proc"),
]

ROOT = Path(__file__).resolve().parents[1]

#: What a node starts: a Popen, a Popen in a new session, a nested stdlib or loky pool.
KINDS = ["popen", "popen-session", "stdlib", "loky"]
#: How long everything a stopped call started may take to be gone.
GONE_WITHIN_S = 2.0


def spawner(kind: str, ready: Path, timeout: float | None = None) -> Graph:
    g = Graph(FaultState)
    g.add_node(
        "spawner",
        functools.partial(crashers.spawn_and_stall, kind, str(ready)),
        lane="cpu",
        timeout=timeout,
    )
    g.add_edge(START, "spawner")
    return g


async def wait_ready(ready: Path, timeout: float = 60.0) -> int:
    async with asyncio.timeout(timeout):
        while not ready.exists():
            await asyncio.sleep(0.01)
    return int(ready.read_text())


def tree(root: int, kind: str) -> set[int]:
    """``root`` and its live descendants, checked to hold what ``kind`` started."""
    found = descendants(root)
    assert len(found) >= (1 if kind.startswith("popen") else 2), (kind, found)
    return {root} | found


async def still_alive(pids: set[int], within: float = GONE_WITHIN_S) -> set[int]:
    """The pids of ``pids`` still alive ``within`` seconds from now (empty once all died)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(pid_alive(p) for p in pids):
            return set()
        await asyncio.sleep(0.02)
    return {p for p in pids if pid_alive(p)}


def reap(pids: set[int]) -> None:
    """Clean up after a failing test: kill what survived."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


class TestCancel:
    @pytest.mark.parametrize("kind", KINDS)
    async def test_cancelled_run_leaves_nothing_its_node_started(
        self, kind: str, tmp_path: Path
    ) -> None:
        """Cancelling arun kills the worker and everything its node started."""
        ready = tmp_path / "ready"
        run = asyncio.create_task(spawner(kind, ready).compile().arun({}))
        pids = tree(await wait_ready(ready), kind)
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        left = await still_alive(pids)
        reap(left)
        assert left == set(), f"{kind}: still alive {GONE_WITHIN_S} s after the cancel"

    async def test_cancel_on_a_users_stdlib_pool_leaves_nothing(self, tmp_path: Path) -> None:
        """A user's own pool (no initializer of the engine's): its worker's tree goes too."""
        ready = tmp_path / "ready"
        with ProcessPoolExecutor(2) as pool:
            run = asyncio.create_task(spawner("popen", ready).compile().arun({}, executor=pool))
            pids = tree(await wait_ready(ready), "popen")
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
            left = await still_alive(pids)
            reap(left)
        assert left == set()


class TestTimeout:
    @pytest.mark.parametrize("kind", ["popen", "stdlib", "loky"])
    async def test_timed_out_call_leaves_nothing_its_node_started(
        self, kind: str, tmp_path: Path
    ) -> None:
        """A cpu timeout kills the worker's whole tree, not only the worker."""
        ready = tmp_path / "ready"
        run = asyncio.create_task(spawner(kind, ready, timeout=8.0).compile().arun({}))
        pids = tree(await wait_ready(ready), kind)
        with pytest.raises(NodeTimeoutError):
            await run
        left = await still_alive(pids)
        reap(left)
        assert left == set(), f"{kind}: still alive {GONE_WITHIN_S} s after the timeout"


#: A driver that runs the spawner on the default pool (or a stdlib pool of its own).
DRIVER = """
import asyncio, functools, sys
from concurrent.futures import ProcessPoolExecutor
import cloudpickle
import tests.crashers as C
cloudpickle.register_pickle_by_value(C)
from engine import START, Graph

kind, ready, executor = sys.argv[1:4]
g = Graph(C.FaultState)
g.add_node("spawner", functools.partial(C.spawn_and_stall, kind, ready), lane="cpu")
g.add_edge(START, "spawner")
pool = ProcessPoolExecutor(2) if executor == "stdlib" else None
if executor == "warm":  # the default pool, every worker started first
    from engine.lanes.pool import default_executor, warm
    warm(default_executor())
asyncio.run(g.compile().ainvoke({}, executor=pool))
"""


def start_driver(
    kind: str, ready: Path, executor: str, workers: int | None = None
) -> subprocess.Popen[bytes]:
    """``DRIVER`` in a process of its own (with ``workers`` default-pool workers if given)."""
    env = dict(os.environ)
    if workers is not None:
        env["ENGINE_CPU_WORKERS"] = str(workers)
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, kind, str(ready), executor],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


class TestDriverKilled:
    @pytest.mark.parametrize(
        ("kind", "executor"),
        [("popen", "default"), ("stdlib", "default"), ("loky", "default"), ("popen", "stdlib")],
    )
    async def test_sigkilled_driver_leaves_nothing_behind(
        self, kind: str, executor: str, tmp_path: Path
    ) -> None:
        """SIGKILL the driver: its workers and all their nodes started are gone within 2 s.

        On the default pool, every process the driver had is gone. On a
        user's stdlib pool, the worker that ran the node and what it started
        are (an idle worker of such a pool, forked with the pool's pipes, is
        the standard library's to end and outlives its driver either way).
        """
        ready = tmp_path / "ready"
        proc = start_driver(kind, ready, executor)
        everything: set[int] = set()
        try:
            worker = await wait_ready(ready)
            everything = descendants(proc.pid)
            pids = tree(worker, kind)
            assert pids <= everything
            if executor == "default":
                pids = everything
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        left = await still_alive(pids)
        reap(left | {p for p in everything if pid_alive(p)})
        assert left == set(), f"{kind} on {executor}: alive {GONE_WITHIN_S} s after the SIGKILL"


class TestWorkerThenDriverKilled:
    @pytest.mark.parametrize("workers", [2, 1])
    async def test_tree_of_a_worker_killed_just_before_its_driver(
        self, workers: int, tmp_path: Path
    ) -> None:
        """A worker is SIGKILLed mid-call and its driver a moment later, before it judged
        that break: what the dead worker's node started is gone too. With a sibling worker
        (started), its parent guard kills it within 2 s; with none, the next driver to run
        a cpu call does. (It lived on, re-parented to init: only the driver killed that
        group, when it judged the break.)"""
        ready = tmp_path / "ready"
        proc = start_driver("popen", ready, "warm", workers=workers)
        pids: set[int] = set()
        try:
            worker = await wait_ready(ready)
            pids = tree(worker, "popen") - {worker}  # what its node started
            os.kill(worker, signal.SIGKILL)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        if workers == 1:
            # No worker of that driver is left to notice: the next driver's first cpu call.
            nxt = tmp_path / "next"
            g = Graph(FaultState)
            g.add_node("n", functools.partial(crashers.sibling, str(nxt), "n", 0.0), lane="cpu")
            g.add_edge(START, "n")
            await g.compile().arun({})
        left = await still_alive(pids)
        stats = {p: Path(f"/proc/{p}/stat").read_text()[:60] for p in left}
        reap(left)
        assert left == set(), f"{workers} worker(s), worker {worker}: still alive {stats}"


class TestBrokenPool:
    async def test_what_an_innocent_sibling_started_does_not_outlive_the_break(
        self, tmp_path: Path
    ) -> None:
        """A worker dies while its sibling's node has a process in the sibling's group that
        is not its child (started through a shell that exited), and the driver is busy for a
        moment: loky kills the sibling (with its children only) and empties its list of
        workers before the driver replaces the pool, so the engine buried nobody and that
        process lived on. It is gone 2 s after the run."""
        ready = tmp_path / "ready"

        async def busy_driver(state: FaultState) -> dict[str, Any]:
            # The event loop is held while the pool breaks (a long inline call, a
            # loaded machine): the pool's own thread handles the break meanwhile.
            await wait_ready(ready)
            time.sleep(1.0)
            return {}

        g = Graph(FaultState)
        g.add_node("crash", functools.partial(crashers.kill_self_when, str(ready), 0.1), lane="cpu")
        g.add_node(
            "daemon",
            functools.partial(crashers.start_daemon_then_burn, str(ready), 0.3),
            lane="cpu",
        )
        g.add_node("busy", busy_driver, lane="io")
        for name in ("crash", "daemon", "busy"):
            g.add_edge(START, name)
        run = asyncio.create_task(g.compile().arun({}, loop_threshold=None))
        first = await wait_ready(ready)
        await asyncio.sleep(0.5)  # the crash has happened: its next attempts do not wait
        ready.unlink()
        with contextlib.suppress(WorkerCrashedError):
            await run  # the crash is poison after its 3rd attempt
        left = await still_alive({first})
        reap(left)
        assert left == set(), "the daemon of the innocent sibling outlived the break"

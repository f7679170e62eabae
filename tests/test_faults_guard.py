"""Worker processes outlive the thread that started them, and die with their driver.

The parent-death guard must follow the driver *process*: a program that
calls ``app.invoke()`` from a short-lived thread must not lose the pool's
workers when that thread exits (``PR_SET_PDEATHSIG`` fires on the spawning
thread's exit, which is why the guard is a watcher thread in each worker).
The driver-SIGKILL side is ``tests/test_resume.py``'s killed-driver test.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import tests.crashers as crashers
from engine import START, Graph
from engine.lanes.pool import default_executor, warm
from engine.lanes.process import pid_alive
from tests.crashers import FaultState

cloudpickle.register_pickle_by_value(crashers)

pytestmark = pytest.mark.timeout(60)


def wait_path(path: Path, seconds: float = 20.0) -> None:
    done = threading.Event()
    for _ in range(int(seconds / 0.01)):
        if path.exists() and path.read_text():
            return
        done.wait(0.01)
    raise AssertionError(f"{path} never appeared")


class TestParentGuard:
    def test_workers_outlive_the_thread_that_started_them(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Thread A starts the pool's workers and exits while thread B's 1.5 s call runs
        on one of them: B's call finishes on attempt 1 on that worker; all workers live."""
        monkeypatch.setenv("ENGINE_CPU_WORKERS", "2")
        default_executor().shutdown(wait=True)  # a cold pool: thread A starts every worker
        warmed: set[int] = set()
        ready, go = threading.Event(), threading.Event()

        def thread_a() -> None:
            pool = default_executor()
            warm(pool)
            warmed.update(pool._processes)  # type: ignore[attr-defined]
            ready.set()
            go.wait(30)

        started, side = tmp_path / "started", tmp_path / "side"
        g = Graph(FaultState)
        fn = functools.partial(crashers.start_then_burn, str(started), str(side), "b", 1.5)
        g.add_node("b", fn, lane="cpu")
        g.add_edge(START, "b")
        app = g.compile()
        results: list[Any] = []

        def thread_b() -> None:
            try:
                results.append(app.run({}))
            except BaseException as exc:  # reported below, not lost in the thread
                results.append(exc)

        a = threading.Thread(target=thread_a, name="warms-and-exits")
        a.start()
        assert ready.wait(30) and len(warmed) == 2
        b = threading.Thread(target=thread_b, name="runs-the-call")
        b.start()
        wait_path(started)  # b's call runs on one of thread A's workers ...
        go.set()
        a.join(10)  # ... when thread A exits
        assert not a.is_alive()
        b.join(30)
        (result,) = results
        assert not isinstance(result, BaseException), result
        (call,) = result.trace.calls
        assert (call.node, call.attempt, call.ok) == ("b", 1, True)
        assert call.pid in warmed and int(started.read_text()) == call.pid
        assert all(pid_alive(pid) for pid in warmed)
        assert default_executor()._processes.keys() == warmed  # type: ignore[attr-defined]

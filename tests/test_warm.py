"""Warm workers: per-worker resources built once, and the pool capped by memory."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import uuid
from typing import Any

import cloudpickle
import pytest

from engine import GraphError
from engine.lanes.pool import default_executor
from engine.marks import chrome_events, simple_pid_of
from engine.warm import (
    WarmOutcome,
    WorkerInit,
    available_memory,
    call_warm,
    pack_warm,
    parse_size,
    run_warm,
    unpack_warm,
    workers_for_memory,
)

# Worker processes cannot import the tests package: node functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

LOAD_S = 0.2


def load_vocab() -> dict[str, Any]:
    """A heavy per-worker resource: slow to build, cheap to use."""
    time.sleep(LOAD_S)
    return {"pid": os.getpid(), "built": time.time(), "vocab": {"a": 1, "b": 2}}


def tokenize(text: str, vocab: dict[str, Any]) -> dict[str, Any]:
    return {"ids": [vocab["vocab"].get(c, 0) for c in text], "built_in": vocab["pid"]}


def broken_init() -> None:
    raise OSError("model file missing")


class TestWorkerInit:
    async def test_each_worker_builds_once_and_load_is_timed_apart(self) -> None:
        """12 calls on the pool: one load per worker, calls reuse it; load time is separate."""
        init = WorkerInit.of(load_vocab, node="tok")
        fn_bytes = cloudpickle.dumps(tokenize)
        loop = asyncio.get_running_loop()
        pool = default_executor()

        async def one(text: str) -> WarmOutcome:
            data = await loop.run_in_executor(pool, run_warm, pack_warm(fn_bytes, init, text))
            return unpack_warm(data)

        results = await asyncio.gather(*(one("ab" * i) for i in range(12)))
        assert all(r.outcome.ok for r in results)
        loads = [r.load for r in results if r.load is not None]
        worker_pids = {r.outcome.pid for r in results}
        # At most one load per worker, ever: a worker warmed by an earlier test loads nothing.
        assert (
            len({ld.pid for ld in loads}) == len(loads) and {ld.pid for ld in loads} <= worker_pids
        )
        for r in results:
            assert r.outcome.value["built_in"] == r.outcome.pid  # its own worker's resource
            assert r.outcome.end - r.outcome.start < LOAD_S / 2  # the call excludes the load
            if r.load is not None:
                assert r.load.load_s >= LOAD_S * 0.9 and r.outcome.start >= r.load.end
                assert r.load.name.endswith("load_vocab")
        again = await one("ba")
        assert again.load is None and again.outcome.bytes_in > 0 and again.outcome.bytes_out > 0

    def test_in_process_calls_share_one_build(self) -> None:
        """call_warm in this process builds once, even with concurrent first calls."""
        init = WorkerInit.of(_counting_init(), node="n")
        results: list[WarmOutcome] = []
        threads = [
            threading.Thread(target=lambda: results.append(call_warm(_echo, init, 1)))
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.outcome.value for r in results] == [("res", 1)] * 4
        assert sum(r.load is not None for r in results) == 1

    def test_identical_inits_share_one_build(self) -> None:
        """Two nodes declaring the same loader get one resource per process, not two."""
        build = _counting_init()
        first = call_warm(_echo, WorkerInit.of(build, node="a"), 1)
        second = call_warm(_echo, WorkerInit.of(build, node="b"), 2)
        assert first.load is not None and second.load is None

    def test_failed_init_fails_the_call_and_is_tried_again(self) -> None:
        """A worker_init that raises fails the call with its name; nothing is cached."""
        init = WorkerInit.of(broken_init, node="n")
        for _ in range(2):
            r = call_warm(_echo, init, 1)
            assert not r.outcome.ok and r.load is None
            assert "worker_init" in r.outcome.error_message
            assert "model file missing" in r.outcome.error_message

    def test_unpicklable_init_is_refused_at_declaration(self) -> None:
        """worker_init must reach the workers: a closure over a lock is a GraphError."""
        lock = threading.Lock()

        def holds() -> Any:
            return lock

        with pytest.raises(GraphError, match=r"node 'tok': worker_init .* cannot be pickled"):
            WorkerInit.of(holds, node="tok")
        with pytest.raises(GraphError, match="not callable"):
            WorkerInit.of(42, node="tok")  # type: ignore[arg-type]

    def test_load_slice_for_the_trace(self) -> None:
        """The load is its own Chrome slice on the worker's thread row."""
        r = call_warm(_echo, WorkerInit.of(_counting_init(), node="n"), 1)
        assert r.load is not None
        mark = r.load.mark()
        assert mark.duration_s == pytest.approx(r.load.load_s) and mark.thread == r.load.thread
        (ev,) = chrome_events([mark], t0=r.load.start, pid_of=simple_pid_of())
        assert ev["ph"] == "X" and ev["ts"] == 0 and ev["name"].startswith("load ")
        assert ev["tid"] == r.load.thread and ev["cat"] == "worker_init" and ev["pid"] == 1


class TestMemory:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (1500, 1500),
            ("512MB", 512 * 1000**2),
            ("2GiB", 2 * 1024**3),
            ("1.5G", 1_500_000_000),
            ("64 kib", 64 * 1024),
            ("10b", 10),
        ],
    )
    def test_parse_size(self, value: Any, expected: int) -> None:
        """Sizes in bytes, decimal or binary units."""
        assert parse_size(value) == expected

    @pytest.mark.parametrize("value", ["two gigs", "-1GB", "5XB", 0, True, 1.5])
    def test_bad_sizes(self, value: Any) -> None:
        """Anything else is a GraphError naming the option."""
        with pytest.raises(GraphError, match="memory_per_worker"):
            parse_size(value)

    def test_cap_by_available_memory(self) -> None:
        """10 GiB available, 10% kept back, 3 GiB per worker: 3 workers of 16."""
        cap = workers_for_memory("3GiB", max_workers=16, available=10 * 1024**3)
        assert cap.workers == 3 and "3 worker(s) (of 16)" in cap.reason

    def test_never_more_than_asked(self) -> None:
        """Plenty of memory leaves max_workers."""
        assert workers_for_memory("1MB", max_workers=4, available=64 * 1024**3).workers == 4

    def test_at_least_one_worker_with_a_warning(self) -> None:
        """If not even one worker fits, one runs and the reason warns of memory pressure."""
        cap = workers_for_memory("8GiB", max_workers=4, available=1024**3)
        assert cap.workers == 1 and "memory pressure" in cap.reason

    def test_this_machine_reports_memory(self) -> None:
        """available_memory() finds a positive number on Linux."""
        found = available_memory()
        assert found is not None and found > 0


def _counting_init() -> Any:
    """A fresh init each time: identical init functions share one build per process."""
    tag = uuid.uuid4().hex

    def build() -> str:
        time.sleep(0.05)
        return "res" if tag else ""

    return build


def _echo(arg: Any, resource: Any) -> Any:
    return (resource, arg)

"""The thread lane's pool: one per event loop, shared by its runs, never starved by
calls that ran past their timeout."""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any

import pytest

from engine import START, Graph, NodeStarted, NodeTimeoutError, Send
from engine.lanes import Lanes
from engine.lanes.threads import POOLS, LoopThreads
from tests.support import State, thread_probe

pytestmark = pytest.mark.timeout(60)


def native_thread(state: Any) -> int:
    return threading.get_native_id()


class TestSharedPool:
    async def test_runners_on_one_loop_share_one_pool(self) -> None:
        """Two runs' thread calls go to one pool; the last run to close shuts it down."""
        loop = asyncio.get_running_loop()
        a, b = Lanes("concurrent"), Lanes("concurrent")
        out = await asyncio.gather(
            a.threads().run(functools.partial(native_thread, None)),
            b.threads().run(functools.partial(native_thread, None)),
        )
        assert all(isinstance(tid, int) for tid in out)
        pool = POOLS.peek(loop)
        assert pool is not None and a.threads() is pool is b.threads()
        await a.aclose()
        assert POOLS.peek(loop) is pool  # b still holds it
        await b.aclose()
        assert POOLS.peek(loop) is None and "closed" in repr(pool)
        with pytest.raises(RuntimeError, match="closed"):
            await pool.run(lambda: None)

    async def test_abandoned_calls_retire_the_pool_before_it_fills(self) -> None:
        """Calls given up on keep their threads; at half the pool held that way, new calls
        go to a fresh pool: a pool of 4 with 4 stuck calls still runs the next call."""
        loop = asyncio.get_running_loop()
        threads = LoopThreads(max_workers=4)
        release = threading.Event()

        def stuck(started: asyncio.Event) -> None:
            loop.call_soon_threadsafe(started.set)
            release.wait(30)

        try:
            for _ in range(4):
                started = asyncio.Event()
                call = asyncio.create_task(threads.run(functools.partial(stuck, started)))
                await started.wait()  # it holds a thread now
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
            assert threads.retired == 2
            assert await asyncio.wait_for(threads.run(lambda: 42), timeout=10) == 42
        finally:
            release.set()
            await threads.aclose()

    async def test_a_returned_abandoned_call_frees_its_count(self) -> None:
        """An abandoned call that returns by itself counts as a free thread again."""
        loop = asyncio.get_running_loop()
        threads = LoopThreads(max_workers=4)
        release = threading.Event()
        returned = asyncio.Event()

        def stuck(started: asyncio.Event) -> None:
            loop.call_soon_threadsafe(started.set)
            release.wait(30)
            loop.call_soon_threadsafe(returned.set)

        try:
            started = asyncio.Event()
            call = asyncio.create_task(threads.run(functools.partial(stuck, started)))
            await started.wait()
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert threads._abandoned == 1
            release.set()
            await returned.wait()
            # The count drops in the call's done callback, on the pool's thread, just after.
            for _ in range(1000):
                if threads._abandoned == 0:
                    break
                await asyncio.sleep(0.01)
            assert threads._abandoned == 0 and threads.retired == 0
        finally:
            release.set()
            await threads.aclose()


def stuck_node(release: threading.Event, arg: Any) -> dict[str, Any]:
    release.wait(30)
    return {}


def fan_out(n: int, state: Any) -> list[Send]:
    return [Send("stuck", i) for i in range(n)]


async def hold(gate: asyncio.Event, state: Any) -> dict[str, Any]:
    await gate.wait()
    return {}


class TestThroughTheApp:
    async def test_timed_out_thread_calls_leave_the_loop_pool_usable(self) -> None:
        """32 thread calls of one run time out stuck, filling a pool's worth of threads;
        another run on the same loop, holding the same shared pool, still runs its calls."""
        loop = asyncio.get_running_loop()
        release, gate = threading.Event(), asyncio.Event()

        holder = Graph(State)  # keeps the loop's pool shared by staying open
        holder.add_node("t", functools.partial(thread_probe, "t"), lane="thread")
        holder.add_node("hold", functools.partial(hold, gate), lane="io")
        holder.add_edge(START, "t")
        holder.add_edge("t", "hold")

        stalls = Graph(State)
        stalls.add_node("stuck", functools.partial(stuck_node, release), lane="thread", timeout=0.2)
        stalls.add_conditional_edges(START, functools.partial(fan_out, 32))

        quick = Graph(State)
        quick.add_node("q", functools.partial(thread_probe, "q"), lane="thread")
        quick.add_edge(START, "q")

        holding = asyncio.Event()

        def on_event(event: Any) -> None:
            if isinstance(event, NodeStarted) and event.node == "hold":
                holding.set()  # its thread call is done: it holds the loop's pool

        held = asyncio.create_task(holder.compile().arun({}, mode="concurrent", on_event=on_event))
        try:
            await asyncio.wait_for(holding.wait(), timeout=10)
            pool = POOLS.peek(loop)
            with pytest.raises(NodeTimeoutError):
                await stalls.compile().arun({}, mode="concurrent")
            r = await asyncio.wait_for(quick.compile().arun({}, mode="concurrent"), timeout=10)
            assert "q" in r.state.probes
            assert POOLS.peek(loop) is pool and pool is not None and pool.retired >= 1
        finally:
            release.set()
            gate.set()
            await held

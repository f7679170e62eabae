"""Run-level budgets: concurrency limits, token-bucket rates and lane caps."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from engine.marks import chrome_events, simple_pid_of
from engine.resources import (
    BudgetError,
    Budgets,
    FakeClock,
    Rate,
    Slots,
    TokenBucket,
    parse_rate,
)


class TestParseRate:
    @pytest.mark.parametrize(
        ("text", "interval"),
        [
            ("60/min", 1.0),
            ("5/s", 0.2),
            ("1000/hour", 3.6),
            ("10/30s", 3.0),
            (" 2 / seconds ", 0.5),
            ("1/Day", 86400.0),
            ("0.5/sec", 2.0),
        ],
    )
    def test_valid(self, text: str, interval: float) -> None:
        """Common spellings parse to the spacing between calls."""
        assert parse_rate(text).interval_s == pytest.approx(interval)

    @pytest.mark.parametrize(
        ("value", "pattern"),
        [
            ("5/m", "write 'min' for minutes"),
            ("5/ms", "ambiguous or too fine"),
            ("5/fortnight", "unknown unit 'fortnight'"),
            ("0/s", "must be positive|count > 0"),
            ("-1/s", "cannot read rate"),
            ("five per second", "cannot read rate"),
            ("5", "cannot read rate"),
            (5, "expected a string like '60/min'"),
        ],
    )
    def test_invalid_is_a_clear_error(self, value: Any, pattern: str) -> None:
        """Anything else fails with a BudgetError (a GraphError, a ValueError) saying how."""
        with pytest.raises(BudgetError, match=pattern) as info:
            parse_rate(value, name="rates['openai']")
        assert isinstance(info.value, ValueError) and "rates['openai']" in str(info.value)

    def test_rate_object_passes_through(self) -> None:
        """A Rate (e.g. with a burst) is taken as it is."""
        rate = Rate(60, 60.0, burst=10)
        assert parse_rate(rate) is rate and str(rate) == "60/60s burst 10"
        with pytest.raises(BudgetError, match="burst"):
            Rate(1, 1.0, burst=0)


class TestTokenBucket:
    async def test_ten_calls_at_5_per_second_take_1_8_seconds(self) -> None:
        """10 acquisitions at 5/s: the first at once, then one every 0.2 s (fake clock)."""
        clock = FakeClock()
        bucket = TokenBucket(parse_rate("5/s"), clock)
        starts = []
        for _ in range(10):
            await bucket.take()
            starts.append(clock.monotonic())
        assert clock.monotonic() == pytest.approx(1.8)
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert gaps == pytest.approx([0.2] * 9)

    async def test_concurrent_takers_are_spaced_too(self) -> None:
        """Ten tasks at once reserve in arrival order; the last waits 1.8 s."""
        clock = FakeClock()
        budgets = Budgets(rates={"api": "5/s"}, clock=clock)

        async def call(i: int) -> float:
            async with budgets.acquire({"api": 1}, node="ask", index=i) as wait:
                assert wait is not None
                return wait.waited_s

        waits = await asyncio.gather(*(call(i) for i in range(10)))
        assert waits == pytest.approx([0.2 * i for i in range(10)])
        assert clock.monotonic() == pytest.approx(1.8)
        assert len(budgets.waits) == 9 and budgets.stats().waited_s == pytest.approx(9.0)

    async def test_real_clock(self) -> None:
        """With the real clock, 6 calls at 20/s take at least 0.25 s of wall time."""
        bucket = TokenBucket(parse_rate("20/s"), _real_clock())
        t0 = time.monotonic()
        for _ in range(6):
            await bucket.take()
        assert time.monotonic() - t0 >= 0.24

    async def test_burst_allows_calls_together_after_idling(self) -> None:
        """burst=3: three calls start at once, the fourth waits one interval."""
        clock = FakeClock()
        bucket = TokenBucket(Rate(1, 1.0, burst=3), clock)
        waits = [await bucket.take() for _ in range(4)]
        assert waits == pytest.approx([0.0, 0.0, 0.0, 1.0])

    async def test_units_take_several_tokens(self) -> None:
        """A call asking 3 units of a 1/s rate pushes the next call 3 s out."""
        clock = FakeClock()
        bucket = TokenBucket(Rate(1, 1.0), clock)
        assert await bucket.take(3) == 0.0
        assert await bucket.take(1) == pytest.approx(3.0)

    async def test_cancelled_reservation_gives_its_time_back(self) -> None:
        """A waiter cancelled while it is the latest reservation frees its slot in time."""
        clock = _BlockingClock()
        bucket = TokenBucket(Rate(1, 1.0), clock)
        await bucket.take()
        waiter = asyncio.create_task(bucket.take())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        start, _ = bucket.reserve()
        assert start == pytest.approx(1.0)  # not 2.0: the cancelled slot was returned


class TestSlots:
    async def test_limit_holds_across_concurrent_calls(self) -> None:
        """12 calls with limits={'openai': 3}: never more than 3 at once, and some waited."""
        budgets = Budgets(limits={"openai": 3})
        running = peak = 0

        async def call(i: int) -> None:
            nonlocal running, peak
            async with budgets.acquire({"openai": 1}, node="ask", index=i):
                running += 1
                peak = max(peak, running)
                await asyncio.sleep(0.01)
                running -= 1

        await asyncio.gather(*(call(i) for i in range(12)))
        assert peak == 3 and budgets.stats().peak == {"openai": 3}
        assert len(budgets.waits) >= 9 and all(w.keys == ("openai",) for w in budgets.waits)

    async def test_first_come_first_served(self) -> None:
        """Waiters are granted in arrival order, a big request is not overtaken."""
        slots = Slots(3, "gpu")
        order: list[str] = []
        await slots.acquire(3)

        async def want(name: str, n: int) -> None:
            await slots.acquire(n)
            order.append(name)

        tasks = [asyncio.create_task(want("big", 3)), asyncio.create_task(want("small", 1))]
        await asyncio.sleep(0)
        slots.release(3)
        await asyncio.sleep(0)
        assert order == ["big"]  # small fits nowhere until big is done
        slots.release(3)
        await asyncio.gather(*tasks)
        assert order == ["big", "small"]

    async def test_cancelled_waiter_leaks_nothing(self) -> None:
        """A call cancelled while waiting propagates CancelledError and holds no slot."""
        budgets = Budgets(limits={"db": 1})
        inside = asyncio.Event()

        async def holder() -> None:
            async with budgets.acquire({"db": 1}):
                inside.set()
                await asyncio.sleep(0.05)

        async def waiter() -> None:
            async with budgets.acquire({"db": 1}):
                raise AssertionError("never granted")

        h = asyncio.create_task(holder())
        await inside.wait()
        w = asyncio.create_task(waiter())
        await asyncio.sleep(0.01)
        w.cancel()
        with pytest.raises(asyncio.CancelledError):
            await w
        await h
        async with asyncio.timeout(1):
            async with budgets.acquire({"db": 1}):
                pass

    async def test_several_resources_never_deadlock(self) -> None:
        """Calls asking {a, b} in opposite orders all finish (names are taken sorted)."""
        budgets = Budgets(limits={"a": 1, "b": 1})

        async def call(res: dict[str, int]) -> None:
            async with budgets.acquire(res):
                await asyncio.sleep(0.001)

        orders = [{"a": 1, "b": 1}, {"b": 1, "a": 1}]
        async with asyncio.timeout(5):
            await asyncio.gather(*(call(orders[i % 2]) for i in range(20)))

    async def test_lane_max_concurrency(self) -> None:
        """max_concurrency={'io': 2} caps calls of that lane, whatever their resources."""
        budgets = Budgets(max_concurrency={"io": 2})
        running = peak = 0

        async def call() -> None:
            nonlocal running, peak
            async with budgets.acquire(None, lane="io"):
                running += 1
                peak = max(peak, running)
                await asyncio.sleep(0.005)
                running -= 1

        await asyncio.gather(*(call() for _ in range(8)))
        assert budgets.lane_limit("io") == 2 and budgets.lane_limit("cpu") is None
        assert peak == 2 and budgets.stats().peak == {"lane:io": 2}
        assert all(w.keys == ("lane:io",) for w in budgets.waits)

    async def test_unbudgeted_resources_cost_nothing(self) -> None:
        """A resource with no limit or rate is free; no wait is recorded."""
        budgets = Budgets(limits={"openai": 1})
        async with budgets.acquire({"other": 5}, lane="cpu") as wait:
            assert wait is None
        assert budgets.waits == [] and Budgets().empty and not budgets.empty


class TestConfiguration:
    def test_node_asking_more_than_the_limit_fails_early(self) -> None:
        """A node that could never fit its limit is an error naming node, resource and fix."""
        budgets = Budgets(limits={"openai": 2})
        pattern = r"node 'ask' asks for 3 of 'openai'.*raise the limit"
        with pytest.raises(BudgetError, match=pattern):
            budgets.check_node("ask", {"openai": 3})

    async def test_acquire_checks_too(self) -> None:
        """acquire() refuses the impossible instead of waiting forever."""
        budgets = Budgets(limits={"openai": 2})
        with pytest.raises(BudgetError, match="could never run"):
            async with budgets.acquire({"openai": 3}, node="ask"):
                pass

    @pytest.mark.parametrize(
        ("kwargs", "pattern"),
        [
            ({"limits": {"openai": 0}}, r"limits\['openai'\] must be an integer >= 1"),
            ({"limits": {"openai": 2.5}}, "must be an integer"),
            ({"limits": {"": 1}}, "non-empty strings"),
            ({"rates": {"openai": "60/m"}}, "write 'min'"),
            ({"max_concurrency": {"gpu": 2}}, "unknown lane 'gpu'"),
            ({"max_concurrency": {"io": 0}}, r"max_concurrency\['io'\]"),
        ],
    )
    def test_bad_budgets(self, kwargs: dict[str, Any], pattern: str) -> None:
        """Misconfigured budgets fail when the run's budgets are built, saying what to write."""
        with pytest.raises(BudgetError, match=pattern):
            Budgets(**kwargs)

    def test_bad_units_on_a_node(self) -> None:
        """resources={'openai': 0} is refused, naming the node."""
        with pytest.raises(BudgetError, match="node 'ask'"):
            Budgets().check_node("ask", {"openai": 0})


async def test_waits_show_in_the_chrome_trace() -> None:
    """Each wait is an async slice (b/e) named after the budget, with the node in args."""
    clock = FakeClock()
    budgets = Budgets(rates={"openai": "2/s"}, clock=clock)
    for i in range(3):
        async with budgets.acquire({"openai": 1}, node="ask", index=i):
            pass
    marks = budgets.marks()
    assert [m.duration_s for m in marks] == pytest.approx([0.5, 0.5])
    events = chrome_events(marks, t0=clock.time() - 10, pid_of=simple_pid_of())
    begins = [e for e in events if e["ph"] == "b"]
    ends = [e for e in events if e["ph"] == "e"]
    assert len(begins) == len(ends) == 2
    assert begins[0]["name"] == "wait openai" and begins[0]["args"]["node"] == "ask[1]"
    assert begins[0]["cat"] == "budget"
    assert {e["id"] for e in begins} == {e["id"] for e in ends}
    assert ends[1]["ts"] - begins[1]["ts"] == pytest.approx(0.5e6)


def _real_clock() -> Any:
    from engine.resources import SystemClock

    return SystemClock()


class _BlockingClock(FakeClock):
    """A fake clock whose sleep really waits (until cancelled), for cancellation tests."""

    async def sleep(self, seconds: float) -> None:
        await asyncio.Event().wait()

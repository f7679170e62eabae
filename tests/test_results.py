"""Large cpu-lane results: received through tmpfs, decoded in a thread as the node's, held ~2x.

Real results from real workers: a 150 MB string, a list of millions of
strings. Memory is the driver's own peak RSS (``VmHWM``, reset before the
run); where the decode runs is observed, not assumed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import tests.crashers as crashers
from engine import START, Graph
from engine.lanes import LaneRunner
from engine.lanes.pool import default_executor
from engine.lanes.worker import (
    LARGE_RESULT_BYTES,
    SLICE_ITEMS,
    SPILLED,
    CallOutcome,
    _encode,
    load_outcome,
    run_call,
    run_marked,
)
from tests.crashers import FaultState

cloudpickle.register_pickle_by_value(crashers)

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and /dev/shm"),
]

MB = 1_000_000


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


@contextlib.contextmanager
def peak_rss() -> Iterator[list[int]]:
    """The growth of this process's peak RSS over the block, in bytes (``[growth]``)."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    base = _status("VmRSS")
    out: list[int] = []
    yield out
    out.append(_status("VmHWM") - base)


class SpyGuard:
    """Records the registrations a lane makes with the loop guard, and on which thread."""

    def __init__(self) -> None:
        self.registered: list[tuple[str, int]] = []
        self.held = False

    @contextlib.contextmanager
    def running(self, node: str, *, index: int = -1, fn: Any = None) -> Iterator[None]:
        self.registered.append((node, index))
        self.held = True
        try:
            yield
        finally:
            self.held = False


def outcome(value: Any) -> CallOutcome:
    return CallOutcome(
        ok=True, value=value, pid=1, thread=1, host="h", start=0.0, end=1.0, cpu_s=0.5
    )


class TestLargeResults:
    async def test_peak_driver_memory_stays_under_two_and_a_half_times_the_result(self) -> None:
        """A 150 MB result raises the driver's peak RSS by at most 2.5x its size (was ~2.9x)."""
        size = 150 * MB
        g = Graph(FaultState)
        g.add_node("big", functools.partial(crashers.large_text, size), lane="cpu")
        g.add_edge(START, "big")
        app = g.compile()
        await app.arun({})  # a warm pool: its first start is not what is measured
        with peak_rss() as grew:
            result = await app.arun({})
        assert len(result.state.log[0]) == size
        (call,) = result.trace.calls
        assert call.bytes_out > size
        assert grew[0] < 2.5 * size, f"peak grew {grew[0] / MB:.0f} MB for {size / MB:.0f} MB"

    async def test_a_large_result_is_decoded_off_the_loop_registered_as_its_node(self) -> None:
        """Decoding runs in another thread, with the node registered with the loop guard."""
        seen: dict[str, Any] = {}
        import engine.lanes as lanes

        real = lanes._decoded

        def spying(data: bytes) -> CallOutcome:
            seen["thread"] = threading.get_ident()
            seen["registered"] = guard.held
            return real(data)

        guard = SpyGuard()
        runner = LaneRunner("parallel")
        try:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(lanes, "_decoded", spying)
                out = await runner.call(
                    "big",
                    "cpu",
                    functools.partial(crashers.large_text, 2 * LARGE_RESULT_BYTES),
                    {},
                    is_coroutine=False,
                    guard=guard,
                    index=3,
                )
        finally:
            await runner.aclose()
        assert out.ok and len(out.value["log"][0]) == 2 * LARGE_RESULT_BYTES
        assert seen == {"thread": seen["thread"], "registered": True}
        assert seen["thread"] != threading.get_ident()
        assert guard.registered == [("big", 3)]

    async def test_a_small_result_is_decoded_on_the_loop_unregistered(self) -> None:
        """Small results keep the fast path: no thread, no registration."""
        guard = SpyGuard()
        runner = LaneRunner("parallel")
        try:
            out = await runner.call(
                "small",
                "cpu",
                functools.partial(crashers.large_text, 1000),
                {},
                is_coroutine=False,
                guard=guard,
            )
        finally:
            await runner.aclose()
        assert out.ok and guard.registered == []

    def test_a_large_result_travels_through_a_file_that_reading_removes(
        self, tmp_path: Path
    ) -> None:
        """From a pool worker with a marker on tmpfs: SPILLED + path; decoding unlinks it."""
        import engine.lanes as lanes
        from engine.lanes.markers import marker_base

        if marker_base() != "/dev/shm":
            pytest.skip("no writable /dev/shm")
        fn = cloudpickle.dumps(functools.partial(crashers.large_text, LARGE_RESULT_BYTES))
        arg = pickle.dumps({})
        payload = pickle.dumps((fn, arg, None))
        directory = Path(os.path.join("/dev/shm", f"engine-test-{os.getpid()}"))
        directory.mkdir()
        try:
            data = default_executor().submit(run_marked, "call", payload, str(directory / "0"))
            got = data.result(timeout=60)
            assert got.startswith(SPILLED)
            path = Path(os.fsdecode(got[len(SPILLED) :]))
            assert path.parent == directory and path.stat().st_size > LARGE_RESULT_BYTES
            decoded = lanes._decoded(got)
            assert decoded.ok and len(decoded.value["log"][0]) == LARGE_RESULT_BYTES
            assert list(directory.iterdir()) == []  # the file and the marker are gone
        finally:
            for leftover in directory.iterdir():
                leftover.unlink()
            directory.rmdir()

    def test_small_results_and_results_without_a_marker_take_the_pipe(self) -> None:
        """Under the threshold, or outside a local pool (no marker): the frame itself."""
        fn = cloudpickle.dumps(functools.partial(crashers.large_text, LARGE_RESULT_BYTES))
        payload = pickle.dumps((fn, pickle.dumps({}), None))
        data = run_marked("call", payload, None)
        assert not data.startswith(SPILLED) and len(data) > LARGE_RESULT_BYTES
        assert load_outcome(data)[0].value["log"][0] == "x" * LARGE_RESULT_BYTES
        assert run_call(pickle.dumps((cloudpickle.dumps(len), pickle.dumps("abc"), None)))


class TestSlicedLists:
    def test_a_long_list_of_plain_items_travels_in_slices_and_comes_back_equal(self) -> None:
        """More than SLICE_ITEMS plain items: several parts, rebuilt into the same list."""
        value = {"items": [f"s{i}" for i in range(2 * SLICE_ITEMS + 7)] + [1, 2.5, None, b"x"]}
        frame = _encode(outcome(value), 0)
        head = pickle.loads(frame[11 : 11 + int.from_bytes(frame[3:11], "little")])
        (_, type_name, sizes) = head[1][0]
        assert type_name == "list" and len(sizes) == 3
        back, _, error = load_outcome(frame)
        assert error is None and back.value == value and type(back.value["items"]) is list

    def test_lists_with_shared_or_nested_items_stay_whole(self) -> None:
        """Items that are not plain (dicts, shared objects) keep one pickle: identity kept."""
        shared = {"k": 1}
        value = {"items": [shared] * (SLICE_ITEMS + 1)}
        frame = _encode(outcome(value), 0)
        head = pickle.loads(frame[11 : 11 + int.from_bytes(frame[3:11], "little")])
        assert len(head[1][0][2]) == 1
        back = load_outcome(frame)[0].value["items"]
        assert back[0] is back[-1]

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
from engine.lanes import Call, Lanes
from engine.lanes import cpu as cpu_lane
from engine.lanes.frames import SLICE_ITEMS, SPILLED, decode, encode, request
from engine.lanes.measure import OK, Measured
from engine.lanes.pool import default_executor
from engine.lanes.worker import LARGE_RESULT_BYTES, run_calls, run_marked
from engine.spec import Task
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


def measured(value: Any) -> Measured:
    return Measured(OK, 1, 1, "h", 0.0, 1.0, 0.5, value=value)


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
        real = cpu_lane._decode_large

        def spying(data: bytes) -> Any:
            seen["thread"] = threading.get_ident()
            seen["registered"] = guard.held
            return real(data)

        guard = SpyGuard()
        lanes = Lanes("parallel", guard=guard)
        try:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(cpu_lane, "_decode_large", spying)
                out = await lanes.cpu.run(
                    Call(Task("big", 3), 0),
                    functools.partial(crashers.large_text, 2 * LARGE_RESULT_BYTES),
                    {},
                )
        finally:
            await lanes.aclose()
        assert out.ok and len(out.value["log"][0]) == 2 * LARGE_RESULT_BYTES
        assert seen == {"thread": seen["thread"], "registered": True}
        assert seen["thread"] != threading.get_ident()
        assert guard.registered == [("big", 3)]

    async def test_a_small_result_is_decoded_on_the_loop_unregistered(self) -> None:
        """Small results keep the fast path: no thread, no registration."""
        guard = SpyGuard()
        lanes = Lanes("parallel", guard=guard)
        try:
            out = await lanes.cpu.run(
                Call(Task("small"), 0), functools.partial(crashers.large_text, 1000), {}
            )
        finally:
            await lanes.aclose()
        assert out.ok and guard.registered == []

    def test_a_large_result_travels_through_a_file_that_reading_removes(
        self, tmp_path: Path
    ) -> None:
        """From a pool worker with a marker on tmpfs: SPILLED + path; decoding unlinks it."""
        from engine.lanes.markers import marker_base

        if marker_base() != "/dev/shm":
            pytest.skip("no writable /dev/shm")
        fn = cloudpickle.dumps(functools.partial(crashers.large_text, LARGE_RESULT_BYTES))
        arg = pickle.dumps({})
        payload = request(fn, None, [arg])
        directory = Path(os.path.join("/dev/shm", f"engine-test-{os.getpid()}"))
        directory.mkdir()
        try:
            data = default_executor().submit(run_marked, "calls", payload, str(directory / "0"))
            got = data.result(timeout=60)
            assert got.startswith(SPILLED)
            path = Path(os.fsdecode(got[len(SPILLED) :]))
            assert path.parent == directory and path.stat().st_size > LARGE_RESULT_BYTES
            (decoded,) = cpu_lane._decode_large(got)
            value = decoded.measured.value
            assert decoded.measured.ok and len(value["log"][0]) == LARGE_RESULT_BYTES
            assert list(directory.iterdir()) == []  # the file and the marker are gone
        finally:
            for leftover in directory.iterdir():
                leftover.unlink()
            directory.rmdir()

    def test_small_results_and_results_without_a_marker_take_the_pipe(self) -> None:
        """Under the threshold, or outside a local pool (no marker): the frame itself."""
        fn = cloudpickle.dumps(functools.partial(crashers.large_text, LARGE_RESULT_BYTES))
        payload = request(fn, None, [pickle.dumps({})])
        data = run_marked("calls", payload, None)
        assert not data.startswith(SPILLED) and len(data) > LARGE_RESULT_BYTES
        assert decode(data)[0].measured.value["log"][0] == "x" * LARGE_RESULT_BYTES
        (small,) = decode(run_calls(request(cloudpickle.dumps(len), None, [pickle.dumps("abc")])))
        assert small.measured.value == 3


class TestSlicedLists:
    def test_a_long_list_of_plain_items_travels_in_slices_and_comes_back_equal(self) -> None:
        """More than SLICE_ITEMS plain items: several parts, rebuilt into the same list."""
        value = {"items": [f"s{i}" for i in range(2 * SLICE_ITEMS + 7)] + [1, 2.5, None, b"x"]}
        frame = encode([(measured(value), 0)])
        _, metas, _ = pickle.loads(frame[11 : 11 + int.from_bytes(frame[3:11], "little")])
        (_, type_name, sizes) = metas[0][1][0]
        assert type_name == "list" and len(sizes) == 3
        (back,) = decode(frame)
        assert back.unloadable is None and back.measured.value == value
        assert type(back.measured.value["items"]) is list

    def test_lists_with_shared_or_nested_items_stay_whole(self) -> None:
        """Items that are not plain (dicts, shared objects) keep one pickle: identity kept."""
        shared = {"k": 1}
        value = {"items": [shared] * (SLICE_ITEMS + 1)}
        frame = encode([(measured(value), 0)])
        _, metas, _ = pickle.loads(frame[11 : 11 + int.from_bytes(frame[3:11], "little")])
        assert len(metas[0][1][0][2]) == 1
        back = decode(frame)[0].measured.value["items"]
        assert back[0] is back[-1]

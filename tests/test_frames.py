"""The cpu lane's wire format: one frame for any number of calls, each call on its own."""

from __future__ import annotations

import pickle
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

import cloudpickle
import pytest

from engine.lanes.frames import FRAME, decode, dumps_by_value, encode, request
from engine.lanes.measure import OK, PAYLOAD, RAISED, Measured
from engine.lanes.worker import run_calls
from tests.support import burn


def measured(value: Any, start: float = 0.0, end: float = 1.0, **more: Any) -> Measured:
    return Measured(OK, 7, 8, "h", start, end, 0.5, value=value, **more)


class NotHere:
    """Pickles fine; cannot be rebuilt in this process (its reducer refuses)."""

    def __reduce__(self) -> Any:
        return (_refuse, ())


def _double(arg: dict[str, int]) -> dict[str, int]:
    return {"n": 2 * arg["n"]}


_LAST: dict[str, Any] = {}


async def _awaited() -> dict[str, str]:
    return {"i": "awaited"}


def _odd_third(arg: tuple[str, int]) -> Any:
    """``{"i": i}``, but the third call (i == 2) does what ``odd`` says."""
    odd, i = arg
    if i != 2:
        _LAST["value"] = {"i": i}
        return _LAST["value"]
    if odd == "raises":
        raise KeyError("third")
    if odd == "not_plain":
        return {"i": {2}}
    if odd == "same_dict":
        return _LAST["value"]
    return _awaited()


def _work(arg: dict[str, Any]) -> dict[str, float]:
    """Burn CPU (``how="burn"``) or sleep (``"sleep"``) for ``s`` seconds."""
    how, seconds = arg["how"], arg["s"]
    if how == "burn":
        burn(seconds)
    else:
        time.sleep(seconds)
    return {"s": seconds}


def _refuse() -> None:
    raise ModuleNotFoundError("No module named 'elsewhere'")


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("refuses to be pickled")


class TestFrames:
    def test_calls_of_one_frame_come_back_each_with_its_own_value(self) -> None:
        """Three calls in one frame: values, the head fields, the input sizes, in order."""
        frame = encode([(measured({"a": i}, i, i + 1.0), 10 + i) for i in range(3)])
        back = decode(frame)
        assert [d.obj for d in back] == [{"a": 0}, {"a": 1}, {"a": 2}]
        assert [d.bytes_in for d in back] == [10, 11, 12]
        assert [d.measured.start for d in back] == [0, 1, 2]
        assert sum(d.bytes_out for d in back) == pytest.approx(len(frame), abs=3)

    def test_a_value_that_cannot_cross_fails_only_its_call_naming_the_field(self) -> None:
        """One call returns what cannot be pickled, one what the driver cannot rebuild:
        each fails alone with the field named; the third comes back."""
        frame = encode(
            [
                (measured({"ok": 1, "bad": Unpicklable()}), 0),
                (measured({"far": [NotHere()]}), 0),
                (measured({"ok": 3}), 0),
            ]
        )
        first, second, third = decode(frame)
        assert first.measured.kind == PAYLOAD
        assert "field 'bad'" in first.measured.error_message
        assert second.unloadable is not None and "field 'far' (type list)" in second.unloadable[0]
        assert third.obj == {"ok": 3} and third.unloadable is None

    def test_a_chunks_run_queue_wait_is_shared_out_by_wall_time(self) -> None:
        """0.4 s queued over calls of 1 s and 3 s: 0.1 s and 0.3 s."""
        frame = encode([(measured({}, 0.0, 1.0), 0), (measured({}, 1.0, 4.0), 0)], queued=0.4)
        assert [round(d.queued_s, 6) for d in decode(frame)] == [0.1, 0.3]

    def test_plain_values_travel_together_and_come_back_in_order_among_the_others(
        self,
    ) -> None:
        """Plain updates (str, numbers, None, dicts of them) share one blob; a set, a value
        the driver cannot rebuild and a failed call in between keep their own, in order."""
        frame = encode(
            [
                (measured({"a": 1, "b": "x"}), 1),
                (measured({"s": {1, 2}}), 2),
                (measured(None), 3),
                (measured({"far": [NotHere()]}), 4),
                (Measured(RAISED, 7, 8, "h", 0.0, 1.0, 0.5, error=ValueError("no")), 5),
                (measured(2.5), 6),
            ]
        )
        size = int.from_bytes(frame[3:11], "little")
        _, metas, together = pickle.loads(frame[11 : 11 + size])
        assert [layout is None for _, layout, _ in metas] == [1, 0, 1, 0, 0, 1]
        assert pickle.loads(frame[11 + size : 11 + size + together]) == [
            {"a": 1, "b": "x"},
            None,
            2.5,
        ]
        back = decode(frame)
        assert [d.obj for d in back[:3]] == [{"a": 1, "b": "x"}, {"s": {1, 2}}, None]
        same = {"n": 1}  # returned by two calls: two objects in the driver, as unbatched
        one, two = decode(encode([(measured(same), 0), (measured(same), 0)]))
        assert one.obj == two.obj == same and one.obj is not two.obj
        assert back[3].unloadable is not None and "field 'far'" in back[3].unloadable[0]
        assert isinstance(back[4].obj, ValueError) and back[5].obj == 2.5
        assert [d.bytes_in for d in back] == [1, 2, 3, 4, 5, 6]
        assert sum(d.bytes_out for d in back) == pytest.approx(len(frame), abs=6)


class TestWorkerEntry:
    def test_a_chunk_whose_input_cannot_be_unpickled_fails_that_call_alone(self) -> None:
        """run_calls: a bad input fails its own call as a payload error; the others run."""
        bad = pickle.dumps(NotHere())
        blobs = [pickle.dumps({"n": 1}), bad, pickle.dumps({"n": 3})]
        back = decode(run_calls(request(cloudpickle.dumps(len), None, blobs)))
        assert [d.measured.kind for d in back] == [OK, PAYLOAD, OK]
        assert [d.obj for d in back if d.measured.kind == OK] == [1, 1]
        assert "could not unpickle its input" in back[1].measured.error_message
        assert [d.bytes_in for d in back] == [len(b) for b in blobs]

    def test_plain_arguments_travel_in_one_pickle_and_each_call_gets_its_own(self) -> None:
        """A chunk of plain arguments is one pickle (``pickled_together``): each call runs on
        its own argument, with its share of the input's bytes; anything else is refused."""
        from engine.lanes.cpu import pickled_together

        args = [{"n": 1}, {"n": 2, "s": "x"}, 3, None]
        together = pickled_together(args)
        assert together is not None and pickle.loads(together) == args
        assert pickled_together([{"n": 1}, {"n": {1, 2}}]) is None
        assert pickled_together([NotHere()]) is None
        same = {"n": 1}
        assert pickled_together([same, same]) is None  # each call its own copy
        back = decode(run_calls(request(cloudpickle.dumps(repr), None, together)))
        assert [d.obj for d in back] == [repr(a) for a in args]
        assert [d.bytes_in for d in back] == [len(together) // 4] * 4

    def test_a_chunk_of_plain_results_comes_back_as_columns_with_each_calls_timing(
        self,
    ) -> None:
        """Every call returned plain data: the frame holds its heads as columns, and each
        call comes back with its own value, times, CPU and input size, in order."""
        args = [{"n": i} for i in range(5)]
        from engine.lanes.cpu import pickled_together

        together = pickled_together(args)
        assert together is not None
        frame = run_calls(request(cloudpickle.dumps(_double), None, together))
        meta_size = int.from_bytes(frame[len(FRAME) : len(FRAME) + 8], "little")
        _, columns, _ = pickle.loads(frame[len(FRAME) + 8 : len(FRAME) + 8 + meta_size])
        assert isinstance(columns, tuple)  # the columns form, not a row per call
        back = decode(frame)
        assert [d.obj for d in back] == [{"n": 2 * i} for i in range(5)]
        assert all(d.measured.kind == OK and d.measured.cpu_s >= 0 for d in back)
        starts = [d.head[4] for d in back]
        assert starts == sorted(starts) and all(d.head[5] >= d.head[4] for d in back)
        assert [d.bytes_in for d in back] == [len(together) // 5] * 5

    def test_short_calls_share_cpu_readings_and_a_long_call_is_read_alone(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The worker reads its CPU clock once per millisecond of back-to-back calls, not
        twice per call: 300 calls of ~0.1 ms take a few dozen readings, share them by wall
        time (each at most its wall time) and add up to their CPU; a call of a millisecond
        or more is read alone, so a sleeping call next to burning ones is charged no CPU."""
        import engine.lanes.worker as worker

        reads = 0

        def thread_time() -> float:
            nonlocal reads
            reads += 1
            return time.thread_time()

        monkeypatch.setattr(
            worker, "time", SimpleNamespace(time=time.time, thread_time=thread_time)
        )
        from engine.lanes.cpu import pickled_together

        def chunk(args: list[Any]) -> list[Any]:
            together = pickled_together(args)
            assert together is not None
            return decode(run_calls(request(cloudpickle.dumps(_work), None, together)))

        short = chunk([{"how": "burn", "s": 0.0001} for _ in range(300)])
        assert reads <= 300 // 2, reads  # twice per call would be 600 (a loaded machine:
        # longer calls, fewer windows)
        walls = [d.head[5] - d.head[4] for d in short]
        cpus = [d.measured.cpu_s for d in short]
        assert all(0 <= c <= w for c, w in zip(cpus, walls, strict=True))
        assert sum(cpus) >= 0.5 * sum(walls)  # pure CPU work: its share of each window
        mixed = chunk([{"how": h, "s": 0.003} for h in ("burn", "sleep", "burn", "sleep")])
        burned, slept = (
            [d.measured.cpu_s for d in mixed[::2]],
            [d.measured.cpu_s for d in mixed[1::2]],
        )
        assert min(burned) >= 0.002 and max(slept) <= 0.001, (burned, slept)

    @pytest.mark.parametrize("odd", ["raises", "not_plain", "same_dict", "awaitable"])
    def test_a_call_off_the_lean_path_keeps_the_calls_before_and_after_it(self, odd: str) -> None:
        """The third call of five raises, returns something that is not plain data, returns
        the dict an earlier call returned, or returns a coroutine: the chunk goes on the
        general way from there, and every call comes back with its own outcome, in order."""
        blobs = [pickle.dumps((odd, i)) for i in range(5)]
        back = decode(run_calls(request(cloudpickle.dumps(_odd_third), None, blobs)))
        kinds = [d.measured.kind for d in back]
        values = [d.obj for d in back]
        assert [values[i] for i in (0, 1, 3, 4)] == [{"i": i} for i in (0, 1, 3, 4)]
        if odd == "raises":
            assert kinds == [OK, OK, RAISED, OK, OK]
            assert isinstance(back[2].measured.error, KeyError)
        elif odd == "not_plain":
            assert kinds == [OK] * 5 and values[2] == {"i": {2}}
        elif odd == "same_dict":
            assert kinds == [OK] * 5 and values[2] == {"i": 1}
            assert values[2] is not values[1]  # each call its own copy, as before
        else:
            assert kinds == [OK] * 5 and values[2] == {"i": "awaited"}
        assert [d.bytes_in for d in back] == [len(b) for b in blobs]
        # The CPU of the calls before it, and its own, shared out of one reading.
        assert all(d.measured.cpu_s >= 0 for d in back)

    def test_a_raising_node_fails_its_call_with_its_exception(self) -> None:
        """The node's exception comes back whole, as the failure of its call only."""
        back = decode(run_calls(request(cloudpickle.dumps(int), None, [pickle.dumps("x")])))
        (one,) = back
        assert one.measured.kind == RAISED and isinstance(one.measured.error, ValueError)
        assert one.measured.error_type == "ValueError" and "Traceback" in one.head[11]


USER_SCRIPT = """\
import engine
from pydantic import BaseModel


class S(BaseModel):
    n: int = 0


def helper(n):
    raise ValueError("bad n")


def crunch(state):
    return helper(state.n)


if __name__ == "__main__":
    g = engine.Graph(S)
    g.add_node("crunch", crunch, lane="cpu")
    g.add_edge(engine.START, "crunch")
    try:
        g.compile().run({}, mode="parallel")
    except ValueError as exc:  # the node's own exception; the engine's record beside it
        print(engine.node_error_of(exc).traceback_text)
"""


class TestCodeByValue:
    def test_a_function_sent_by_value_keeps_its_file(self) -> None:
        """A function cloudpickle sends by value (here a __main__ one) comes back with the
        file it was defined in, for itself and for the code nested in it."""
        ns: dict[str, Any] = {"__name__": "__main__"}
        src = "def outer(x):\n    inner = lambda y: y + 1\n    return inner(x)\n"
        exec(compile(src, "/home/me/app/graph.py", "exec"), ns)
        back = pickle.loads(dumps_by_value(ns["outer"]))
        assert back(1) == 2
        assert back.__code__.co_filename == "/home/me/app/graph.py"
        (nested,) = [c for c in back.__code__.co_consts if hasattr(c, "co_filename")]
        assert nested.co_filename == "/home/me/app/graph.py"

    def test_a_scripts_cpu_node_traceback_names_its_file_and_line(self, tmp_path: Any) -> None:
        """A cpu node defined in the script being run: the worker's traceback shows the
        script's file, the lines and their source, not <dynamic-code>."""
        script = tmp_path / "my_app.py"
        script.write_text(USER_SCRIPT)
        out = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=120
        )
        assert f'File "{script}", line 14, in crunch' in out.stdout, out.stdout + out.stderr
        assert f'File "{script}", line 10, in helper' in out.stdout
        assert 'raise ValueError("bad n")' in out.stdout
        assert "<dynamic-code>" not in out.stdout

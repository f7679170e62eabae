"""Lane decisions and their reasons, in precedence order:
declared argument > decorator > coroutine > unpicklable sync (thread) > default (cpu)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import pytest

import engine
from engine import START, Graph, LaneDecision
from engine.classify import classify, declared_lane, is_coroutine_function, pickle_problem
from tests.support import State, append


def plain(state: Any) -> None:
    return None


async def coro(state: Any) -> None:
    return None


def lock_closure() -> Callable[[Any], None]:
    lock = threading.Lock()

    def uses_lock(state: Any) -> None:
        with lock:
            return None

    return uses_lock


def async_lock_closure() -> Callable[[Any], Any]:
    lock = threading.Lock()

    async def uses_lock(state: Any) -> None:
        with lock:
            return None

    return uses_lock


class AlwaysThread:
    """A profile policy with an opinion on every node: 'thread'."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def decide(self, node: str, fn: Callable[..., Any]) -> LaneDecision | None:
        self.asked.append(node)
        return LaneDecision("thread", "measured: blocks", "profile")


class TestPrecedence:
    def test_declared_argument_beats_decorator(self) -> None:
        """lane= beats a decorator."""
        d = classify("n", engine.thread(lambda s: None), "inline")
        assert (d.lane, d.source) == ("inline", "declared")
        assert "lane='inline'" in d.reason

    def test_declared_argument_beats_coroutine(self) -> None:
        """lane='cpu' on an async def sends it to a worker."""
        d = classify("n", coro, "cpu")
        assert (d.lane, d.source) == ("cpu", "declared")

    def test_decorator_beats_coroutine(self) -> None:
        """A decorator beats the async-def rule."""

        async def marked(state: Any) -> None:
            return None

        d = classify("n", engine.cpu(marked))
        assert (d.lane, d.source) == ("cpu", "declared") and "@engine.cpu" in d.reason

    def test_decorator_beats_picklability(self) -> None:
        """A decorator beats the picklability rule."""
        d = classify("n", engine.inline(lock_closure()))
        assert (d.lane, d.source) == ("inline", "declared")

    def test_coroutine_is_io(self) -> None:
        """An undeclared async def runs on the loop, whatever it closes over."""
        for fn in (coro, async_lock_closure()):
            d = classify("n", fn)
            assert (d.lane, d.source) == ("io", "coroutine")
            assert "event loop" in d.reason

    def test_unpicklable_sync_is_thread_with_reason(self) -> None:
        """A sync function cloudpickle cannot serialize runs on a thread, and says why."""
        d = classify("n", lock_closure())
        assert (d.lane, d.source) == ("thread", "picklability")
        assert "cannot pickle '_thread.lock'" in d.reason

    def test_default_is_cpu(self) -> None:
        """Any other sync function is presumed CPU-bound."""
        d = classify("n", plain)
        assert (d.lane, d.source) == ("cpu", "default")
        assert "process pool" in d.reason

    def test_partial_of_coroutine_is_io(self) -> None:
        """A functools.partial of an async def is a coroutine function."""
        assert is_coroutine_function(functools.partial(coro))
        assert classify("n", functools.partial(coro)).lane == "io"


class TestPolicy:
    def test_policy_never_overrides_a_declaration(self) -> None:
        """A measured policy is not even asked about declared nodes."""
        policy = AlwaysThread()

        def marked(state: Any) -> None:  # decorators mark in place: never mark `plain`
            return None

        assert classify("a", plain, "cpu", policy).lane == "cpu"
        assert classify("b", engine.inline(marked), None, policy).lane == "inline"
        assert policy.asked == []

    def test_policy_decides_undeclared_sync(self) -> None:
        """For an undeclared picklable sync node the policy's decision wins over the default."""
        d = classify("n", plain, None, AlwaysThread())
        assert (d.lane, d.source) == ("thread", "profile")

    def test_policy_only_moves_coroutines_to_cpu(self) -> None:
        """A policy may move a coroutine to cpu, but any other verdict leaves it on io."""
        assert classify("n", coro, None, AlwaysThread()).lane == "io"


class TestDecorators:
    @pytest.mark.parametrize("lane", ["io", "thread", "cpu", "inline"])
    def test_marks_and_returns_the_function(self, lane: str) -> None:
        """Each decorator returns the function itself, marked with its lane."""

        def fn(state: Any) -> None:
            return None

        assert getattr(engine, lane)(fn) is fn
        assert declared_lane(fn) == lane

    def test_unmarkable_object(self) -> None:
        """A decorator on something that takes no attributes says what to do instead."""
        with pytest.raises(TypeError, match=r"@engine.cpu cannot mark.*lane='cpu'"):
            engine.cpu(len)

    def test_unmarked(self) -> None:
        """A plain function declares no lane."""
        assert declared_lane(plain) is None


class TestPickleProblem:
    def test_picklable(self) -> None:
        """A module-level function or a partial of one has no pickle problem."""
        assert pickle_problem(plain) is None
        assert pickle_problem(functools.partial(append, "items", "x")) is None

    def test_unpicklable_says_why(self) -> None:
        """An unpicklable function's problem names the exception."""
        problem = pickle_problem(lock_closure())
        assert problem is not None and problem.startswith("TypeError:")


def test_explain_table() -> None:
    """explain() has one row per node (lane, source, reason) and prints a table naming each."""
    g = Graph(State)
    g.add_node("fetch", coro)
    g.add_node("score", plain)
    g.add_node("save", lock_closure())
    g.add_node("tiny", plain, lane="inline")
    g.add_edge(START, "fetch")
    g.add_edge("fetch", "score")
    g.add_edge("score", "save")
    g.add_edge("save", "tiny")
    ex = g.compile().explain()
    assert len(ex) == 4
    assert [(r.node, r.lane, r.source) for r in ex] == [
        ("fetch", "io", "coroutine"),
        ("score", "cpu", "default"),
        ("save", "thread", "picklability"),
        ("tiny", "inline", "declared"),
    ]
    assert ex.lane_of("save") == "thread"
    with pytest.raises(KeyError):
        ex.lane_of("ghost")
    lines = str(ex).splitlines()
    assert lines[0].split() == ["node", "lane", "decided", "by", "reason"]
    assert set(lines[1]) <= {"-", " "}
    body = {line.split()[0]: line for line in lines[2 : 2 + len(ex)]}
    assert set(body) == {"fetch", "score", "save", "tiny"}
    assert body["save"].split()[1:3] == ["thread", "picklability"]
    assert "lock" in body["save"]

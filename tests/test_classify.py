"""Lane decisions and their reasons, in precedence order."""

from __future__ import annotations

import threading
from typing import Any

import engine
from engine import START, Graph
from engine.classify import classify
from tests.support import State

LOCK = threading.Lock()


def plain(state: Any) -> None:
    return None


async def coro(state: Any) -> None:
    return None


def closure_over_lock() -> Any:
    lock = threading.Lock()

    def uses_lock(state: Any) -> None:
        with lock:
            return None

    return uses_lock


class TestPrecedence:
    def test_declared_argument_wins(self) -> None:
        """lane= beats a decorator."""
        fn = engine.thread(lambda s: None)
        d = classify("n", fn, "inline")
        assert (d.lane, d.source) == ("inline", "declared")

    def test_decorator(self) -> None:
        """A decorator declares the lane."""

        def marked(state: Any) -> None:
            return None

        d = classify("n", engine.io(marked))
        assert d.lane == "io" and "@engine.io" in d.reason

    def test_coroutine_is_io(self) -> None:
        """An async def runs on the loop."""
        assert classify("n", coro).lane == "io"

    def test_unpicklable_sync_is_thread_with_reason(self) -> None:
        """A sync function that cannot be pickled runs on a thread, and says why."""
        d = classify("n", closure_over_lock())
        assert d.lane == "thread" and d.source == "picklability"
        assert "lock" in d.reason.lower()

    def test_default_is_cpu(self) -> None:
        """Any other sync function is presumed CPU-bound."""
        d = classify("n", plain)
        assert (d.lane, d.source) == ("cpu", "default")


def test_explain_table() -> None:
    """explain() has one row per node and prints a table naming each."""
    g = Graph(State)
    g.add_node("fetch", coro)
    g.add_node("score", plain)
    g.add_node("save", closure_over_lock())
    g.add_edge(START, "fetch")
    g.add_edge("fetch", "score")
    g.add_edge("score", "save")
    ex = g.compile().explain()
    assert [(r.node, r.lane) for r in ex] == [("fetch", "io"), ("score", "cpu"), ("save", "thread")]
    text = str(ex)
    assert text.splitlines()[0].split()[:2] == ["node", "lane"]
    assert all(name in text for name in ("fetch", "score", "save"))

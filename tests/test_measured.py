"""Issue 5 end to end: measured lanes, the loop guard, budgets, lean dispatch, batching, warm
workers, all through the public API (Graph, compile, arun, explain, trace)."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import operator
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import cloudpickle
import pytest
from pydantic import BaseModel
from structlog.testing import capture_logs

from engine import START, Graph, Send
from engine.events import BudgetWaited, LoopBlocked, NodeStarted
from tests.support import State, burn

# Worker processes cannot import the tests package: node functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def crunch(seconds: float, state: Any) -> None:
    burn(seconds)


def wait(seconds: float, state: Any) -> None:
    time.sleep(seconds)


def tiny(state: Any) -> None:
    return None


async def hog(seconds: float, state: Any) -> dict[str, Any]:
    burn(seconds)
    return {}


async def polite(state: Any) -> dict[str, Any]:
    await asyncio.sleep(0.4)
    return {}


def undeclared() -> Graph:
    g = Graph(State)
    g.add_node("crunch", functools.partial(crunch, 0.15))
    g.add_node("wait", functools.partial(wait, 0.15))
    g.add_node("tiny", tiny)
    g.add_node("pinned", functools.partial(wait, 0.05), lane="cpu")
    for name in ("crunch", "wait", "tiny", "pinned"):
        g.add_edge(START, name)
    return g


def lanes_of(result: Any) -> dict[str, str]:
    return {c.node: c.lane for c in result.trace.calls}


class TestMeasuredLanes:
    async def test_second_run_uses_measured_lanes_and_says_why(self) -> None:
        """Run 1 on defaults; run 2 on measured lanes, logged, explained with numbers."""
        app = undeclared().compile()
        first = await app.arun({})
        assert lanes_of(first) == {
            "crunch": "cpu",
            "wait": "cpu",
            "tiny": "cpu",
            "pinned": "cpu",
        }
        text = str(app.explain())
        assert "changed since the last run:" in text and "wait: cpu -> thread" in text
        assert "cpu/wall" in text and "measured:" in text
        # A call of a few microseconds measured once can be inflated past a
        # dispatch by one context switch; its lane follows its own numbers.
        tiny_prof, dispatch = app.profile.get("tiny"), app.profile.dispatch
        assert tiny_prof is not None and tiny_prof.wall_s is not None and dispatch is not None
        tiny_lane = "inline" if tiny_prof.wall_s <= dispatch.cost(0) else "thread"
        with capture_logs() as logs:
            second = await app.arun({})
        assert lanes_of(second) == {
            "crunch": "cpu",
            "wait": "thread",
            "tiny": tiny_lane,
            "pinned": "cpu",  # declared: never overridden
        }
        changed = {e["node"]: e["after"] for e in logs if e["event"] == "lane_changed"}
        assert changed == {"wait": "thread", "tiny": tiny_lane}
        rows = {r.node: r for r in app.explain()}
        assert rows["pinned"].source == "declared" and rows["wait"].source == "profile"
        assert "mostly waiting" in rows["wait"].reason

    async def test_profile_file_round_trip(self, tmp_path: Path) -> None:
        """save_profile then compile(profile=path): the new app decides before its first run."""
        path = tmp_path / "profile.json"
        app = undeclared().compile(profile=path)
        await app.arun({})
        app.save_profile()
        assert json.loads(path.read_text())["nodes"]["wait"]["calls"] == 1
        fresh = undeclared().compile(profile=path)
        assert fresh.plan.nodes["wait"].lane == "thread"
        assert fresh.plan.nodes["crunch"].lane == "cpu"
        assert fresh.plan.nodes["wait"].decision.source == "profile"
        with pytest.raises(ValueError, match="needs a path"):
            undeclared().compile().save_profile()


class TestLoopGuard:
    def graph(self) -> Graph:
        g = Graph(State)
        g.add_node("hog", functools.partial(hog, 0.3))
        g.add_node("polite", polite)
        g.add_edge(START, "hog")
        g.add_edge(START, "polite")
        return g

    async def test_blocking_node_is_named_then_moved(self) -> None:
        """An auto async def burning 300 ms is named in LoopBlocked, then runs in a worker."""
        app = self.graph().compile()
        events = [e async for e in app.astream({})]
        blocked = [e for e in events if isinstance(e, LoopBlocked)]
        assert [e.nodes for e in blocked] == [["hog"]]
        events = [e async for e in app.astream({})]
        assert not [e for e in events if isinstance(e, LoopBlocked)]
        lanes = {e.node: e.lane for e in events if isinstance(e, NodeStarted)}
        assert lanes == {"hog": "cpu", "polite": "io"}  # a worker's own event loop
        assert "blocked the event loop" in {r.node: r for r in app.explain()}["hog"].reason

    async def test_lag_is_a_counter_track_in_the_chrome_trace(self, tmp_path: Path) -> None:
        """The trace's Chrome export carries the loop-lag counter and the blocking instant."""
        r = await self.graph().compile().arun({})
        doc = json.loads(r.trace.to_chrome(tmp_path / "t.json").read_text())
        counters = [e for e in doc["traceEvents"] if e["ph"] == "C"]
        assert counters and max(e["args"]["lag_ms"] for e in counters) >= 200
        (instant,) = [e for e in doc["traceEvents"] if e["ph"] == "i" and e.get("cat") != "step"]
        assert instant["args"]["nodes"] == ["hog"]


class TestBudgets:
    async def test_limit_and_rate_across_a_send_fan_out(self) -> None:
        """10 Sends to a node using 'api': never more than 2 at once, waits traced and emitted."""
        g = Graph(State)
        g.add_node("fan", tiny, lane="inline")
        g.add_node("ask", _ask, resources={"api": 1})
        g.add_conditional_edges("fan", lambda s: [Send("ask", i) for i in range(10)])
        g.add_edge(START, "fan")
        events: list[Any] = []
        r = await g.compile().arun({}, limits={"api": 2}, on_event=events.append)
        calls = r.trace.for_node("ask")
        # How many calls run at each call's start (concurrency peaks at a start):
        # pairwise overlap would also count a call that ended as this one began
        # and another that began as this one ended, never running all three at once.
        running = [sum(o.start <= c.start < o.end for o in calls) for c in calls]
        assert len(calls) == 10 and max(running) == 2
        waits = [e for e in events if isinstance(e, BudgetWaited)]
        assert len(waits) >= 7 and waits[0].resources == ["api"]
        assert any(m.cat == "budget" for m in r.trace.marks)

    async def test_rate(self) -> None:
        """rates={'api': '20/s'}: 6 calls start at least 50 ms apart."""
        g = Graph(State)
        g.add_node("fan", tiny, lane="inline")
        g.add_node("ask", _ask, resources={"api": 1})
        g.add_conditional_edges("fan", lambda s: [Send("ask", i) for i in range(6)])
        g.add_edge(START, "fan")
        r = await g.compile().arun({}, rates={"api": "20/s"})
        starts = sorted(c.start for c in r.trace.for_node("ask"))
        assert all(b - a >= 0.045 for a, b in itertools.pairwise(starts))

    async def test_bad_budget_fails_before_running(self) -> None:
        """A node asking more than the run's limit fails at arun, before any node runs."""
        g = Graph(State)
        g.add_node("ask", _ask, resources={"api": 3})
        g.add_edge(START, "ask")
        with pytest.raises(ValueError, match="could never run"):
            await g.compile().arun({}, limits={"api": 2})


async def _ask(i: Any) -> dict[str, Any]:
    await asyncio.sleep(0.02)
    return {"items": [str(i)]}


class Big(BaseModel):
    topic: str = ""
    corpus: str = ""
    items: Annotated[list[str], operator.add] = []


def topic_len(view: Any) -> dict[str, Any]:
    return {"items": [str(len(view.topic))]}


def reads_corpus(view: Any) -> dict[str, Any]:
    return {"items": [view.corpus[:1]]}


class TestLean:
    async def test_cpu_node_receives_only_what_it_reads(self, mode: str) -> None:
        """A 10 MB state, a node reading one field: a few hundred bytes cross; every mode agrees."""
        g = Graph(Big)
        g.add_node("n", topic_len, lane="cpu", reads=["topic"])
        g.add_edge(START, "n")
        r = await g.compile().arun({"topic": "abc", "corpus": "x" * (10 << 20)}, mode=mode)
        assert r.state.items == ["3"]
        if mode == "parallel":
            (call,) = r.trace.calls
            assert 0 < call.bytes_in < 4096

    async def test_reading_an_undeclared_field_fails_in_every_mode(self, mode: str) -> None:
        """The StateView refuses an unread field the same way in all three modes."""
        g = Graph(Big)
        g.add_node("n", reads_corpus, lane="cpu", reads=["topic"])
        g.add_edge(START, "n")
        with pytest.raises(AttributeError, match=r"declared reads=\['topic'\]"):
            await g.compile().arun({"corpus": "x"}, mode=mode)

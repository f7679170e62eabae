"""Durable runs: a killed driver, a failed step, a signalled CLI, each resumed.

The drivers that get killed run in subprocesses (``tests.crashers.DRIVER``)
on a SQLite file; each node records its finish by appending a line to a
side-effect file, so a test can count how often a node completed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import enum
import functools
import json
import math
import operator
import os
import signal
import subprocess
import sys
import time
import uuid
import zoneinfo
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import cloudpickle
import pytest
from pydantic import BaseModel

import tests.crashers as crashers
from engine import START, Graph, GraphError, InvalidUpdateError, RetryPolicy, Send
from engine.checkpoint import (
    Checkpointer,
    MemoryCheckpointer,
    PendingWrite,
    PostgresCheckpointer,
    SqliteCheckpointer,
)
from engine.errors import CheckpointError, node_error_of
from engine.procs import descendants, pid_alive
from tests.conftest import postgres_dsn
from tests.crashers import FaultState, lines

cloudpickle.register_pickle_by_value(crashers)

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[1]


# -- helpers -------------------------------------------------------------------


class Driver:
    """One driver subprocess running ``tests.crashers.DRIVER`` on files under ``tmp``."""

    def __init__(self, tmp: Path, builder: str = "durable_graph") -> None:
        self.side = tmp / "side"
        self.flag = tmp / "flag"
        self.pid_file = tmp / "pid"
        self.db = tmp / "cp.sqlite"
        self.builder = builder

    def argv(self, how: str, entry: str = "async") -> list[str]:
        files = (self.side, self.flag, self.pid_file, self.db)
        return [sys.executable, "-c", crashers.DRIVER, self.builder, *map(str, files), how, entry]

    def start(self, how: str, entry: str = "async") -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(how, entry),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run(self, how: str) -> dict[str, Any]:
        """Run to the end in a new process; its final state."""
        out = subprocess.run(
            self.argv(how), cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
        )
        assert out.returncode == 0, out.stdout + out.stderr
        (line,) = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
        return result

    def finished(self) -> list[str]:
        """Node names in the order their side effects happened."""
        return [x.split()[0] for x in lines(self.side)]


async def wait_for(path: Path, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not path.exists() or not path.read_text():
            await asyncio.sleep(0.02)


async def all_gone(pids: set[int], timeout: float = 3.0) -> set[int]:
    """The pids still alive after ``timeout`` seconds (empty when all died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = {p for p in pids if pid_alive(p)}
        if not alive:
            return set()
        await asyncio.sleep(0.05)
    return {p for p in pids if pid_alive(p)}


async def uninterrupted(builder: str, tmp: Path) -> dict[str, Any]:
    """The final state of the same graph run start to end, for comparison."""
    tmp.mkdir()
    (tmp / "flag").touch()  # nothing stalls
    graph = getattr(crashers, builder)(str(tmp / "side"), str(tmp / "flag"), str(tmp / "pid"))
    result = await graph.compile().arun({})
    state: dict[str, Any] = result.state.model_dump(mode="json")
    return state


# -- the driver killed -------------------------------------------------------------


class TestDriverKilled:
    @pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death guard: Linux")
    async def test_sigkilled_driver_resumes_to_the_same_state(self, tmp_path: Path) -> None:
        """SIGKILL after step 1: its workers die; a new process resumes; every node ran once."""
        driver = Driver(tmp_path)
        proc = driver.start("start")
        try:
            await wait_for(driver.pid_file)  # node d, step 2, computes: steps 0-1 are saved
            children = descendants(proc.pid)
            stalled = int(driver.pid_file.read_text())
            assert stalled in children
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert sorted(driver.finished()) == ["a", "b", "c"]
        # Workers (and any helper process) die with the driver: the parent-death guard.
        assert await all_gone(children) == set()
        async with SqliteCheckpointer(driver.db) as cp:
            latest = await cp.get_latest("t")
        assert latest is not None and latest.step == 2 and latest.status == "running"
        assert [t.node for t in latest.next_tasks] == ["d"]

        final = driver.run("resume")

        assert final == await uninterrupted("durable_graph", tmp_path / "ref")
        # The new driver swept the dead one's marker directory.
        shm = Path("/dev/shm")
        assert not shm.is_dir() or not list(shm.glob(f"engine-cpu-{proc.pid}-*"))
        done = driver.finished()
        assert sorted(done) == ["a", "b", "c", "d", "e"]  # each completed node once
        assert done[-2:] == ["d", "e"]


# -- a failed step ---------------------------------------------------------------


def failed_step_graph(tmp: Path, one_lane: str, two_lane: str) -> Graph:
    """Step 0: ``one`` succeeds, ``two`` fails twice (its retries) then succeeds; then three."""
    side, count = str(tmp / "side"), str(tmp / "count")
    one = (
        functools.partial(crashers.async_step_node, side, "one")
        if one_lane == "io"
        else functools.partial(crashers.step_node, side, "one", 0.0)
    )
    fail = crashers.async_fail_until if two_lane == "io" else crashers.fail_until
    g = Graph(FaultState)
    g.add_node("one", one, lane=one_lane)
    g.add_node(
        "two",
        functools.partial(fail, count, 2, side, "two"),
        lane=two_lane,
        retry=RetryPolicy(max_attempts=2, initial_interval=0.0, jitter=False),
    )
    g.add_node("three", functools.partial(crashers.async_step_node, side, "three"))
    g.add_edge(START, "one")
    g.add_edge(START, "two")
    g.add_edge(["one", "two"], "three")
    return g


def make_checkpointer(backend: str, tmp: Path) -> Checkpointer:
    """A SQLite file under ``tmp``, or the test PostgreSQL server (skips without one)."""
    if backend == "sqlite":
        return SqliteCheckpointer(tmp / "cp.sqlite")
    return PostgresCheckpointer(postgres_dsn(), pool_size=2)


class TestFailedStep:
    @pytest.mark.parametrize(
        "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
    )
    @pytest.mark.parametrize(("one_lane", "two_lane"), [("io", "cpu"), ("cpu", "io")])
    async def test_resume_reruns_only_the_failed_node(
        self, tmp_path: Path, one_lane: str, two_lane: str, backend: str
    ) -> None:
        """'one' succeeds, 'two' fails twice; resume runs 'two' (and on), never 'one' again."""
        cp = make_checkpointer(backend, tmp_path)
        t = f"t{uuid.uuid4().hex[:10]}"  # a long-lived database keeps old threads
        app = failed_step_graph(tmp_path, one_lane, two_lane).compile(checkpointer=cp)
        with pytest.raises(ConnectionError) as info:
            await app.arun({}, thread_id=t)
        err = node_error_of(info.value)
        assert err is not None and (err.node, err.attempt) == ("two", 2)
        latest = await cp.get_latest(t)
        assert latest is not None and latest.status == "failed" and latest.step == 0
        assert [(w.node, w.updates) for w in latest.pending_writes] == [("one", {"items": ["one"]})]

        result = await app.arun(None, thread_id=t)

        assert result.state.items == ["one", "two", "three"]  # merged in node order
        ran = [x.split()[0] for x in lines(tmp_path / "side")]
        assert ran.count("one") == 1 and ran.count("two") == 1 and ran[-1] == "three"
        assert len(lines(tmp_path / "count")) == 3  # two: 2 failures, then the success
        assert [c.node for c in result.trace.calls if c.step == 0] == ["two"]
        await cp.aclose()

    async def test_resume_of_a_finished_thread_runs_nothing(self) -> None:
        """arun(None) on a thread whose run is done returns its state without calling a node."""
        calls: list[str] = []

        async def node(state: FaultState) -> dict[str, Any]:
            calls.append("n")
            return {"items": ["n"]}

        g = Graph(FaultState)
        g.add_node("n", node)
        g.add_edge(START, "n")
        app = g.compile(checkpointer=MemoryCheckpointer())
        await app.arun({}, thread_id="t")
        result = await app.arun(None, thread_id="t")
        assert result.state.items == ["n"] and calls == ["n"]


# -- a router that fails after its step's nodes succeeded -------------------------


def flaky_router_graph(tmp: Path) -> Graph:
    """Step 0: ``a`` (io) and ``b`` (cpu); then ``a``'s router, which raises on its first call."""
    side, count = str(tmp / "side"), tmp / "router-calls"
    g = Graph(FaultState)
    g.add_node("a", functools.partial(crashers.async_step_node, side, "a"))
    g.add_node("b", functools.partial(crashers.step_node, side, "b", 0.0), lane="cpu")
    g.add_node("c", functools.partial(crashers.async_step_node, side, "c"))
    g.add_edge(START, "a")
    g.add_edge(START, "b")

    def route(state: FaultState) -> str:
        calls = len(lines(count))
        crashers.note(str(count), str(calls))
        if calls == 0:
            raise ValueError("router bug")
        return "c"

    g.add_conditional_edges("a", route)
    return g


class TestRouterFailure:
    async def test_router_error_names_edge_and_step_and_resume_skips_the_nodes(
        self, tmp_path: Path
    ) -> None:
        """A router raising after step 0: GraphError naming 'a' and step 0; the step is saved
        as failed with both writes pending, so the resume routes again without re-running."""
        cp = SqliteCheckpointer(tmp_path / "cp.sqlite")
        app = flaky_router_graph(tmp_path).compile(checkpointer=cp)
        with pytest.raises(GraphError, match=r"conditional edge from 'a'.*step 0") as info:
            await app.arun({}, thread_id="t")
        err = info.value
        assert isinstance(err.__cause__, ValueError) and str(err.__cause__) == "router bug"
        assert (err.node, err.step) == ("a", 0)
        latest = await cp.get_latest("t")
        assert latest is not None and (latest.step, latest.status) == (0, "failed")
        assert [(w.node, w.updates) for w in latest.pending_writes] == [
            ("a", {"items": ["a"]}),
            ("b", {"items": ["b"]}),
        ]

        result = await app.arun(None, thread_id="t")

        assert result.state.items == ["a", "b", "c"]
        ran = [x.split()[0] for x in lines(tmp_path / "side")]
        assert sorted(ran) == ["a", "b", "c"]  # a and b ran once: the resume only routed
        assert [c.node for c in result.trace.calls] == ["c"]
        await cp.aclose()

    async def test_merge_conflict_keeps_the_steps_writes(self) -> None:
        """Two nodes writing one plain field: InvalidUpdateError, and the step is saved as
        failed with both writes pending (nothing of the step is lost or re-run silently)."""
        calls: list[str] = []

        def writer(name: str, value: int) -> Any:
            async def node(state: FaultState) -> dict[str, Any]:
                calls.append(name)
                return {"total": value}

            return node

        g = Graph(FaultState)
        g.add_node("x", writer("x", 1))
        g.add_node("y", writer("y", 2))
        g.add_edge(START, "x")
        g.add_edge(START, "y")
        cp = MemoryCheckpointer()
        with pytest.raises(InvalidUpdateError, match="total"):
            await g.compile(checkpointer=cp).arun({}, thread_id="t")
        latest = await cp.get_latest("t")
        assert latest is not None and (latest.step, latest.status) == (0, "failed")
        assert [(w.node, w.updates) for w in latest.pending_writes] == [
            ("x", {"total": 1}),
            ("y", {"total": 2}),
        ]
        assert sorted(calls) == ["x", "y"]


# -- a signalled CLI ------------------------------------------------------------


class TestSignals:
    @pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
    async def test_signal_saves_finished_writes_and_stops_the_workers(
        self, tmp_path: Path, sig: signal.Signals
    ) -> None:
        """SIGTERM/SIGINT to a run_sync driver: pending writes saved, workers gone, resumable."""
        driver = Driver(tmp_path, builder="interruptible_graph")
        proc = driver.start("start", entry="sync")
        try:
            await wait_for(driver.pid_file)
            async with asyncio.timeout(20):
                while "fast" not in driver.finished():
                    await asyncio.sleep(0.02)
            stalled = int(driver.pid_file.read_text())
            os.kill(proc.pid, sig)
            out, _ = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
        expected = 128 + signal.SIGTERM if sig == signal.SIGTERM else -signal.SIGINT
        assert proc.returncode in (expected, 130), out
        assert "Traceback" not in out or sig == signal.SIGINT
        assert await all_gone({stalled}) == set()
        async with SqliteCheckpointer(driver.db) as cp:
            latest = await cp.get_latest("t")
        assert latest is not None and latest.status == "interrupted"
        assert [w.node for w in latest.pending_writes] == ["fast"]

        final = driver.run("resume")

        assert sorted(final["items"]) == ["fast", "st"]
        assert driver.finished().count("fast") == 1


# -- values plain JSON cannot hold ------------------------------------------------


class Color(enum.Enum):
    RED = "red"


class Reading(BaseModel):
    value: float = 0.0
    at: dt.datetime | None = None


class Exotic(BaseModel):
    score: float = 0.0
    maybe: float | None = None
    zero: float = 0.0
    big: int = 0
    raw: bytes = b""
    pair: tuple[int, str] = (0, "")
    ids: set[int] = set()
    tags: frozenset[str] = frozenset()
    when: dt.datetime | None = None
    day: dt.date | None = None
    clock: dt.time | None = None
    span: dt.timedelta = dt.timedelta()
    money: decimal.Decimal = decimal.Decimal("0")
    key: uuid.UUID | None = None
    text: str = ""
    by_id: dict[int, str] = {}
    ordered: dict[str, float] = {}
    reading: Reading = Reading()
    color: Color | None = None
    loose: Any = None
    seen: Annotated[list[tuple[int, str]], operator.add] = []
    mapped: Annotated[list[Any], operator.add] = []


def exotic_graph(failures: list[int]) -> Graph:
    """Step 0 writes every kind of value; its router sends two payloads of them; in step 1
    Send 1 of ``mapper`` fails while ``failures`` has an item, after the others wrote
    theirs (pending writes of the same kinds)."""

    async def first(state: Exotic) -> dict[str, Any]:
        return {
            "score": math.nan,
            "maybe": math.inf,
            "zero": -0.0,
            "big": 2**100 + 1,
            "raw": b"\x00\xff\xfe",
            "pair": (7, "seven"),
            "ids": {3, 1, 2},
            "tags": frozenset({"a", "b"}),
            "when": dt.datetime(
                2024, 10, 27, 2, 30, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"), fold=1
            ),
            "day": dt.date(1999, 12, 31),
            "clock": dt.time(23, 59, 59, 999999),
            "span": dt.timedelta(days=-1, microseconds=1),
            "money": decimal.Decimal("1.10"),
            "key": uuid.UUID(int=12345),
            "text": "NUL\x00 and a lone \ud800 surrogate",
            "by_id": {2: "two", 1: "one"},
            "ordered": {"zeta": -math.inf, "alpha": 1e16, "$float": 0.5},
            "reading": {"value": math.nan, "at": dt.datetime(2024, 1, 1, tzinfo=dt.UTC)},
            "loose": {"nested": [(1, 2), {b"k": {4.5}}]},
        }

    def route(state: Exotic) -> list[Any]:
        payload = {"raw": state.raw, "pair": state.pair, "nan": state.score}
        return [Send("mapper", payload), Send("mapper", {**payload, "fail": True}), "ok"]

    async def mapper(arg: dict[str, Any]) -> dict[str, Any]:
        if arg.get("fail") and failures:
            failures.pop()
            raise ConnectionError("transient")
        return {"mapped": [arg]}

    async def ok(state: Exotic) -> dict[str, Any]:
        return {"color": Color.RED, "seen": [(1, "x\x00")], "mapped": [{"from": "ok"}]}

    g = Graph(Exotic)
    g.add_node("first", first)
    g.add_node("mapper", mapper)
    g.add_node("ok", ok)
    g.add_edge(START, "first")
    g.add_conditional_edges("first", route)
    return g


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def any_checkpointer(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Checkpointer]:
    """A checkpointer of each backend, closed after the test."""
    cp: Checkpointer
    if request.param == "memory":
        cp = MemoryCheckpointer()
    else:
        cp = make_checkpointer(request.param, tmp_path)
    try:
        yield cp
    finally:
        await cp.aclose()


class TestExactResume:
    async def test_resumed_run_ends_exactly_as_an_uninterrupted_one(
        self, any_checkpointer: Checkpointer
    ) -> None:
        """NaN, inf, -0.0, big ints, bytes, tuples, sets, datetimes, Decimals, UUIDs, NUL and
        surrogates, int keys, dict order, a nested model, an enum: through a failed step's
        checkpoint (state, Send payloads, pending writes) and a resume, on every backend, the
        final state is strictly the uninterrupted run's."""
        reference = await exotic_graph([]).compile().arun({})
        t = f"t{uuid.uuid4().hex[:10]}"
        app = exotic_graph([1]).compile(checkpointer=any_checkpointer)
        with pytest.raises(ConnectionError, match="transient"):
            await app.arun({}, thread_id=t)
        latest = await any_checkpointer.get_latest(t)
        assert latest is not None and (latest.step, latest.status) == (1, "failed")
        assert sorted((w.node, w.index) for w in latest.pending_writes) == [
            ("mapper", 0),
            ("ok", -1),
        ]
        resumed = await app.arun(None, thread_id=t)
        from engine.checkpoint.codec import difference  # strict: types, NaN, -0.0, order

        assert difference(reference.state, resumed.state) is None
        assert [(c.node, c.index) for c in resumed.trace.calls] == [("mapper", 1)]

    @pytest.mark.parametrize("only", ["maybe", "both"])
    async def test_non_finite_floats_survive_a_resume(
        self, any_checkpointer: Checkpointer, only: str
    ) -> None:
        """A node returns NaN and inf; a later step fails; the resume ends with NaN and inf
        (they were saved as null: a float field could never resume, an Optional one came
        back None)."""
        calls: list[str] = []

        async def scores(state: Exotic) -> dict[str, Any]:
            return (
                {"maybe": math.inf} if only == "maybe" else {"score": math.nan, "maybe": math.inf}
            )

        async def later(state: Exotic) -> dict[str, Any]:
            calls.append("later")
            if len(calls) == 1:
                raise ConnectionError("transient")
            return {"text": "done"}

        g = Graph(Exotic)
        g.add_node("scores", scores)
        g.add_node("later", later)
        g.add_edge(START, "scores")
        g.add_edge("scores", "later")
        app = g.compile(checkpointer=any_checkpointer)
        t = f"t{uuid.uuid4().hex[:10]}"
        with pytest.raises(ConnectionError, match="transient"):
            await app.arun({}, thread_id=t)
        result = await app.arun(None, thread_id=t)
        assert result.state.maybe == math.inf and result.state.text == "done"
        assert math.isnan(result.state.score) if only == "both" else result.state.score == 0.0

    async def test_a_value_a_checkpoint_cannot_keep_is_refused_before_saving(
        self, any_checkpointer: Checkpointer
    ) -> None:
        """An enum in an ``Any`` field would come back as its value: the save after the step
        fails with a CheckpointError naming the field, the node and the step, and the
        thread's previous checkpoint stays as it was (it was silently saved as "red")."""

        async def writer(state: Exotic) -> dict[str, Any]:
            return {"loose": Color.RED}

        g = Graph(Exotic)
        g.add_node("writer", writer)
        g.add_edge(START, "writer")
        t = f"t{uuid.uuid4().hex[:10]}"
        app = g.compile(checkpointer=any_checkpointer)
        with pytest.raises(CheckpointError) as info:
            await app.arun({}, thread_id=t)
        text = str(info.value)
        assert f"cannot save step 1 of thread {t!r}" in text
        assert "state field 'loose' (written by node 'writer' in step 0)" in text
        assert "is a str, not a Color" in text
        latest = await any_checkpointer.get_latest(t)
        assert latest is not None and (latest.step, latest.status) == (0, "running")
        assert latest.state["loose"] is None


# -- checkpoints the graph cannot resume ----------------------------------------------


class TestHostileCheckpoint:
    @pytest.mark.parametrize(
        "ghost",
        [
            PendingWrite(node="ghost", updates={"items": ["injected"]}),
            PendingWrite(node="three", updates={"items": ["injected"]}),
        ],
        ids=["unknown-node", "node-not-in-the-step"],
    )
    async def test_pending_writes_of_no_task_are_refused_not_merged(
        self, any_checkpointer: Checkpointer, tmp_path: Path, ghost: PendingWrite
    ) -> None:
        """A stale or altered checkpoint whose pending writes name a node the graph does
        not have (or no task of the step): the resume is a CheckpointError, nothing merged,
        no node run."""
        t = f"t{uuid.uuid4().hex[:10]}"
        app = failed_step_graph(tmp_path, "io", "io").compile(checkpointer=any_checkpointer)
        with pytest.raises(ConnectionError):  # 'two' fails twice: its retries are spent
            await app.arun({}, thread_id=t)
        latest = await any_checkpointer.get_latest(t)
        assert latest is not None and latest.status == "failed"
        altered = latest.model_copy(update={"pending_writes": [*latest.pending_writes, ghost]})
        await any_checkpointer.put(altered)
        ran_before = lines(tmp_path / "side")
        with pytest.raises(CheckpointError, match=f"pending write of node '{ghost.node}'") as info:
            await app.arun(None, thread_id=t)
        assert f"delete_thread({t!r})" in str(info.value)
        assert lines(tmp_path / "side") == ran_before  # no node ran

    async def test_fan_in_bookkeeping_of_an_unknown_edge_is_refused(
        self, any_checkpointer: Checkpointer, tmp_path: Path
    ) -> None:
        """Fan-in bookkeeping naming an edge or source the graph lacks: refused on resume."""
        t = f"t{uuid.uuid4().hex[:10]}"
        app = failed_step_graph(tmp_path, "io", "io").compile(checkpointer=any_checkpointer)
        with pytest.raises(ConnectionError):
            await app.arun({}, thread_id=t)
        latest = await any_checkpointer.get_latest(t)
        assert latest is not None
        await any_checkpointer.put(latest.model_copy(update={"fanin": {"one+two->three": ["x"]}}))
        with pytest.raises(CheckpointError, match=r"counts \['x'\] as sources"):
            await app.arun(None, thread_id=t)


class TestAbandonedThread:
    async def test_delete_thread_lets_a_stuck_thread_start_again(
        self, any_checkpointer: Checkpointer, tmp_path: Path
    ) -> None:
        """A failed run leaves the thread unfinished: new input is refused until the thread
        is deleted, then it starts afresh under the same id."""
        t = f"t{uuid.uuid4().hex[:10]}"
        app = failed_step_graph(tmp_path, "io", "io").compile(checkpointer=any_checkpointer)
        with pytest.raises(ConnectionError):
            await app.arun({}, thread_id=t)
        with pytest.raises(CheckpointError, match="unfinished run"):
            await app.arun({}, thread_id=t)
        await any_checkpointer.delete_thread(t)
        assert await any_checkpointer.list(t) == []
        result = await app.arun({}, thread_id=t)  # 'two' succeeds by now (3rd call)
        assert result.state.items == ["one", "two", "three"]

    async def test_a_thread_id_no_store_can_keep_is_refused_by_arun(
        self, any_checkpointer: Checkpointer, tmp_path: Path
    ) -> None:
        """arun with a lone surrogate in thread_id: a CheckpointError saying why, before
        anything runs (a bare UnicodeEncodeError on SQLite and PostgreSQL)."""
        app = failed_step_graph(tmp_path, "io", "io").compile(checkpointer=any_checkpointer)
        with pytest.raises(CheckpointError, match="lone surrogate"):
            await app.arun({}, thread_id="user-\udcff")
        assert lines(tmp_path / "side") == []

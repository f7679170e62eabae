"""The state API's data side: a thread's tree of checkpoints in every store, snapshots,
update_state and time travel, compared with LangGraph run live on the same scenarios."""

# The checkpointer fixtures (backend, tid) come from test_checkpoint, so that both suites
# run on the same stores: as test parameters they redefine the imported names.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import operator
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest

from engine import END, START, InvalidUpdateError
from engine.checkpoint import (
    Checkpoint,
    InMemorySaver,
    MemoryCheckpointer,
    MemorySaver,
    PendingWrite,
    PostgresCheckpointer,
    PregelTask,
    SqliteCheckpointer,
    SqliteSaver,
    StateSnapshot,
    TaskRef,
)
from engine.checkpoint import history as hist
from engine.checkpoint.snapshot import RunCodec, Topology
from engine.state import StateSchema
from tests.conformance.compare import assert_same
from tests.conformance.record import Recorder, normalise
from tests.conftest import postgres_dsn
from tests.state_driver import Driver, Task
from tests.test_checkpoint import Backend, backend, make_cp, tid  # noqa: F401 (fixtures)

# -- the tree in every store ----------------------------------------------------------


def cp_at(thread_id: str, step: int, **kw: Any) -> Checkpoint:
    return make_cp(thread_id, step, **kw)


class TestTree:
    """How puts place checkpoints, and how they read back: the same on every backend."""

    async def test_a_run_appends_children_and_a_step_saved_again_is_the_same(
        self, backend: Backend, tid: Any
    ) -> None:
        """Without ids, each new step is a child of the latest; the same step again (failed,
        resumed) is the same checkpoint; ids are UUIDs."""
        cp, t = backend.new(), tid("chain")
        a = await cp.put(cp_at(t, 0))
        b = await cp.put(cp_at(t, 1))
        again = await cp.put(cp_at(t, 1, status="failed"))
        c = await cp.put(cp_at(t, 2))
        assert a.parent_id is None and b.parent_id == a.checkpoint_id
        assert (again.checkpoint_id, again.parent_id) == (b.checkpoint_id, a.checkpoint_id)
        assert c.parent_id == b.checkpoint_id
        assert len({a.checkpoint_id, b.checkpoint_id, c.checkpoint_id}) == 3
        assert all(len(x.checkpoint_id) == 36 for x in (a, b, c))
        assert [x.checkpoint_id for x in await cp.history(t)] == [
            c.checkpoint_id,
            b.checkpoint_id,
            a.checkpoint_id,
        ]
        assert (await cp.get(t, b.checkpoint_id)) == again

    async def test_forks_share_a_step_and_the_newest_is_latest(
        self, backend: Backend, tid: Any
    ) -> None:
        """A child of a past checkpoint (a fork, an update) shares its sibling's step; the
        latest is the newest made, not the highest step; each id stays readable."""
        cp, t = backend.new(), tid("fork")
        steps = [await cp.put(cp_at(t, s)) for s in range(4)]
        fork = await cp.put(
            cp_at(t, 2, status="running").model_copy(
                update={"parent_id": steps[1].checkpoint_id, "source": "fork"}
            )
        )
        assert fork.checkpoint_id not in {s.checkpoint_id for s in steps}
        assert (await cp.get_latest(t)) == fork
        assert (await cp.get(t)) == fork
        assert (await cp.get(t, steps[2].checkpoint_id)) == steps[2]
        # The next step of the run from the fork continues the fork's branch.
        after = await cp.put(cp_at(t, 3))
        assert after.parent_id == fork.checkpoint_id and after != steps[3]
        assert [c.step for c in await cp.history(t)] == [3, 2, 3, 2, 1, 0]
        assert [c.step for c in await cp.list(t)] == [0, 1, 2, 3, 2, 3]
        assert await cp.get(t, "no-such-id") is None

    async def test_history_before_limit_and_filter(self, backend: Backend, tid: Any) -> None:
        """``before`` pages back from a checkpoint, ``limit`` counts what matched ``filter``,
        which matches source, step and the caller's metadata."""
        cp, t = backend.new(), tid("page")
        made = []
        for s in range(6):
            source = "input" if s == 0 else "loop"
            made.append(
                await cp.put(
                    cp_at(t, s).model_copy(
                        update={"source": source, "metadata": {"team": "blue" if s % 2 else "red"}}
                    )
                )
            )
        ids = [m.checkpoint_id for m in reversed(made)]
        assert [c.checkpoint_id for c in await cp.history(t, limit=2)] == ids[:2]
        assert [c.checkpoint_id for c in await cp.history(t, before=ids[1])] == ids[2:]
        assert [c.step for c in await cp.history(t, filter={"source": "input"})] == [0]
        assert [c.step for c in await cp.history(t, filter={"team": "blue"}, limit=2)] == [5, 3]
        assert [c.step for c in await cp.history(t, filter={"step": 4})] == [4]
        assert await cp.history(t, filter={"team": "green"}) == []
        assert await cp.history(t, limit=0) == []
        with pytest.raises(ValueError, match="limit"):
            await cp.history(t, limit=-1)

    async def test_a_loop_checkpoint_hands_its_writes_to_its_parent(
        self, backend: Backend, tid: Any
    ) -> None:
        """``parent_writes`` become the parent's task writes (its step's results), replacing
        the ones a failed attempt left; the child itself keeps none."""
        cp, t = backend.new(), tid("writes")
        first = await cp.put(
            cp_at(t, 0, status="failed", writes=[PendingWrite(node="a", updates={"n": 1})])
        )
        child = await cp.put(
            cp_at(t, 1).model_copy(
                update={
                    "parent_writes": [
                        PendingWrite(node="a", updates={"n": 1}),
                        PendingWrite(node="b", updates={"n": 2}),
                    ]
                }
            )
        )
        assert child.parent_writes == [] and child.pending_writes == []
        parent = await cp.get(t, first.checkpoint_id)
        assert parent is not None
        assert [(w.node, w.updates) for w in parent.pending_writes] == [
            ("a", {"n": 1}),
            ("b", {"n": 2}),
        ]

    async def test_namespaces_are_apart_and_deleted_with_the_thread(
        self, backend: Backend, tid: Any
    ) -> None:
        """A subgraph's namespace has its own chain; delete_thread removes every namespace."""
        cp, t = backend.new(), tid("ns")
        root = await cp.put(cp_at(t, 0))
        sub = await cp.put(
            cp_at(t, 0).model_copy(
                update={"checkpoint_ns": "team:1", "parents": {"": root.checkpoint_id}}
            )
        )
        assert sub.parent_id is None and (await cp.get_latest(t)) == root
        got = await cp.get(t, checkpoint_ns="team:1")
        assert got == sub and got.parents == {"": root.checkpoint_id}
        assert [c.checkpoint_ns for c in await cp.history(t, checkpoint_ns="team:1")] == ["team:1"]
        await cp.delete_thread(t)
        assert await cp.get(t, checkpoint_ns="team:1") is None and await cp.get(t) is None

    async def test_explicit_id_is_replaced_in_place(self, backend: Backend, tid: Any) -> None:
        """A put naming a checkpoint id replaces that checkpoint, keeping its place in order."""
        cp, t = backend.new(), tid("upsert")
        a = await cp.put(cp_at(t, 0))
        b = await cp.put(cp_at(t, 1))
        again = await cp.put(
            cp_at(t, 0, status="failed").model_copy(update={"checkpoint_id": a.checkpoint_id})
        )
        assert again.checkpoint_id == a.checkpoint_id
        assert [c.status for c in await cp.history(t)] == ["running", "failed"]
        assert (await cp.get_latest(t)) == b


# -- moving a store of the first layout -----------------------------------------------

OLD_SQLITE = [
    "CREATE TABLE checkpoints (thread_id TEXT NOT NULL, step INTEGER NOT NULL, run_id TEXT"
    " NOT NULL, status TEXT NOT NULL, created_at REAL NOT NULL, data TEXT NOT NULL,"
    " PRIMARY KEY (thread_id, step))",
    "CREATE TABLE writes (thread_id TEXT NOT NULL, step INTEGER NOT NULL, node TEXT NOT NULL,"
    " idx INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (thread_id, step, node, idx))",
]


def _old_row(thread_id: str, step: int, status: str) -> str:
    """A checkpoint row as the first layout's engine wrote it (schema_version 2)."""
    return (
        f'{{"thread_id":"{thread_id}","run_id":"old","step":{step},'
        f'"state":{{"notes":["step {step}"]}},"next_tasks":[{{"node":"work","index":-1,'
        f'"payload":null,"payload_kind":"none"}}],"fanin":{{}},"status":"{status}",'
        f'"created_at":{1_700_000_000 + step},"run_started_at":null,"schema_version":2}}'
    )


class TestMigration:
    """A store of the first layout (rows keyed by thread and step) moves into the tree."""

    def _check(self, listed: list[Checkpoint]) -> None:
        assert [(c.step, c.status, c.source) for c in listed] == [
            (0, "running", "loop"),
            (1, "running", "loop"),
            (2, "failed", "loop"),
        ]
        assert listed[0].parent_id is None
        assert [c.parent_id for c in listed[1:]] == [c.checkpoint_id for c in listed[:-1]]
        assert listed[2].state == {"notes": ["step 2"]} and listed[2].schema_version == 2
        assert [(w.node, w.updates) for w in listed[2].pending_writes] == [("a", {"n": 1})]

    async def test_sqlite_rows_become_a_chain(self, tmp_path: Path) -> None:
        """Each thread's steps become a chain of loop checkpoints, pending writes kept, in
        the setup's transaction; a run then continues the thread as before."""
        path = tmp_path / "old.sqlite"
        with sqlite3.connect(path) as conn:
            for sql in OLD_SQLITE:
                conn.execute(sql)
            for t in ("t1", "t2"):
                for step, status in ((0, "running"), (1, "running"), (2, "failed")):
                    conn.execute(
                        "INSERT INTO checkpoints VALUES (?, ?, 'old', ?, ?, ?)",
                        (t, step, status, 1_700_000_000 + step, _old_row(t, step, status)),
                    )
            conn.execute(
                "INSERT INTO writes VALUES ('t1', 2, 'a', -1,"
                ' \'{"updates":{"n":1},"typed":[]}\')'
            )
            conn.execute(
                "INSERT INTO writes VALUES ('t2', 2, 'a', -1,"
                ' \'{"updates":{"n":1},"typed":[]}\')'
            )
        conn.close()
        async with SqliteCheckpointer(path) as cp:
            for t in ("t1", "t2"):
                self._check(await cp.list(t))
            latest = await cp.get_latest("t1")
            assert latest is not None and latest.step == 2
            nxt = await cp.put(make_cp("t1", 3))
            assert nxt.parent_id == latest.checkpoint_id
        async with SqliteCheckpointer(path) as cp:  # a second setup finds the tree: no-op
            assert [c.step for c in await cp.list("t1")] == [0, 1, 2, 3]

    @pytest.mark.postgres
    async def test_postgres_rows_become_a_chain(self) -> None:
        """The same on PostgreSQL, in a schema of its own, with jsonb rows of either form."""
        import psycopg

        dsn = postgres_dsn()
        schema = f"mig_{int(time.time() * 1000)}"
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
            await admin.execute(f"CREATE SCHEMA {schema}")
            try:
                await admin.execute(f"SET search_path TO {schema}")
                for sql in OLD_SQLITE:
                    await admin.execute(sql.replace("data TEXT", "data JSONB"))
                for step, status in ((0, "running"), (1, "running"), (2, "failed")):
                    await admin.execute(
                        "INSERT INTO checkpoints VALUES ('t1', %s, 'old', %s, %s,"
                        " to_jsonb(%s::text))",
                        (step, status, 1_700_000_000 + step, _old_row("t1", step, status)),
                    )
                await admin.execute(
                    "INSERT INTO writes VALUES ('t1', 2, 'a', -1, %s::jsonb)",
                    ('{"updates": {"n": 1}, "typed": []}',),
                )
                scoped = f"{dsn}{'&' if '?' in dsn else '?'}options=-csearch_path%3D{schema}"
                async with PostgresCheckpointer(scoped, pool_size=1) as cp:
                    self._check(await cp.list("t1"))
                    assert [c.step for c in await cp.history("t1", limit=1)] == [2]
            finally:
                await admin.execute(f"DROP SCHEMA {schema} CASCADE")


# -- LangGraph's constructors ------------------------------------------------------


class TestSavers:
    def test_in_memory_saver_is_a_memory_checkpointer(self) -> None:
        """InMemorySaver (and MemorySaver, its old name) are the engine's memory store."""
        assert MemorySaver is InMemorySaver and issubclass(InMemorySaver, MemoryCheckpointer)
        saver = InMemorySaver()
        stored = asyncio.run(saver.put(make_cp("t", 0)))
        assert asyncio.run(saver.get_latest("t")) == stored

    def test_sqlite_saver_from_conn_string_across_event_loops(self, tmp_path: Path) -> None:
        """``with SqliteSaver.from_conn_string(path)``: usable from several event loops (each
        sync invoke runs its own), closed on leaving the block; the file persists."""
        path = tmp_path / "lg.sqlite"
        with SqliteSaver.from_conn_string(str(path)) as saver:
            assert isinstance(saver, SqliteCheckpointer)
            first = asyncio.run(saver.put(make_cp("t", 0)))
            assert asyncio.run(saver.get_latest("t")) == first
            asyncio.run(saver.acquire("t", "run"))
        assert "closed" in repr(saver)
        with pytest.raises(RuntimeError, match="closed"):
            asyncio.run(saver.get_latest("t"))
        with SqliteSaver.from_conn_string(path) as again:
            assert asyncio.run(again.get_latest("t")) == first
            asyncio.run(again.acquire("t", "other"))  # closing released the first lock

    def test_sqlite_saver_in_memory(self) -> None:
        """``":memory:"`` is a database of the saver's own, gone when it closes."""
        with SqliteSaver.from_conn_string(":memory:") as saver:
            stored = asyncio.run(saver.put(make_cp("t", 0)))
            assert asyncio.run(saver.history("t")) == [stored]
        assert not Path(":memory:").exists()


# -- snapshots, updates and forks against LangGraph -----------------------------------


class Draft(TypedDict):
    topic: str
    drafts: Annotated[list[str], operator.add]
    verdict: str


def write(state: Draft) -> dict[str, Any]:
    return {"drafts": [f"draft {len(state['drafts']) + 1} on {state['topic']}"]}


def review(state: Draft) -> dict[str, Any]:
    return {"verdict": "ok" if len(state["drafts"]) >= 2 else "again"}


def route(state: Draft) -> str:
    return END if state["verdict"] == "ok" else "write"


def langgraph_drafts() -> Any:
    from langgraph.checkpoint.memory import InMemorySaver as LgSaver
    from langgraph.graph import StateGraph

    builder = StateGraph(Draft)
    builder.add_node("write", write)
    builder.add_node("review", review)
    builder.add_edge(START, "write")
    builder.add_edge("write", "review")
    builder.add_conditional_edges("review", route, ["write", END])
    return builder.compile(checkpointer=LgSaver())


def engine_drafts(store: Any) -> Driver:
    return Driver(
        StateSchema.of(Draft, conventions="langgraph"),
        {"write": write, "review": review},
        {START: ["write"], "write": ["review"]},
        store,
        routers={"review": route},
    )


def state_api_scenario(graph: Any, rec: Recorder) -> None:
    """LangGraph's state API on one thread: history, updates, a fork, a branch."""
    config = {"configurable": {"thread_id": "t1"}}
    rec("invoke", graph.invoke({"topic": "owls", "drafts": [], "verdict": ""}, config))
    rec("get_state", graph.get_state(config))
    history = list(graph.get_state_history(config))
    rec("history", history)
    rec("history limit=2", list(graph.get_state_history(config, limit=2)))
    rec("history filter", list(graph.get_state_history(config, filter={"source": "input"})))
    rec("update as write", graph.update_state(config, {"drafts": ["a human"]}, as_node="write"))
    rec("after update", graph.get_state(config))
    rec("continue", graph.invoke(None, config))
    rec("update, no as_node", graph.update_state(config, {"verdict": "edited"}))
    rec("after plain update", graph.get_state(config))
    before_review = next(s for s in reversed(history) if s.next == ("review",))
    rec("picked", before_review.config)
    rec("fork invoke", graph.invoke(None, before_review.config))
    rec("after fork", graph.get_state(config))
    rec("history after fork", list(graph.get_state_history(config)))
    branch = graph.update_state(before_review.config, {"topic": "bats"})
    rec("branch", graph.get_state(branch))
    rec("branch invoke", graph.invoke(None, branch))
    rec("past, by id", graph.get_state(before_review.config))
    rec("empty thread", graph.get_state({"configurable": {"thread_id": "nobody"}}))
    fresh = {"configurable": {"thread_id": "fresh"}, "metadata": {"team": "blue"}}
    rec("update on a new thread", graph.update_state(fresh, {"topic": "moths"}))
    rec("new thread", graph.get_state(fresh))
    rec.call("unknown as_node", graph.update_state, config, {}, as_node="nope", message=False)
    rec("second input", graph.invoke({"topic": "again"}, fresh))
    rec("history with metadata", list(graph.get_state_history(fresh)))


class Shop(TypedDict):
    sku: str
    stock: int
    log: Annotated[list[str], operator.add]
    owner: str


STOCK = {"apple": 3}


def lookup(state: Shop) -> dict[str, Any]:
    return {"stock": STOCK[state["sku"]], "log": ["lookup"]}


def reserve(state: Shop) -> dict[str, Any]:
    if state["sku"] == "apple" and not STOCK.get("open"):
        raise RuntimeError(f"closed, {state['stock']} waiting")
    return {"log": ["reserve"]}


def claim_a(state: Shop) -> dict[str, Any]:
    return {"owner": "a", "log": ["a"]}


def claim_b(state: Shop) -> dict[str, Any]:
    return {"owner": "b"}


def shop_graphs(make: Callable[..., Any]) -> tuple[Any, Any]:
    return (
        make({"lookup": lookup, "reserve": reserve}, [(START, "lookup"), ("lookup", "reserve")]),
        make({"claim_a": claim_a, "claim_b": claim_b}, [(START, "claim_a"), (START, "claim_b")]),
    )


def langgraph_graph(nodes: dict[str, Any], edges: list[tuple[str, str]]) -> Any:
    from langgraph.checkpoint.memory import InMemorySaver as LgSaver
    from langgraph.graph import StateGraph

    builder = StateGraph(Shop)
    for name, fn in nodes.items():
        builder.add_node(name, fn)
    for a, b in edges:
        builder.add_edge(a, b)
    return builder.compile(checkpointer=LgSaver())


def errors_scenario(graphs: tuple[Any, Any], rec: Recorder) -> None:
    """Failures: the failed task's error in get_state, finished writes shown for the latest
    only, a resume that runs only what failed, conflicting writes that get_state cannot show."""
    shop, conflict = graphs
    STOCK.pop("open", None)
    config = {"configurable": {"thread_id": "pear"}}
    rec.call("unknown sku", shop.invoke, {"sku": "pear", "stock": 0, "log": []}, config)
    rec("after KeyError", shop.get_state(config))
    config = {"configurable": {"thread_id": "apple"}}
    rec.call("closed", shop.invoke, {"sku": "apple", "stock": 0, "log": []}, config)
    rec("after closed", shop.get_state(config))
    rec("history after closed", list(shop.get_state_history(config)))
    STOCK["open"] = 1
    rec("resume", shop.invoke(None, config))
    rec("history after resume", list(shop.get_state_history(config)))
    config = {"configurable": {"thread_id": "conflict"}}
    rec.call("conflict", conflict.invoke, {"sku": "x", "stock": 0, "log": []}, config)
    rec.call("state after conflict", conflict.get_state, config)
    rec("history after conflict", list(conflict.get_state_history(config)))


def _record(scenario: Callable[[Any, Recorder], None], graph: Any) -> list[Any]:
    rec = Recorder()
    scenario(graph, rec)
    return normalise(rec.entries)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "memory":
        return MemoryCheckpointer()
    return SqliteSaver(tmp_path / "driver.sqlite")


class TestAgainstLangGraph:
    """The same scenario on LangGraph and on the engine's data side, records compared exactly
    (ids by their relations, timestamps masked), as the conformance suite compares."""

    def test_state_api(self, store: Any) -> None:
        """get_state, history (limit, filter), update_state with and without as_node, a fork,
        a branch by update, a fresh thread started by an update, metadata, a second input."""
        pytest.importorskip("langgraph")
        expected = _record(state_api_scenario, langgraph_drafts())
        actual = _record(state_api_scenario, engine_drafts(store))
        assert_same(expected, actual, "state API")

    def test_errors(self, store: Any) -> None:
        """A failed task's error, the writes a failed step kept, a resume, a conflict."""
        pytest.importorskip("langgraph")

        def engine_graph(nodes: dict[str, Any], edges: list[tuple[str, str]]) -> Driver:
            targets: dict[str, list[str]] = {}
            for a, b in edges:
                targets.setdefault(a, []).append(b)
            return Driver(StateSchema.of(Shop, conventions="langgraph"), nodes, targets, store)

        expected = _record(errors_scenario, shop_graphs(langgraph_graph))
        actual = _record(errors_scenario, shop_graphs(engine_graph))
        assert_same(expected, actual, "errors")


# -- the pure functions on their own --------------------------------------------------


class TestPure:
    def _codec(self) -> RunCodec:
        return RunCodec(
            StateSchema.of(Draft), Topology(frozenset({"write", "review"}), {}), held="values"
        )

    def test_snapshot_records_have_langgraph_fields(self) -> None:
        """StateSnapshot and PregelTask are NamedTuples with LangGraph's fields and names."""
        assert StateSnapshot._fields == (
            "values",
            "next",
            "config",
            "metadata",
            "created_at",
            "parent_config",
            "tasks",
            "interrupts",
        )
        assert PregelTask._fields == (
            "id",
            "name",
            "path",
            "error",
            "interrupts",
            "state",
            "result",
        )

    def test_task_ids_are_stable_per_checkpoint_and_task(self) -> None:
        """The same task of the same checkpoint has one id; any other differs."""
        assert hist.task_id("c", "n") == hist.task_id("c", "n")
        ids = {hist.task_id("c", "n"), hist.task_id("c", "n", 0), hist.task_id("d", "n")}
        assert len(ids) == 3

    def test_ambiguous_update_names_the_writers(self) -> None:
        """A checkpoint several nodes made needs as_node; the message names them."""
        codec = self._codec()
        base = codec.save(
            thread_id="t",
            run_id="r",
            step=2,
            state={"topic": "x", "drafts": []},
            tasks=[],
            fanin={},
            pending={},
            status="done",
            started_at=None,
            writers=["review", "write"],
        )
        with pytest.raises(InvalidUpdateError, match=r"nodes \['review', 'write'\].*as_node="):
            hist.update(
                codec,
                base,
                {"topic": "y"},
                None,
                thread_id="t",
                run_id="u",
                nodes={"write", "review"},
                route=lambda *a: [],
            )

    def test_update_keeps_pending_tasks_and_adds_routed_ones(self) -> None:
        """Tasks still to run stay; routing after as_node adds its targets; Sends routed by
        the update are numbered after the pending ones."""
        codec = RunCodec(
            StateSchema.of(Draft),
            Topology(frozenset({"write", "review", "fan"}), {}),
            held="values",
        )
        base = codec.save(
            thread_id="t",
            run_id="r",
            step=1,
            state={"topic": "x", "drafts": []},
            tasks=[Task("fan", 0, {"i": 0}, True), Task("review")],
            fanin={},
            pending={},
            status="running",
            started_at=None,
        )
        base = base.model_copy(update={"checkpoint_id": "base-id"})

        def router(ran: Any, values: Any, step: int, fanin: Any) -> list[Task]:
            return [Task("review"), Task("write"), Task("fan", 0, {"i": 9}, True)]

        new = hist.update(
            codec,
            base,
            {"drafts": ["d"]},
            "write",
            thread_id="t",
            run_id="u",
            nodes={"write", "review", "fan"},
            route=router,
        )
        assert (new.step, new.source, new.parent_id, new.writers) == (
            2,
            "update",
            "base-id",
            ["write"],
        )
        assert [(r.node, r.index) for r in new.next_tasks] == [
            ("fan", 0),
            ("fan", 1),
            ("review", -1),
            ("write", -1),
        ]
        assert new.state["drafts"] == ["d"]

    def test_fork_copies_state_and_tasks_one_step_later(self) -> None:
        """A fork: same state and tasks, step + 1, child of the picked one, no writes."""
        picked = make_cp("t", 3, status="failed", writes=[PendingWrite(node="work", updates={})])
        picked = picked.model_copy(update={"checkpoint_id": "p", "writers": ["a"]})
        forked = hist.fork(picked, run_id="again")
        assert (forked.step, forked.parent_id, forked.source, forked.checkpoint_id) == (
            4,
            "p",
            "fork",
            "",
        )
        assert forked.state == picked.state and forked.next_tasks == picked.next_tasks
        assert forked.pending_writes == [] and forked.status == "running"
        assert forked.writers == ["a"] and forked.run_id == "again"

    def test_starts_fork_unless_an_update_made_it(self) -> None:
        """A named checkpoint is forked (the latest too) unless update_state made it; an
        unnamed one (the latest, resumed) never is."""
        loop = make_cp("t", 1)
        assert hist.starts_fork(loop, named=True)
        assert not hist.starts_fork(loop, named=False)
        assert not hist.starts_fork(loop.model_copy(update={"source": "update"}), named=True)

    def test_input_checkpoint_task_is_start(self) -> None:
        """An input checkpoint names ``__start__`` with the input; a loop one may not."""
        codec = self._codec()
        kw: dict[str, Any] = {
            "thread_id": "t",
            "run_id": "r",
            "step": -1,
            "state": {"drafts": []},
            "tasks": [Task(START, -1, {"topic": "x"}, True)],
            "fanin": {},
            "pending": {},
            "status": "running",
            "started_at": None,
        }
        cp = codec.save(source="input", **kw)
        assert cp.next_tasks == [TaskRef(node=START, payload={"topic": "x"}, payload_kind="json")]
        with pytest.raises(Exception, match="names task '__start__'"):
            codec.save(**kw)

"""Checkpointers: one conformance suite run on memory, SQLite and PostgreSQL.

The PostgreSQL runs need ``ENGINE_TEST_PG_DSN`` (``scripts/postgres.sh``
starts a throwaway server and prints it); without a reachable server they
skip and say why, or fail under ``ENGINE_REQUIRE_PG=1`` (CI). Every test
uses its own thread-id prefix, so runs against a long-lived database never
collide.
"""

from __future__ import annotations

import asyncio
import json
import operator
import pickle
import signal
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from engine import END, START, Graph
from engine.checkpoint import (
    Checkpoint,
    Checkpointer,
    MemoryCheckpointer,
    PendingWrite,
    PostgresCheckpointer,
    SqliteCheckpointer,
    TaskRef,
)
from engine.errors import CheckpointError
from tests.conftest import need_psycopg, postgres_dsn

REPO = Path(__file__).resolve().parent.parent

# Corrupt: (table, thread_id, step, raw data) -> None; writes raw text/bytes
# straight into the stored row(s), under the checkpointer's feet.
Corrupt = Callable[[str, str, int, "str | bytes"], Awaitable[None]]


@dataclass
class Backend:
    """A checkpointer factory on one store, plus ways to reach under it."""

    name: str
    make: Callable[[], Checkpointer]
    corrupt: Corrupt
    #: Where a child process finds the same store (None: in-process only).
    child_args: list[str] | None = None
    #: How many checkpointers one test may open at once on this store.
    max_peers: int = 50
    opened: list[Checkpointer] = field(default_factory=list)

    def new(self) -> Checkpointer:
        cp = self.make()
        self.opened.append(cp)
        return cp


def _memory_backend() -> Backend:
    shared = MemoryCheckpointer()  # a memory store is its instance: peers share it

    async def corrupt(table: str, thread_id: str, step: int, raw: str | bytes) -> None:
        for row in shared._trees[(thread_id, "")]:
            if row.step != step:
                continue
            if table == "checkpoints":
                row.data = raw  # type: ignore[assignment]
            else:
                for key in row.writes:
                    row.writes[key] = raw  # type: ignore[assignment]

    return Backend("memory", lambda: shared, corrupt)


# The rows (of either table) of a thread's checkpoint(s) at one step.
_AT_STEP = (
    "checkpoint_id IN (SELECT checkpoint_id FROM checkpoints WHERE thread_id = ? AND step = ?)"
)


def _sqlite_backend(path: Path) -> Backend:
    async def corrupt(table: str, thread_id: str, step: int, raw: str | bytes) -> None:
        with sqlite3.connect(path) as conn:
            conn.execute(f"UPDATE {table} SET data = ? WHERE {_AT_STEP}", (raw, thread_id, step))
        conn.close()

    return Backend(
        "sqlite", lambda: SqliteCheckpointer(path), corrupt, child_args=["sqlite", str(path)]
    )


def _postgres_backend(dsn: str) -> Backend:
    async def corrupt(table: str, thread_id: str, step: int, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            pytest.skip("a jsonb column refuses anything but valid JSON at write time")
        import psycopg

        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            try:
                await conn.execute(
                    f"UPDATE {table} SET data = %s::jsonb WHERE {_AT_STEP.replace('?', '%s')}",
                    (raw, thread_id, step),
                )
            except psycopg.errors.InvalidTextRepresentation:
                pytest.skip("a jsonb column refuses anything but valid JSON at write time")

    return Backend(
        "postgres",
        lambda: PostgresCheckpointer(dsn, pool_size=2),
        corrupt,
        child_args=["postgres", dsn],
        # Each holds a pool plus a lock connection: stay well under a shared
        # server's max_connections (100 by default).
        max_peers=10,
    )


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each conformance test runs once per backend; checkpointers are closed after."""
    if request.param == "memory":
        b = _memory_backend()
    elif request.param == "sqlite":
        b = _sqlite_backend(tmp_path / "checkpoints.sqlite")
    else:
        b = _postgres_backend(postgres_dsn())
    yield b
    for cp in b.opened:
        await cp.aclose()


@pytest.fixture
def tid() -> Callable[[str], str]:
    """Thread ids unique to this test (a long-lived database keeps old ones)."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    return lambda name: f"{prefix}-{name}"


def make_cp(
    thread_id: str,
    step: int,
    status: str = "running",
    *,
    writes: list[PendingWrite] | None = None,
    state: dict[str, Any] | None = None,
    run_id: str = "run-1",
) -> Checkpoint:
    return Checkpoint(
        thread_id=thread_id,
        run_id=run_id,
        step=step,
        state=state if state is not None else {"notes": [f"step {step}"]},
        next_tasks=[TaskRef(node="work")] if status != "done" else [],
        pending_writes=writes or [],
        status=status,  # type: ignore[arg-type]
        created_at=1_700_000_000.0 + step,
    )


class _Bomb:
    """Unpickling this would create a file: proof that loading runs no code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.path.touch, ())


CHILD = """
import asyncio, sys
from engine.checkpoint import PostgresCheckpointer, SqliteCheckpointer

async def main() -> None:
    kind, where, thread_id = sys.argv[1:4]
    cp = SqliteCheckpointer(where) if kind == "sqlite" else PostgresCheckpointer(where)
    await cp.acquire(thread_id, "child-run")
    print("locked", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


class TestCheckpointer:
    """The contract every checkpointer keeps."""

    async def test_round_trip_keeps_every_field(self, backend: Backend, tid: Any) -> None:
        """A stored checkpoint comes back equal, field by field."""
        cp = backend.new()
        assert isinstance(cp, Checkpointer)
        saved = Checkpoint(
            thread_id=tid("rt"),
            run_id="abc123",
            step=3,
            state={
                "topic": "ünïcode ✓",
                "notes": ["a", "b"],
                "score": 0.1,
                "big": 2**53 + 1,
                "nested": {"x": [1, None, True, {"y": "z"}]},
            },
            next_tasks=[
                TaskRef(node="edge"),
                TaskRef(node="sent", index=0, payload={"q": 1}, payload_kind="json"),
                TaskRef(node="sent", index=1, payload={"topic": "t"}, payload_kind="state"),
            ],
            fanin={"join": ["a", "b"]},
            pending_writes=[
                PendingWrite(node="a", updates={"notes": ["from a"]}),
                PendingWrite(node="sent", index=0, updates={"score": 2.5}),
            ],
            status="failed",
            created_at=1_700_000_123.456789,
            run_started_at=1_700_000_100.25,
        )
        kept = await cp.put(saved)
        assert kept.checkpoint_id and kept.parent_id is None
        assert kept == saved.model_copy(update={"checkpoint_id": kept.checkpoint_id})
        assert await cp.get_latest(tid("rt")) == kept
        assert await cp.list(tid("rt")) == [kept]
        assert await cp.get_latest(tid("absent")) is None
        assert await cp.list(tid("absent")) == []

    async def test_stored_data_is_a_copy(self, backend: Backend, tid: Any) -> None:
        """Mutating a checkpoint after put, or one that was loaded, changes nothing stored."""
        cp = backend.new()
        saved = make_cp(tid("copy"), 0, state={"notes": ["a"]})
        await cp.put(saved)
        saved.state["notes"].append("mutated")
        loaded = await cp.get_latest(tid("copy"))
        assert loaded is not None and loaded.state == {"notes": ["a"]}
        loaded.state["notes"].append("again")
        again = await cp.get_latest(tid("copy"))
        assert again is not None and again.state == {"notes": ["a"]}

    async def test_latest_is_highest_step_and_list_is_oldest_first(
        self, backend: Backend, tid: Any
    ) -> None:
        """A step saved as failed (the same checkpoint again), then the resumed run's next
        step (its child): latest and list agree."""
        cp, t = backend.new(), tid("order")
        for step in (0, 1, 2):
            await cp.put(make_cp(t, step))
        third = await cp.get_latest(t)
        assert third is not None
        failed = make_cp(t, 2, "failed", writes=[PendingWrite(node="ok", updates={"n": 1})])
        kept = await cp.put(failed)  # same step, most recent put wins: the same checkpoint
        assert await cp.get_latest(t) == kept
        assert (kept.checkpoint_id, kept.parent_id) == (third.checkpoint_id, third.parent_id)
        kept = await cp.put(make_cp(t, 3))  # the resumed run's next step: a child
        assert await cp.get_latest(t) == kept and kept.parent_id == third.checkpoint_id
        listed = await cp.list(t)
        assert [(c.step, c.status) for c in listed] == [
            (0, "running"),
            (1, "running"),
            (2, "failed"),
            (3, "running"),
        ]
        assert listed[2].pending_writes == failed.pending_writes
        interrupted = make_cp(t, 3, "interrupted")
        kept = await cp.put(interrupted)
        assert await cp.get_latest(t) == kept

    async def test_put_is_idempotent(self, backend: Backend, tid: Any) -> None:
        """Putting the same step twice stores it once."""
        cp, t = backend.new(), tid("idem")
        saved = make_cp(t, 0, "failed", writes=[PendingWrite(node="a", updates={"n": 1})])
        first = await cp.put(saved)
        assert await cp.put(saved) == first
        assert await cp.list(t) == [first]

    async def test_writes_are_keyed_by_node_and_index(self, backend: Backend, tid: Any) -> None:
        """One write per (node, index), last one wins; a re-put of the step replaces them."""
        cp, t = backend.new(), tid("writes")
        first = make_cp(
            t,
            1,
            "failed",
            writes=[
                PendingWrite(node="a", updates={"n": 1}),
                PendingWrite(node="a", updates={"n": 2}),
                PendingWrite(node="s", index=0, updates={"n": 3}),
                PendingWrite(node="s", index=1, updates={"n": 4}),
            ],
        )
        await cp.put(first)
        loaded = await cp.get_latest(t)
        assert loaded is not None
        assert [(w.node, w.index, w.updates) for w in loaded.pending_writes] == [
            ("a", -1, {"n": 2}),
            ("s", 0, {"n": 3}),
            ("s", 1, {"n": 4}),
        ]
        fewer = make_cp(t, 1, "interrupted", writes=[PendingWrite(node="s", index=1, updates={})])
        kept = await cp.put(fewer)
        assert await cp.get_latest(t) == kept

    async def test_second_run_on_a_thread_is_refused(self, backend: Backend, tid: Any) -> None:
        """A live holder blocks other runs, named in the error; release lets the next in."""
        cp, peer, t = backend.new(), backend.new(), tid("lock")
        await cp.acquire(t, "run-a")
        await cp.acquire(t, "run-a")  # the holder re-acquiring is a no-op
        for other in (cp, peer):
            with pytest.raises(CheckpointError, match=r"already being run by run run-a \(pid "):
                await other.acquire(t, "run-b")
        await peer.release(t, "run-b")  # not the holder: changes nothing
        with pytest.raises(CheckpointError, match="wait for it or use another thread_id"):
            await peer.acquire(t, "run-b")
        await cp.release(t, "run-a")
        await peer.acquire(t, "run-b")
        await peer.acquire(tid("other"), "run-c")  # other threads are independent
        await peer.release(t, "run-b")
        await peer.release(tid("other"), "run-c")

    async def test_lock_of_a_killed_driver_is_taken_over(self, backend: Backend, tid: Any) -> None:
        """A driver SIGKILLed while holding a thread does not block the next run."""
        if backend.child_args is None:
            pytest.skip(f"{backend.name} locks live in one process")
        t = tid("stale")
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            *backend.child_args,
            t,
            cwd=REPO,
            stdout=subprocess.PIPE,
        )
        try:
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), timeout=60)
            assert line.strip() == b"locked", line
            cp = backend.new()
            with pytest.raises(CheckpointError, match=rf"run child-run \(pid {child.pid} on"):
                await cp.acquire(t, "parent-run")
        finally:
            if child.returncode is None:
                child.send_signal(signal.SIGKILL)
            await child.wait()
        # The server notices the dropped session within moments; SQLite at once.
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            try:
                await cp.acquire(t, "parent-run")
                break
            except CheckpointError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)
        with pytest.raises(CheckpointError, match="run parent-run"):
            await backend.new().acquire(t, "third-run")
        await cp.release(t, "parent-run")

    @pytest.mark.parametrize("kind", ["garbage", "pickle"])
    async def test_unparsable_row_is_a_checkpoint_error(
        self, backend: Backend, tid: Any, tmp_path: Path, kind: str
    ) -> None:
        """Bytes that are not JSON (even a pickle) raise CheckpointError and run nothing."""
        cp, t = backend.new(), tid("garbage")
        await cp.put(make_cp(t, 4))
        sentinel = tmp_path / "pickle-ran"
        raw = pickle.dumps(_Bomb(sentinel)) if kind == "pickle" else "{not json"
        await backend.corrupt("checkpoints", t, 4, raw)
        for load in (cp.get_latest, cp.list):
            with pytest.raises(CheckpointError, match=rf"thread '{t}' at step 4") as info:
                await load(t)
            assert info.value.__cause__ is not None
        assert not sentinel.exists()

    @pytest.mark.parametrize(
        ("table", "raw", "cause"),
        [
            ("checkpoints", "[1, 2]", "expected a JSON object"),
            ("checkpoints", '{"schema_version": 1, "step": "x"}', "ValidationError"),
            ("checkpoints", '{"schema_version": 99}', "schema_version 99"),
            ("writes", '["not", "a", "dict"]', "ValidationError"),
            ("checkpoints", "FOREIGN", "the stored data says thread 'elsewhere' step 7"),
        ],
    )
    async def test_row_failing_validation_is_a_checkpoint_error(
        self, backend: Backend, tid: Any, table: str, raw: str, cause: str
    ) -> None:
        """Valid JSON that is not this row's checkpoint of this version raises CheckpointError."""
        cp, t = backend.new(), tid("invalid")
        await cp.put(make_cp(t, 2, "failed", writes=[PendingWrite(node="a", updates={})]))
        if raw == "FOREIGN":  # a well-formed checkpoint of another thread, copied in
            raw = make_cp("elsewhere", 7).model_dump_json(exclude={"pending_writes"})
        await backend.corrupt(table, t, 2, raw)
        with pytest.raises(CheckpointError, match=rf"thread '{t}' at step 2") as info:
            await cp.get_latest(t)
        assert cause in str(info.value)
        assert info.value.__cause__ is not None

    @pytest.mark.parametrize("sharing", ["one-shared", "one-each"])
    async def test_fifty_concurrent_runs_on_one_store(
        self, backend: Backend, tid: Any, sharing: str
    ) -> None:
        """50 runs at once, sharing one checkpointer or each with its own: all steps load."""
        count = 1 if sharing == "one-shared" else backend.max_peers
        peers = [backend.new() for _ in range(count)]
        steps = 5

        async def run(i: int) -> None:
            cp, t, run_id = peers[i % len(peers)], tid(f"c{i}"), f"run-{i}"
            await cp.acquire(t, run_id)
            try:
                for step in range(steps):
                    status = "done" if step == steps - 1 else "running"
                    await cp.put(make_cp(t, step, status, state={"i": i, "step": step}))
            finally:
                await cp.release(t, run_id)

        await asyncio.gather(*(run(i) for i in range(50)))
        reader = backend.new()
        for i in range(50):
            listed = await reader.list(tid(f"c{i}"))
            assert [c.step for c in listed] == list(range(steps))
            assert all(c.state == {"i": i, "step": c.step} for c in listed)
            latest = await reader.get_latest(tid(f"c{i}"))
            assert latest is not None and latest.status == "done"

    async def test_use_after_aclose_is_a_runtime_error(self, backend: Backend, tid: Any) -> None:
        """A closed checkpointer says so in its repr and refuses every call; aclose repeats."""
        cp, t = backend.new(), tid("closed")
        await cp.put(make_cp(t, 0))
        assert "open" in repr(cp)
        await cp.aclose()
        await cp.aclose()
        assert "closed" in repr(cp)
        calls: list[Callable[[], Awaitable[object]]] = [
            cp.setup,
            lambda: cp.put(make_cp(t, 1)),
            lambda: cp.get_latest(t),
            lambda: cp.list(t),
            lambda: cp.acquire(t, "r"),
            lambda: cp.release(t, "r"),
        ]
        for call in calls:
            with pytest.raises(RuntimeError, match="is closed"):
                await call()

    @pytest.mark.parametrize(
        ("bad", "message"),
        [
            ("lone-\udc80-surrogate", r"contains a lone surrogate \('\\udc80' at 5\)"),
            ("nul\x00inside", r"contains a NUL character \(at 3\)"),
            ("x" * 1_000_000, r"is 1000000 bytes long in UTF-8; checkpointers accept at most 1024"),
            ("é" * 513, r"is 1026 bytes long"),
        ],
    )
    async def test_thread_ids_no_store_can_keep_are_refused_up_front(
        self, backend: Backend, bad: str, message: str
    ) -> None:
        """A thread id with a lone surrogate, a NUL, or too long for PostgreSQL's index is a
        CheckpointError from every call of every backend, saying what to do; a long id is
        never echoed whole."""
        cp = backend.new()
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: cp.put(make_cp(bad, 0)),
            lambda: cp.get_latest(bad),
            lambda: cp.list(bad),
            lambda: cp.acquire(bad, "r"),
            lambda: cp.release(bad, "r"),
            lambda: cp.delete_thread(bad),
        ]
        for call in calls:
            with pytest.raises(CheckpointError, match=message) as info:
                await call()
            assert len(str(info.value)) < 400
        # The limit itself is accepted.
        await cp.put(make_cp("y" * 1024, 0))
        assert await cp.get_latest("y" * 1024) is not None

    async def test_delete_thread(self, backend: Backend, tid: Any) -> None:
        """delete_thread removes every step and pending write of the thread, and nothing of
        another; it is refused while a run holds the thread."""
        cp, peer, t, other = backend.new(), backend.new(), tid("del"), tid("keep")
        await cp.put(make_cp(t, 0))
        await cp.put(make_cp(t, 1, "failed", writes=[PendingWrite(node="a", updates={})]))
        await cp.put(make_cp(other, 0))
        await cp.acquire(t, "run-a")
        for who in (cp, peer):
            with pytest.raises(CheckpointError, match=r"already being run by run run-a"):
                await who.delete_thread(t)
        assert len(await cp.list(t)) == 2
        await cp.release(t, "run-a")
        await peer.delete_thread(t)
        assert await cp.list(t) == [] and await cp.get_latest(t) is None
        assert [c.step for c in await cp.list(other)] == [0]
        await cp.delete_thread(t)  # nothing left: a no-op
        await cp.put(make_cp(t, 0))  # the id can start afresh
        await cp.acquire(t, "run-b")  # and be run
        await cp.release(t, "run-b")

    async def test_version_1_rows_are_still_read(self, backend: Backend, tid: Any) -> None:
        """Rows written by the first layout (plain JSON, pending writes stored bare) load."""
        cp, t = backend.new(), tid("v1")
        await cp.put(make_cp(t, 2, "failed", writes=[PendingWrite(node="a", updates={})]))
        v1 = make_cp(t, 2, "failed", state={"notes": ["old"], "$x": 1}).model_dump(
            exclude={"pending_writes"}
        )
        v1["schema_version"] = 1
        await backend.corrupt("checkpoints", t, 2, json.dumps(v1))
        await backend.corrupt("writes", t, 2, '{"notes": ["from a"]}')
        loaded = await cp.get_latest(t)
        assert loaded is not None and loaded.schema_version == 1
        assert loaded.state == {"notes": ["old"], "$x": 1}
        assert [(w.node, w.updates, w.typed) for w in loaded.pending_writes] == [
            ("a", {"notes": ["from a"]}, [])
        ]

    async def test_async_context_manager(self, backend: Backend, tid: Any) -> None:
        """``async with`` sets the checkpointer up and closes it."""
        async with backend.new() as cp:
            assert "open" in repr(cp)
            await cp.put(make_cp(tid("ctx"), 0))
            assert await cp.get_latest(tid("ctx")) is not None
        assert "closed" in repr(cp)


class TestBackendDetails:
    """What only one backend promises."""

    async def test_sqlite_file_is_wal(self, tmp_path: Path) -> None:
        """The SQLite file is in WAL mode and its repr names the path."""
        path = tmp_path / "cp.sqlite"
        async with SqliteCheckpointer(path, durable=False) as cp:
            assert str(path) in repr(cp)
            with sqlite3.connect(path) as conn:
                assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            conn.close()

    async def test_sqlite_file_that_is_not_a_database(self, tmp_path: Path) -> None:
        """A file that is not SQLite is a CheckpointError naming it, not a bare sqlite3 error."""
        path = tmp_path / "notes.txt"
        path.write_bytes(b"these are my notes, not a database\n" * 200)
        cp = SqliteCheckpointer(path)
        with pytest.raises(CheckpointError, match=r"notes\.txt") as info:
            await cp.get_latest("t")
        assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
        await cp.aclose()
        assert path.read_bytes().startswith(b"these are my notes")

    async def test_sqlite_foreign_tables(self, tmp_path: Path) -> None:
        """Another program's ``checkpoints`` table is a CheckpointError on read and write."""
        path = tmp_path / "other.sqlite"
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE checkpoints (id INTEGER PRIMARY KEY, blob BLOB)")
        conn.close()
        async with SqliteCheckpointer(path) as cp:
            with pytest.raises(CheckpointError, match=r"other\.sqlite"):
                await cp.get_latest("t")
            with pytest.raises(CheckpointError, match="thread 't' at step 0"):
                await cp.put(make_cp("t", 0))

    @pytest.mark.postgres
    async def test_postgres_lost_lock_session_fences_puts(self) -> None:
        """A driver whose lock session was killed cannot write over the run that took over."""
        dsn = postgres_dsn()
        import psycopg

        from engine.checkpoint.pgschema import lock_key

        t, t2 = (f"t{uuid.uuid4().hex[:10]}-{name}" for name in ("fence", "other"))
        a = PostgresCheckpointer(dsn, pool_size=1)
        b = PostgresCheckpointer(dsn, pool_size=1)
        try:
            await a.acquire(t, "run-a")
            await a.put(make_cp(t, 0, run_id="run-a"))
            # pg_locks shows an int8 advisory key as classid (high half),
            # objid (low half), objsubid 1: find a's lock session and kill it.
            key = lock_key(t) & 0xFFFF_FFFF_FFFF_FFFF
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
                cur = await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND classid = %s::oid AND objid = %s::oid AND objsubid = 1 AND granted",
                    (key >> 32, key & 0xFFFF_FFFF),
                )
                assert [row[0] for row in await cur.fetchall()] == [True]
            deadline = asyncio.get_running_loop().time() + 15
            while True:  # the backend exits a moment after the signal
                try:
                    await b.acquire(t, "run-b")
                    break
                except CheckpointError:
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.05)
            await b.put(make_cp(t, 1, run_id="run-b"))
            with pytest.raises(CheckpointError, match=r"run-a no longer holds .* run run-b \(pid"):
                await a.put(make_cp(t, 1, run_id="run-a"))
            latest = await b.get_latest(t)
            assert latest is not None and latest.run_id == "run-b"
            await a.release(t, "run-a")  # its session is dead: nothing left to unlock
            with pytest.raises(CheckpointError, match="by run run-b"):
                await a.acquire(t, "run-a2")  # on a fresh lock session
            await a.acquire(t2, "run-a3")
            await b.release(t, "run-b")
            await a.acquire(t, "run-a2")
            await a.put(make_cp(t, 2, run_id="run-a2"))
        finally:
            await a.aclose()
            await b.aclose()

    async def test_sqlite_delete_thread_drops_a_dead_holders_lock(self, tmp_path: Path) -> None:
        """A lock left by a driver that died on this host does not block delete_thread."""
        path = tmp_path / "cp.sqlite"
        dead = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        )
        async with SqliteCheckpointer(path) as cp:
            await cp.put(make_cp("t", 0))
            with sqlite3.connect(path) as conn:
                conn.execute(
                    "INSERT INTO locks VALUES ('t', 'dead-run', ?, ?, 0)",
                    (int(dead.stdout), socket.gethostname()),
                )
            conn.close()
            await cp.delete_thread("t")
            assert await cp.list("t") == []
            await cp.acquire("t", "next")

    @pytest.mark.postgres
    async def test_postgres_busy_lock_without_a_record_says_what_is_known(self) -> None:
        """The thread's lock is held but no record names the holder (taking it a moment ago,
        or releasing it): the refusal says so, with no question marks, after looking again."""
        dsn = postgres_dsn()
        import psycopg

        from engine.checkpoint.pgschema import lock_key

        t = f"t{uuid.uuid4().hex[:10]}-norow"
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as holder:
            await holder.execute("SELECT pg_advisory_lock(%s)", (lock_key(t),))
            async with PostgresCheckpointer(dsn, pool_size=1) as cp:
                with pytest.raises(CheckpointError) as info:
                    await cp.acquire(t, "run-b")
                text = str(info.value)
                assert "?" not in text
                assert "just taking or just releasing it" in text
                assert "try again in a moment" in text
                await holder.execute("SELECT pg_advisory_unlock(%s)", (lock_key(t),))
                await cp.acquire(t, "run-b")  # free now
                await cp.release(t, "run-b")

    @pytest.mark.parametrize(("durable", "level"), [(True, 2), (False, 1)])
    async def test_sqlite_durability_sets_synchronous(
        self, tmp_path: Path, durable: bool, level: int
    ) -> None:
        """``durable`` picks synchronous=FULL (2), else NORMAL (1), on the checkpointer's link."""
        async with SqliteCheckpointer(tmp_path / "cp.sqlite", durable=durable) as cp:
            # The pragma is per connection: ask the checkpointer's own one.
            row = await cp._call(
                "read a pragma", lambda: cp._connection().execute("PRAGMA synchronous").fetchone()
            )
        assert row == (level,)

    def test_postgres_without_psycopg_names_the_extra(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Constructing PostgresCheckpointer without psycopg says which extra to install."""
        monkeypatch.setitem(sys.modules, "psycopg", None)
        with pytest.raises(ImportError, match=r"engine\[postgres\]"):
            PostgresCheckpointer("postgresql://nowhere/db")

    def test_package_imports_without_psycopg(self) -> None:
        """``engine.checkpoint`` imports when psycopg is missing."""
        code = (
            "import sys; sys.modules['psycopg'] = None; sys.modules['psycopg_pool'] = None\n"
            "import engine.checkpoint"
        )
        subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)

    async def test_postgres_repr_hides_the_password(self) -> None:
        """The repr names host, port and database, never the password."""
        need_psycopg()
        cp = PostgresCheckpointer("postgresql://u:s3cret@db.example:6543/app")
        assert "db.example:6543/app" in repr(cp) and "s3cret" not in repr(cp)
        await cp.aclose()


# -- through the public API ------------------------------------------------------


class RunState(BaseModel):
    steps: Annotated[list[str], operator.add] = []
    i: int = 0


#: What a node of ``three_steps`` awaits before it finishes (a fault to cause, a check).
Hook = Callable[[], Awaitable[object]]


def three_steps(gate: asyncio.Event | None = None, hooks: dict[str, Hook] | None = None) -> Graph:
    """first -> second -> third, io nodes; ``first`` waits for ``gate`` when given, and
    each node awaits its hook in ``hooks``, if any, before it finishes."""

    def node(name: str) -> Any:
        async def run(state: RunState) -> dict[str, Any]:
            if gate is not None and name == "first":
                await gate.wait()
            hook = (hooks or {}).get(name)
            if hook is not None:
                await hook()
            await asyncio.sleep(0)
            return {"steps": [f"{name} {state.i}"]}

        return run

    g = Graph(RunState)
    for name in ("first", "second", "third"):
        g.add_node(name, node(name))
    g.add_edge(START, "first")
    g.add_edge("first", "second")
    g.add_edge("second", "third")
    g.add_edge("third", END)
    return g


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """A durable backend, SQLite or PostgreSQL; checkpointers are closed after."""
    if request.param == "sqlite":
        b = _sqlite_backend(tmp_path / "runs.sqlite")
    else:
        dsn = postgres_dsn()
        b = _postgres_backend(dsn)
        b.make = lambda: PostgresCheckpointer(dsn, pool_size=1)
        b.max_peers = await _pg_room(dsn)
    yield b
    for cp in b.opened:
        await cp.aclose()


async def _pg_room(dsn: str) -> int:
    """How many checkpointers (2 connections each) the server takes now, at most 50."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT current_setting('max_connections')::int, count(*) FROM pg_stat_activity"
        )
        row = await cur.fetchone()
    assert row is not None
    limit, used = row
    return max(1, min(50, (limit - used - 20) // 2))


class TestThroughArun:
    """What the checkpointers promise, seen through ``arun``."""

    @pytest.mark.parametrize("sharing", ["one-shared", "one-each"])
    async def test_fifty_concurrent_runs_checkpoint_every_step(
        self, store: Backend, tid: Any, sharing: str
    ) -> None:
        """50 aruns at once on distinct threads: every step of every thread saved, loadable."""
        count = 1 if sharing == "one-shared" else store.max_peers
        apps = [three_steps().compile(checkpointer=store.new()) for _ in range(count)]
        results = await asyncio.gather(
            *(apps[i % count].arun({"i": i}, thread_id=tid(f"r{i}")) for i in range(50))
        )
        reader = store.new()
        for i, result in enumerate(results):
            final = [f"first {i}", f"second {i}", f"third {i}"]
            assert result.state.steps == final
            listed = await reader.list(tid(f"r{i}"))
            assert [(c.step, c.status) for c in listed] == [
                (0, "running"),
                (1, "running"),
                (2, "running"),
                (3, "done"),
            ]
            assert {c.run_id for c in listed} == {result.run_id}
            # One run start; saves in step order, none before the run began.
            (started,) = {c.run_started_at for c in listed}
            assert started is not None
            saved = [c.created_at for c in listed]
            assert started <= saved[0] and saved == sorted(saved)
            assert [c.state["steps"] for c in listed] == [final[:n] for n in range(4)]
            assert [[t.node for t in c.next_tasks] for c in listed] == [
                ["first"],
                ["second"],
                ["third"],
                [],
            ]
            latest = await reader.get_latest(tid(f"r{i}"))
            assert latest == listed[-1]

    @pytest.mark.parametrize("second", ["same-checkpointer", "another-checkpointer"])
    async def test_second_concurrent_run_on_a_thread_is_refused(
        self, store: Backend, tid: Any, second: str
    ) -> None:
        """While one arun holds a thread, a second arun on it fails with CheckpointError."""
        gate = asyncio.Event()
        first_cp = store.new()
        app = three_steps(gate).compile(checkpointer=first_cp)
        other = (
            app
            if second == "same-checkpointer"
            else three_steps().compile(checkpointer=store.new())
        )
        t = tid("busy")
        running = asyncio.create_task(app.arun({"i": 1}, thread_id=t))
        async with asyncio.timeout(30):
            while not await first_cp.list(t):  # step 0 saved: the run holds the thread
                await asyncio.sleep(0.01)
        with pytest.raises(CheckpointError, match=rf"thread '{t}' is already being run by run"):
            await other.arun({"i": 2}, thread_id=t)
        with pytest.raises(CheckpointError, match="already being run"):
            await other.arun(None, thread_id=t)  # a resume is refused the same way
        gate.set()
        result = await running
        assert result.state.steps == ["first 1", "second 1", "third 1"]
        # Released at the end: the next run on the thread goes ahead.
        again = await other.arun({"i": 3}, thread_id=t)
        assert again.state.steps[-1] == "third 3"


def test_a_backend_missing_part_of_the_lifecycle_cannot_be_made() -> None:
    """CheckpointerBase's lifecycle methods are abstract: an incomplete backend fails
    when it is created, not on its first use."""
    from engine.checkpoint.base import CheckpointerBase

    class Half(CheckpointerBase):
        def _location(self) -> str:
            return "nowhere"

        async def setup(self) -> None:
            return None

    with pytest.raises(TypeError, match="aclose"):
        Half()  # type: ignore[abstract]

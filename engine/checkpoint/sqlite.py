"""SQLite checkpoints: the embedded default, one file, many drivers.

The stdlib ``sqlite3`` module blocks, so each checkpointer owns one thread
and one connection, and the event loop only awaits futures::

    event loop --run_in_executor--> [engine-sqlite thread] --sqlite3--> file (WAL)

WAL lets readers run beside a writer; every write takes the file's write
lock up front (``BEGIN IMMEDIATE``) and waits for it up to ``busy_timeout``,
so many drivers on one file queue instead of failing.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import CheckpointError
from ..logs import get_logger
from .base import (
    Checkpoint,
    CheckpointerBase,
    Identity,
    Latest,
    Lifecycle,
    busy_message,
    check_limit,
    check_thread_id,
    decode,
    encode,
    lock_is_stale,
    matches,
    new_checkpoint_id,
    now,
    place,
    stored,
    this_host,
)
from .migrate import layout, move

log = get_logger("engine.checkpoint")

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY,
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL,
    checkpoint_id TEXT NOT NULL,
    parent_id TEXT,
    step INTEGER NOT NULL,
    source TEXT NOT NULL,
    run_id TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    data TEXT NOT NULL,
    UNIQUE (thread_id, checkpoint_ns, checkpoint_id)
);
CREATE INDEX IF NOT EXISTS checkpoints_in_order ON checkpoints (thread_id, checkpoint_ns, seq);
CREATE TABLE IF NOT EXISTS writes (
    thread_id TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL,
    checkpoint_id TEXT NOT NULL,
    node TEXT NOT NULL,
    idx INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, node, idx)
);
CREATE TABLE IF NOT EXISTS locks (
    thread_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    acquired_at REAL NOT NULL
);
"""


class SqliteCheckpointer(CheckpointerBase):
    """Checkpoints in one SQLite file (WAL), safe for many drivers at once.

    ``durable=True`` syncs every commit to disk (``synchronous=FULL``): a
    power cut loses no saved step. ``durable=False`` (``NORMAL``) may lose
    the last steps on power loss but never corrupts the file.

    Locks record the holder's pid and host. A lock whose holder died on this
    host (a driver killed with SIGKILL) is taken over; a holder on another
    host cannot be checked, so its lock must be released by that host.
    """

    # Invariant: ``_conn`` is created, used and closed only on ``_executor``'s
    # one thread, so calls never interleave on it; calls reach that thread in
    # the order they were made. ``_held`` maps the threads this checkpointer
    # holds to their run ids (loop side only).

    def __init__(
        self, path: str | os.PathLike[str], *, durable: bool = True, busy_timeout_s: float = 60.0
    ) -> None:
        self.path = Path(path)
        self.durable = durable
        self.busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-sqlite")
        self._held: dict[str, str] = {}

    def _location(self) -> str:
        return f"path={str(self.path)!r}"

    # -- plumbing ----------------------------------------------------------

    async def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the connection's thread once the file is set up.

        A database error becomes a CheckpointError naming the file: a file
        that is not SQLite, or a foreign ``checkpoints`` table with other
        columns, fails here rather than as a bare ``sqlite3`` error.
        """
        self._check_usable(what)
        loop = asyncio.get_running_loop()
        try:
            if self._lifecycle is Lifecycle.CREATED:
                await loop.run_in_executor(self._executor, self._open_sync)
                # aclose() may have run during the await: never reopen.
                if self._lifecycle is Lifecycle.CREATED:
                    self._lifecycle = Lifecycle.OPEN
            return await loop.run_in_executor(self._executor, fn)
        except sqlite3.Error as exc:
            raise CheckpointError(
                f"cannot {what} in the checkpoint database {str(self.path)!r}: "
                f"{type(exc).__name__}: {exc}; is it a file this engine created?"
            ) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:  # closed under us: aclose ran first
            raise RuntimeError(f"{self!r} is closed")
        return self._conn

    def _open_sync(self) -> None:
        if self._conn is not None:
            return
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise CheckpointError(
                f"cannot open the checkpoint database {str(self.path)!r}: {exc}; check that "
                "its folder exists and is writable"
            ) from exc
        try:
            if str(self.path) != ":memory:":  # an in-memory database has no journal file
                _enter_wal(conn, self.busy_timeout_s)
            conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
            with _write_txn(conn):
                # Not executescript(): it commits first, outside our transaction.
                _create_tables(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    # -- protocol ----------------------------------------------------------

    async def setup(self) -> None:
        """Create the file's tables (idempotent)."""
        await self._call("set up", lambda: None)

    async def put(self, checkpoint: Checkpoint) -> Checkpoint:
        """Store one checkpoint, its writes and its parent's writes in one transaction."""
        return await self._call(
            "put a checkpoint", functools.partial(self._put_sync, checkpoint, new_checkpoint_id())
        )

    def _put_sync(self, cp: Checkpoint, fresh_id: str) -> Checkpoint:
        enc = encode(cp)
        conn = self._connection()
        tid, ns = cp.thread_id, cp.checkpoint_ns
        try:
            with _write_txn(conn):
                row = conn.execute(
                    "SELECT checkpoint_id, parent_id, step FROM checkpoints WHERE thread_id = ?"
                    " AND checkpoint_ns = ? ORDER BY seq DESC LIMIT 1",
                    (tid, ns),
                ).fetchone()
                where = place(cp, Latest(*row) if row else None, fresh_id)
                conn.execute(
                    "INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_id,"
                    " step, source, run_id, status, created_at, data)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET"
                    " parent_id = excluded.parent_id, step = excluded.step,"
                    " source = excluded.source, run_id = excluded.run_id,"
                    " status = excluded.status, created_at = excluded.created_at,"
                    " data = excluded.data",
                    (
                        tid,
                        ns,
                        where.checkpoint_id,
                        where.parent_id,
                        cp.step,
                        cp.source,
                        cp.run_id,
                        cp.status,
                        cp.created_at,
                        enc.data,
                    ),
                )
                # A checkpoint's writes are replaced with it: a re-put is the whole truth.
                _replace_writes(conn, tid, ns, where.checkpoint_id, enc.writes)
                if where.parent_id is not None and enc.parent_writes:
                    _replace_writes(conn, tid, ns, where.parent_id, enc.parent_writes)
        except sqlite3.Error as exc:
            raise CheckpointError(
                f"cannot save the checkpoint of thread {tid!r} at step {cp.step} to "
                f"{str(self.path)!r}: {exc}"
            ) from exc
        return stored(cp, where)

    async def get_latest(self, thread_id: str) -> Checkpoint | None:
        """The newest checkpoint of the thread, or None."""
        return await self.get(thread_id)

    async def get(
        self, thread_id: str, checkpoint_id: str | None = None, *, checkpoint_ns: str = ""
    ) -> Checkpoint | None:
        """The checkpoint ``checkpoint_id`` (the newest when None), or None."""
        check_thread_id(thread_id)
        if checkpoint_id is None:
            query = _Query(thread_id, checkpoint_ns, order="DESC", limit=1)
        else:
            query = _Query(thread_id, checkpoint_ns, order="DESC", only=checkpoint_id)
        found = await self._call("read a checkpoint", functools.partial(self._load_sync, query))
        return found[0] if found else None

    async def history(
        self,
        thread_id: str,
        *,
        checkpoint_ns: str = "",
        before: str | None = None,
        limit: int | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> builtins.list[Checkpoint]:
        """The thread's checkpoints, newest first (see ``Checkpointer.history``)."""
        check_thread_id(thread_id)
        check_limit(limit)
        # With a filter the limit counts matches, so it cannot go into the SQL.
        query = _Query(
            thread_id,
            checkpoint_ns,
            order="DESC",
            limit=limit if not filter else None,
            before=before,
        )
        found = await self._call("list checkpoints", functools.partial(self._load_sync, query))
        found = [cp for cp in found if matches(cp, filter)]
        return found if limit is None else found[:limit]

    async def list(self, thread_id: str) -> builtins.list[Checkpoint]:
        """Every checkpoint of the thread, oldest first."""
        check_thread_id(thread_id)
        return await self._call(
            "list checkpoints", functools.partial(self._load_sync, _Query(thread_id, "", "ASC"))
        )

    def _load_sync(self, q: _Query) -> builtins.list[Checkpoint]:
        conn = self._connection()
        sql = (
            "SELECT checkpoint_id, parent_id, step, data FROM checkpoints"
            " WHERE thread_id = ? AND checkpoint_ns = ?"
        )
        args: builtins.list[Any] = [q.thread_id, q.ns]
        if q.only is not None:
            sql += " AND checkpoint_id = ?"
            args.append(q.only)
        if q.before is not None:
            sql += (
                " AND seq < (SELECT seq FROM checkpoints WHERE thread_id = ?"
                " AND checkpoint_ns = ? AND checkpoint_id = ?)"
            )
            args += [q.thread_id, q.ns, q.before]
        sql += f" ORDER BY seq {q.order}"
        if q.limit is not None:
            sql += " LIMIT ?"
            args.append(q.limit)
        # One read transaction: the rows and their writes are one snapshot.
        conn.execute("BEGIN")
        try:
            rows = conn.execute(sql, args).fetchall()
            ids = [r[0] for r in rows]
            writes: dict[str, builtins.list[tuple[str, int, str | bytes]]] = {}
            # In chunks: SQLite caps the number of parameters of one statement.
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for cid, node, idx, text in conn.execute(
                    "SELECT checkpoint_id, node, idx, data FROM writes WHERE thread_id = ?"
                    f" AND checkpoint_ns = ? AND checkpoint_id IN ({marks})"
                    " ORDER BY checkpoint_id, node, idx",
                    (q.thread_id, q.ns, *chunk),
                ):
                    writes.setdefault(cid, []).append((node, idx, text))
        finally:
            conn.execute("COMMIT")
        return [
            decode(q.thread_id, step, data, writes.get(cid, []), Identity(q.ns, cid, parent))
            for cid, parent, step, data in rows
        ]

    async def acquire(self, thread_id: str, run_id: str) -> None:
        """Take the thread for ``run_id``; a dead holder's lock is taken over."""
        check_thread_id(thread_id)
        await self._call(
            "acquire a thread", functools.partial(self._acquire_sync, thread_id, run_id)
        )
        self._held[thread_id] = run_id

    def _acquire_sync(self, thread_id: str, run_id: str) -> None:
        conn = self._connection()
        pid, host = os.getpid(), this_host()
        with _write_txn(conn):
            row = conn.execute(
                "SELECT run_id, pid, host FROM locks WHERE thread_id = ?", (thread_id,)
            ).fetchone()
            if row is not None and row[0] != run_id:
                if not lock_is_stale(row[1], row[2]):
                    raise CheckpointError(busy_message(thread_id, row[0], row[1], row[2]))
                log.warning(
                    "checkpoint_lock_taken_over",
                    thread_id=thread_id,
                    dead_run=row[0],
                    dead_pid=row[1],
                    run_id=run_id,
                )
            conn.execute(
                "INSERT INTO locks (thread_id, run_id, pid, host, acquired_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (thread_id) DO UPDATE SET"
                " run_id = excluded.run_id, pid = excluded.pid, host = excluded.host,"
                " acquired_at = excluded.acquired_at",
                (thread_id, run_id, pid, host, now()),
            )

    async def release(self, thread_id: str, run_id: str) -> None:
        """Drop ``run_id``'s lock; a lock held by another run is left alone."""
        check_thread_id(thread_id)
        await self._call(
            "release a thread", functools.partial(self._release_sync, thread_id, run_id)
        )
        if self._held.get(thread_id) == run_id:
            del self._held[thread_id]

    def _release_sync(self, thread_id: str, run_id: str) -> None:
        self._connection().execute(
            "DELETE FROM locks WHERE thread_id = ? AND run_id = ?", (thread_id, run_id)
        )

    async def delete_thread(self, thread_id: str) -> None:
        """Delete the thread's checkpoints and writes; refused while a live run holds it."""
        check_thread_id(thread_id)
        await self._call("delete a thread", functools.partial(self._delete_sync, thread_id))

    def _delete_sync(self, thread_id: str) -> None:
        conn = self._connection()
        with _write_txn(conn):
            row = conn.execute(
                "SELECT run_id, pid, host FROM locks WHERE thread_id = ?", (thread_id,)
            ).fetchone()
            if row is not None and not lock_is_stale(row[1], row[2]):
                raise CheckpointError(busy_message(thread_id, row[0], row[1], row[2]))
            for table in ("checkpoints", "writes", "locks"):
                conn.execute(f"DELETE FROM {table} WHERE thread_id = ?", (thread_id,))

    async def aclose(self) -> None:
        """Release the locks this checkpointer holds and close the file. Idempotent."""
        if self._lifecycle is Lifecycle.CLOSED:
            return
        self._lifecycle = Lifecycle.CLOSED
        held, self._held = list(self._held.items()), {}
        loop = asyncio.get_running_loop()
        try:
            # Queued behind every call already made, so those finish first.
            await loop.run_in_executor(self._executor, functools.partial(self._close_sync, held))
        finally:
            self._executor.shutdown(wait=False)

    def close(self) -> None:
        """``aclose`` for code without an event loop (a ``with`` block). Idempotent."""
        if self._lifecycle is Lifecycle.CLOSED:
            return
        self._lifecycle = Lifecycle.CLOSED
        held, self._held = list(self._held.items()), {}
        try:
            # Queued behind every call already made, so those finish first.
            self._executor.submit(self._close_sync, held).result()
        finally:
            self._executor.shutdown(wait=False)

    def _close_sync(self, held: builtins.list[tuple[str, str]]) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            for thread_id, run_id in held:
                conn.execute(
                    "DELETE FROM locks WHERE thread_id = ? AND run_id = ?", (thread_id, run_id)
                )
        finally:
            conn.close()


def _enter_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """Put the file in WAL mode, waiting out other connections doing the same.

    Scenario: several drivers open a new file at once. Switching the journal
    mode needs an exclusive lock, and SQLite answers SQLITE_BUSY for it
    without calling the busy handler, so ``busy_timeout`` does not apply:
    retry with backoff until the mode is set (WAL persists in the file, so a
    later open finds it already set and takes no lock).
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
            continue
        if mode is None or str(mode[0]).lower() != "wal":
            raise CheckpointError(f"SQLite refused WAL mode (journal_mode={mode!r})")
        return


@dataclass(frozen=True)
class _Query:
    """Which checkpoints of one thread and namespace to read, in which order."""

    thread_id: str
    ns: str
    order: str  # "ASC" or "DESC", by seq
    limit: int | None = None
    only: str | None = None  # one checkpoint id
    before: str | None = None  # made before this checkpoint id


def _replace_writes(
    conn: sqlite3.Connection,
    tid: str,
    ns: str,
    checkpoint_id: str,
    writes: builtins.list[tuple[str, int, str]],
) -> None:
    conn.execute(
        "DELETE FROM writes WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?",
        (tid, ns, checkpoint_id),
    )
    conn.executemany(
        "INSERT INTO writes (thread_id, checkpoint_ns, checkpoint_id, node, idx, data)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(tid, ns, checkpoint_id, n, i, text) for n, i, text in writes],
    )


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _create_tables(conn: sqlite3.Connection) -> None:
    """Create the tables, moving a store of the first layout into the tree layout first.

    Runs in the setup's write transaction: a crash midway leaves the old
    layout as it was. Another program's ``checkpoints`` table is left alone.
    """
    found = layout(_columns(conn, "checkpoints"))
    if found == "old":
        old = conn.execute(
            "SELECT thread_id, step, run_id, status, created_at, data FROM checkpoints"
        ).fetchall()
        old_writes = conn.execute("SELECT thread_id, step, node, idx, data FROM writes").fetchall()
        conn.execute("DROP TABLE checkpoints")
        conn.execute("DROP TABLE writes")
        _create(conn, foreign=False)
        moved = move(old, old_writes)
        conn.executemany(
            "INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_id, step,"
            " source, run_id, status, created_at, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            moved.checkpoints,
        )
        conn.executemany(
            "INSERT INTO writes (thread_id, checkpoint_ns, checkpoint_id, node, idx, data)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            moved.writes,
        )
        log.warning(
            "checkpoint_store_migrated",
            path="sqlite",
            checkpoints=len(moved.checkpoints),
            writes=len(moved.writes),
        )
        return
    _create(conn, foreign=found == "foreign")


def _create(conn: sqlite3.Connection, *, foreign: bool) -> None:
    for statement in _SCHEMA.split(";"):
        # No index on another program's table: its columns are not ours.
        if statement.strip() and not (foreign and "CREATE INDEX" in statement):
            conn.execute(statement)


@contextmanager
def _write_txn(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction holding the file's write lock from its first statement.

    ``BEGIN IMMEDIATE`` waits (``busy_timeout``) for the lock up front; a
    deferred transaction that later upgrades from read to write can fail at
    once with SQLITE_BUSY, which no timeout retries.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")

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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from ..errors import CheckpointError
from ..logs import get_logger
from .base import (
    Checkpoint,
    CheckpointerBase,
    Lifecycle,
    busy_message,
    check_thread_id,
    decode,
    encode,
    lock_is_stale,
    now,
    this_host,
)

log = get_logger("engine.checkpoint")

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    thread_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (thread_id, step)
);
CREATE TABLE IF NOT EXISTS writes (
    thread_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    node TEXT NOT NULL,
    idx INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (thread_id, step, node, idx)
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

    async def put(self, checkpoint: Checkpoint) -> None:
        """Store the checkpoint and its pending writes in one transaction."""
        await self._call("put a checkpoint", functools.partial(self._put_sync, checkpoint))

    def _put_sync(self, cp: Checkpoint) -> None:
        data, writes = encode(cp)
        conn = self._connection()
        try:
            with _write_txn(conn):
                conn.execute(
                    "INSERT INTO checkpoints (thread_id, step, run_id, status, created_at, data)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (thread_id, step) DO UPDATE SET"
                    " run_id = excluded.run_id, status = excluded.status,"
                    " created_at = excluded.created_at, data = excluded.data",
                    (cp.thread_id, cp.step, cp.run_id, cp.status, cp.created_at, data),
                )
                # The step's writes are replaced with the checkpoint: a re-put
                # of the step is the whole truth about it.
                conn.execute(
                    "DELETE FROM writes WHERE thread_id = ? AND step = ?", (cp.thread_id, cp.step)
                )
                conn.executemany(
                    "INSERT INTO writes (thread_id, step, node, idx, data) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (thread_id, step, node, idx) DO UPDATE SET data = excluded.data",
                    [(cp.thread_id, cp.step, n, i, text) for n, i, text in writes],
                )
        except sqlite3.Error as exc:
            raise CheckpointError(
                f"cannot save the checkpoint of thread {cp.thread_id!r} at step {cp.step} to "
                f"{str(self.path)!r}: {exc}"
            ) from exc

    async def get_latest(self, thread_id: str) -> Checkpoint | None:
        """The checkpoint with the highest step, or None."""
        check_thread_id(thread_id)
        found = await self._call(
            "read a checkpoint", functools.partial(self._load_sync, thread_id, latest=True)
        )
        return found[0] if found else None

    async def list(self, thread_id: str) -> builtins.list[Checkpoint]:
        """Every checkpoint of the thread, oldest step first."""
        check_thread_id(thread_id)
        return await self._call(
            "list checkpoints", functools.partial(self._load_sync, thread_id, latest=False)
        )

    def _load_sync(self, thread_id: str, *, latest: bool) -> builtins.list[Checkpoint]:
        conn = self._connection()
        order = "DESC LIMIT 1" if latest else "ASC"
        # One read transaction: the rows and their writes are one snapshot.
        conn.execute("BEGIN")
        try:
            rows = conn.execute(
                f"SELECT step, data FROM checkpoints WHERE thread_id = ? ORDER BY step {order}",
                (thread_id,),
            ).fetchall()
            writes: dict[int, builtins.list[tuple[str, int, str | bytes]]] = {}
            for step, node, idx, text in conn.execute(
                "SELECT step, node, idx, data FROM writes WHERE thread_id = ?"
                " ORDER BY step, node, idx",
                (thread_id,),
            ):
                writes.setdefault(step, []).append((node, idx, text))
        finally:
            conn.execute("COMMIT")
        return [decode(thread_id, step, data, writes.get(step, [])) for step, data in rows]

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


def _create_tables(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA.split(";"):
        if statement.strip():
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

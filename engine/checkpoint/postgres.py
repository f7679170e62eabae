"""PostgreSQL checkpoints: one database shared by many drivers and machines.

psycopg 3 is imported lazily, so ``engine`` imports without it; install the
``engine[postgres]`` extra to use this backend. Storage calls go through an
``AsyncConnectionPool``; run locks live on one more, dedicated connection::

    put/get/list --pool--> checkpoints, writes (jsonb)
    acquire      --lock connection--> pg_try_advisory_lock(key(thread_id))
                 --pool--> locks row (who holds it, for the refusal message)

A session-level advisory lock belongs to the connection that took it, so
it vanishes when that connection does: a driver killed with SIGKILL never
blocks a later resume. The locks row names the holder for the refusal
message, and fences: a driver whose lock connection died (server restart,
terminated backend) while it kept running may have been overtaken by
another run, which overwrote the row; its next ``put`` sees that and fails
instead of writing over the new run's steps.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError
from ..logs import get_logger
from .base import (
    Checkpoint,
    CheckpointerBase,
    Lifecycle,
    busy_message,
    decode,
    encode,
    now,
    this_host,
)

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool

log = get_logger("engine.checkpoint")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS checkpoints (
        thread_id TEXT NOT NULL,
        step INTEGER NOT NULL,
        run_id TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        data JSONB NOT NULL,
        PRIMARY KEY (thread_id, step))""",
    """CREATE TABLE IF NOT EXISTS writes (
        thread_id TEXT NOT NULL,
        step INTEGER NOT NULL,
        node TEXT NOT NULL,
        idx INTEGER NOT NULL,
        data JSONB NOT NULL,
        PRIMARY KEY (thread_id, step, node, idx))""",
    """CREATE TABLE IF NOT EXISTS locks (
        thread_id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        pid INTEGER NOT NULL,
        host TEXT NOT NULL,
        acquired_at DOUBLE PRECISION NOT NULL)""",
)

# Serialises concurrent CREATE TABLE IF NOT EXISTS from several drivers,
# which can otherwise collide in the catalog (duplicate pg_type rows).
_SETUP_LOCK_KEY = 0x656E67696E65  # "engine"

# Every checkpoint of a thread with its writes, in one statement (one snapshot).
_SELECT = """
SELECT c.step, c.data::text,
       COALESCE((SELECT json_agg(json_build_array(w.node, w.idx, w.data::text)
                                 ORDER BY w.node, w.idx)
                 FROM writes w WHERE w.thread_id = c.thread_id AND w.step = c.step),
                '[]'::json)::text
FROM checkpoints c WHERE c.thread_id = %s
"""


def _import_psycopg() -> tuple[Any, Any]:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:
        raise ImportError(
            "PostgresCheckpointer needs psycopg 3 and psycopg-pool: pip install 'engine[postgres]'"
        ) from exc
    return psycopg, psycopg_pool


def lock_key(thread_id: str) -> int:
    """The advisory lock key (signed 64-bit) of a thread id."""
    digest = hashlib.blake2b(f"engine-thread:{thread_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresCheckpointer(CheckpointerBase):
    """Checkpoints in PostgreSQL (jsonb), for drivers on several machines.

    The pool and lock connection belong to the event loop that opened them:
    use one checkpointer per loop (``app.invoke`` starts a new loop on each
    call; prefer ``arun`` with a long-lived checkpointer).
    """

    # Invariant: ``_pool`` and ``_loop`` are set together when OPEN and
    # only used from ``_loop``. ``_held`` maps each thread acquired through
    # this checkpointer and not yet released to its run id: it refuses a
    # second run from this same checkpointer (advisory locks nest within one
    # session, so the server would not) and fences that thread's puts.
    # ``_session`` is the subset whose advisory lock the live ``_lock_conn``
    # session holds; a new lock connection starts it empty, because the old
    # session's locks died with it. ``_guard`` serialises setup and locking.

    def __init__(self, dsn: str, *, pool_size: int = 4, connect_timeout_s: float = 30.0) -> None:
        self._psycopg, self._psycopg_pool = _import_psycopg()
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        self.dsn = dsn
        self.pool_size = pool_size
        self.connect_timeout_s = connect_timeout_s
        self._pool: psycopg_pool.AsyncConnectionPool[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock_conn: psycopg.AsyncConnection[Any] | None = None
        self._held: dict[str, str] = {}
        self._session: set[str] = set()
        self._guard = asyncio.Lock()

    def _location(self) -> str:
        # Never show the password: host, port and database are enough.
        try:
            parts = self._psycopg.conninfo.conninfo_to_dict(self.dsn)
        except Exception:
            return "dsn=<unparsable>"
        host = parts.get("host", "localhost")
        port = parts.get("port", "5432")
        return f"db={host}:{port}/{parts.get('dbname', '')}"

    # -- plumbing ----------------------------------------------------------

    async def _ready(self, what: str) -> psycopg_pool.AsyncConnectionPool[Any]:
        self._check_usable(what)
        if self._pool is None:
            await self.setup()
        assert self._pool is not None
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError(
                f"{self!r} was opened on another event loop: create one checkpointer per "
                "loop (app.invoke() runs a new loop each call; use arun() instead)"
            )
        return self._pool

    def _db_error(self, doing: str, exc: Exception) -> CheckpointError:
        return CheckpointError(f"cannot {doing} in {self._location()}: {exc}")

    async def setup(self) -> None:
        """Open the pool and create the tables (idempotent)."""
        self._check_usable("set up")
        async with self._guard:
            self._check_usable("set up")
            if self._pool is not None:
                return
            pool = self._psycopg_pool.AsyncConnectionPool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                open=False,
                timeout=self.connect_timeout_s,
                kwargs={"autocommit": True, "application_name": "engine-checkpoint"},
            )
            try:
                await pool.open(wait=True, timeout=self.connect_timeout_s)
                async with pool.connection() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SETUP_LOCK_KEY,))
                    for statement in _SCHEMA:
                        await conn.execute(statement)
            except BaseException as exc:
                await pool.close()
                if isinstance(exc, self._psycopg.Error):
                    raise CheckpointError(
                        f"cannot open checkpoints in {self._location()}: {exc}; check the DSN "
                        "and that the server accepts connections"
                    ) from exc
                raise
            if self._lifecycle is Lifecycle.CLOSED:
                # aclose() ran while the pool was opening: it saw no pool.
                await pool.close()
                self._check_usable("set up")
            self._pool, self._loop = pool, asyncio.get_running_loop()
            self._lifecycle = Lifecycle.OPEN

    # -- protocol ----------------------------------------------------------

    async def put(self, checkpoint: Checkpoint) -> None:
        """Store the checkpoint and its pending writes in one transaction."""
        pool = await self._ready("put a checkpoint")
        data, writes = encode(checkpoint)
        tid, step = checkpoint.thread_id, checkpoint.step
        run = self._held.get(tid)
        try:
            async with pool.connection() as conn, conn.transaction():
                if run is not None:
                    await self._fence(conn, tid, run, step)
                await conn.execute(
                    "INSERT INTO checkpoints (thread_id, step, run_id, status, created_at, data)"
                    " VALUES (%s, %s, %s, %s, %s, %s::jsonb)"
                    " ON CONFLICT (thread_id, step) DO UPDATE SET run_id = EXCLUDED.run_id,"
                    " status = EXCLUDED.status, created_at = EXCLUDED.created_at,"
                    " data = EXCLUDED.data",
                    (tid, step, checkpoint.run_id, checkpoint.status, checkpoint.created_at, data),
                )
                # A re-put of the step is the whole truth about it.
                await conn.execute(
                    "DELETE FROM writes WHERE thread_id = %s AND step = %s", (tid, step)
                )
                if writes:
                    async with conn.cursor() as cur:
                        await cur.executemany(
                            "INSERT INTO writes (thread_id, step, node, idx, data)"
                            " VALUES (%s, %s, %s, %s, %s::jsonb)"
                            " ON CONFLICT (thread_id, step, node, idx)"
                            " DO UPDATE SET data = EXCLUDED.data",
                            [(tid, step, n, i, text) for n, i, text in writes],
                        )
        except self._psycopg.Error as exc:
            raise self._db_error(f"save thread {tid!r} step {step}", exc) from exc

    async def _fence(
        self, conn: psycopg.AsyncConnection[Any], tid: str, run: str, step: int
    ) -> None:
        """Refuse the put unless the locks row still names ``run``.

        Scenario: this driver's lock connection died while the run went on;
        another driver took the free advisory lock and overwrote the row.
        ``FOR SHARE`` makes that overwrite wait for this transaction, so a
        put either commits before the takeover or fails here after it.
        """
        cur = await conn.execute(
            "SELECT run_id, pid, host FROM locks WHERE thread_id = %s FOR SHARE", (tid,)
        )
        row = await cur.fetchone()
        if row is not None and row[0] == run:
            return
        by = f"run {row[0]} (pid {row[1]} on host {row[2]})" if row else "another run"
        raise CheckpointError(
            f"run {run} no longer holds thread {tid!r}: its lock connection was lost and {by} "
            f"took the thread over; step {step} was not saved. Stop this run and resume the "
            "thread once the other run is done"
        )

    async def get_latest(self, thread_id: str) -> Checkpoint | None:
        """The checkpoint with the highest step, or None."""
        found = await self._load(thread_id, "ORDER BY c.step DESC LIMIT 1", "read a checkpoint")
        return found[0] if found else None

    async def list(self, thread_id: str) -> builtins.list[Checkpoint]:
        """Every checkpoint of the thread, oldest step first."""
        return await self._load(thread_id, "ORDER BY c.step ASC", "list checkpoints")

    async def _load(self, thread_id: str, order: str, what: str) -> builtins.list[Checkpoint]:
        pool = await self._ready(what)
        try:
            async with pool.connection() as conn:
                cur = await conn.execute(_SELECT + order, (thread_id,))
                rows = await cur.fetchall()
        except self._psycopg.Error as exc:
            raise self._db_error(f"read thread {thread_id!r}", exc) from exc
        return [
            decode(thread_id, step, data, [tuple(w) for w in json.loads(writes)])
            for step, data, writes in rows
        ]

    async def _lock_connection(self) -> psycopg.AsyncConnection[Any]:
        conn = self._lock_conn
        if conn is None or conn.closed or conn.broken:
            if self._session:
                # A lost session lost its advisory locks with it; the
                # fence in put() catches a run that took one over meanwhile.
                log.warning("checkpoint_lock_session_lost", threads=sorted(self._session))
            self._session.clear()
            conn = await self._psycopg.AsyncConnection.connect(
                self.dsn,
                autocommit=True,
                application_name="engine-checkpoint-locks",
                connect_timeout=max(1, round(self.connect_timeout_s)),
            )
            self._lock_conn = conn
        return conn

    async def _try_lock(self, thread_id: str) -> bool:
        """``pg_try_advisory_lock`` on the lock session, on a fresh one if it died."""
        for attempt in (1, 2):
            conn = await self._lock_connection()
            try:
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_key(thread_id),))
                row = await cur.fetchone()
            except self._psycopg.OperationalError:
                # psycopg learns that a session died only when it uses it:
                # retry once on a new one (broken marks the old one dead).
                if attempt == 2 or not conn.broken:
                    raise
                continue
            return bool(row is not None and row[0])
        raise AssertionError("unreachable")  # pragma: no cover

    async def acquire(self, thread_id: str, run_id: str) -> None:
        """Take the thread's advisory lock for ``run_id``, or raise naming the holder."""
        pool = await self._ready("acquire a thread")
        async with self._guard:
            holder = self._held.get(thread_id)
            if holder is not None and holder != run_id:
                raise CheckpointError(busy_message(thread_id, holder, os.getpid(), this_host()))
            conn = self._lock_conn
            if holder == run_id and thread_id in self._session and conn and not conn.broken:
                return
            try:
                if not await self._try_lock(thread_id):
                    raise await self._busy(pool, thread_id)
                self._session.add(thread_id)
                async with pool.connection() as pconn:
                    await pconn.execute(
                        "INSERT INTO locks (thread_id, run_id, pid, host, acquired_at)"
                        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (thread_id) DO UPDATE SET"
                        " run_id = EXCLUDED.run_id, pid = EXCLUDED.pid, host = EXCLUDED.host,"
                        " acquired_at = EXCLUDED.acquired_at",
                        (thread_id, run_id, os.getpid(), this_host(), now()),
                    )
                self._held[thread_id] = run_id
            except self._psycopg.Error as exc:
                await self._unlock(thread_id)
                raise self._db_error(f"lock thread {thread_id!r}", exc) from exc

    async def _busy(
        self, pool: psycopg_pool.AsyncConnectionPool[Any], thread_id: str
    ) -> CheckpointError:
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT run_id, pid, host FROM locks WHERE thread_id = %s", (thread_id,)
            )
            row = await cur.fetchone()
        # No row yet: the holder took the lock a moment ago and is writing it.
        run, pid, host = row if row is not None else ("?", "?", "?")
        return CheckpointError(busy_message(thread_id, run, pid, host))

    async def _unlock(self, thread_id: str) -> None:
        if thread_id not in self._session:
            return
        self._session.discard(thread_id)
        conn = self._lock_conn
        if conn is None or conn.closed or conn.broken:
            return  # the session is gone, and its locks with it
        try:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key(thread_id),))
        except self._psycopg.OperationalError:
            if not conn.broken:
                raise
            # It died just now: a dead session holds no locks either.

    async def release(self, thread_id: str, run_id: str) -> None:
        """Drop ``run_id``'s lock; a lock held by another run is left alone."""
        pool = await self._ready("release a thread")
        async with self._guard:
            if self._held.get(thread_id) != run_id:
                return
            del self._held[thread_id]
            try:
                # Label first, lock second: the next holder writes its row after.
                async with pool.connection() as conn:
                    await conn.execute(
                        "DELETE FROM locks WHERE thread_id = %s AND run_id = %s",
                        (thread_id, run_id),
                    )
            except self._psycopg.Error as exc:
                raise self._db_error(f"release thread {thread_id!r}", exc) from exc
            finally:
                await self._unlock(thread_id)

    async def aclose(self) -> None:
        """Release held locks, close the lock connection and the pool. Idempotent."""
        if self._lifecycle is Lifecycle.CLOSED:
            return
        self._lifecycle = Lifecycle.CLOSED
        pool, self._pool = self._pool, None
        lock_conn, self._lock_conn = self._lock_conn, None
        held, self._held = dict(self._held), {}
        self._session.clear()
        try:
            if pool is not None and held:
                try:
                    async with pool.connection() as conn:
                        for thread_id, run_id in held.items():
                            await conn.execute(
                                "DELETE FROM locks WHERE thread_id = %s AND run_id = %s",
                                (thread_id, run_id),
                            )
                except self._psycopg.Error:
                    pass  # the labels are advisory; closing drops the locks below
        finally:
            try:
                if lock_conn is not None:
                    await lock_conn.close()  # ends the session: its advisory locks go
            finally:
                if pool is not None:
                    await pool.close()

"""PostgreSQL checkpoints: one database shared by many drivers and machines.

psycopg 3 is imported lazily, so ``engine`` imports without it; install the
``engine[postgres]`` extra to use this backend. Storage calls go through an
``AsyncConnectionPool``; run locks live on one more, dedicated connection::

    put/get/list --pool--> checkpoints, writes (jsonb)
    acquire      --lock connection--> pg_try_advisory_lock(key(thread_id))
                 --pool--> locks row (who holds it, for the refusal message)

The jsonb columns hold each row's JSON text as one JSON string, not as a
jsonb object: jsonb would sort object keys (a state's dicts would come back
in another order), turn ``1e+16`` into an integer, and refuse NUL; a string
keeps the text, so a checkpoint reads back exactly as on SQLite. Rows of
schema_version 1 (jsonb objects) are still read.

A session-level advisory lock belongs to the connection that took it, so
it vanishes when that connection does: a driver killed with SIGKILL never
blocks a later resume. The locks row names the holder for the refusal
message, and fences: a driver whose lock connection died (server restart,
terminated backend) while it kept running may have been overtaken by
another run, which overwrote the row; its next ``put`` sees that and fails
instead of writing over the new run's steps.

Connections the server closes (``idle_session_timeout``,
``pg_terminate_backend``, a restart) do not fail a run: the pool checks a
connection before lending it, a call whose connection breaks under it runs
once more on a fresh one (every call is idempotent), the lock connection opts
out of ``idle_session_timeout``, and a put that finds its run's advisory lock
gone with its session takes the lock again before writing. A server that
stays down past ``connect_timeout_s`` fails the call with a
:class:`CheckpointError` whose ``__cause__`` is psycopg's error; the thread
keeps its last saved step.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import CheckpointError
from ..logs import get_logger
from .base import (
    Checkpoint,
    CheckpointerBase,
    Encoded,
    Identity,
    Latest,
    Lifecycle,
    Placement,
    busy_message,
    busy_unnamed_message,
    check_limit,
    check_thread_id,
    decode,
    encode,
    matches,
    new_checkpoint_id,
    now,
    place,
    stored,
    this_host,
)
from .pgschema import SELECT, SETUP_LOCK_KEY, create_tables, lock_key, lock_key_oids, replace_writes

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool

log = get_logger("engine.checkpoint")

T = TypeVar("T")

#: Seconds ``release`` waits for a pooled connection: when the server is down,
#: the run's own error must not wait behind the release of its lock label.
RELEASE_TIMEOUT_S = 5.0

#: Seconds ``acquire`` keeps looking for the record of a busy lock's holder
#: (it may be writing it, or releasing the lock) before saying it is unknown.
BUSY_LOOKUP_S = 1.0


def _import_psycopg() -> tuple[Any, Any]:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:
        raise ImportError(
            "PostgresCheckpointer needs psycopg 3 and psycopg-pool: pip install 'engine[postgres]'"
        ) from exc
    return psycopg, psycopg_pool


class _LockLost(Exception):
    """The locks row still names this run, but its advisory lock died with its session."""


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
            await self._open()
        assert self._pool is not None
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError(
                f"{self!r} was opened on another event loop: create one checkpointer per "
                "loop (app.invoke() runs a new loop each call; use arun() instead)"
            )
        return self._pool

    def _db_error(self, doing: str, exc: Exception) -> CheckpointError:
        hint = ""
        if isinstance(exc, self._psycopg.OperationalError):
            hint = (
                "; the server closed the connection or cannot be reached: once it is back, "
                "a thread resumes from its last saved step with arun(None, thread_id=...)"
            )
        return CheckpointError(
            f"cannot {doing} in {self._location()}: {type(exc).__name__}: {exc}{hint}"
        )

    async def _db(
        self,
        doing: str,
        fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
        *,
        timeout: float | None = None,
    ) -> T:
        """``fn`` on a pooled connection; once more on a fresh one if that one broke.

        Scenario: the server closed a connection after the pool's check lent
        it (a restart, ``pg_terminate_backend`` during the call). psycopg
        learns it on use and marks the connection broken; the pool drops it,
        and the second attempt gets a new one, waiting up to
        ``connect_timeout_s`` for the server. Every call here is idempotent.
        """
        pool = await self._ready(doing)
        for attempt in (1, 2):
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                async with pool.connection(timeout=timeout) as conn:
                    return await fn(conn)
            except self._psycopg.OperationalError as exc:
                if attempt == 1 and conn is not None and conn.broken:
                    log.warning("checkpoint_connection_lost", doing=doing, error=str(exc))
                    continue
                raise self._db_error(doing, exc) from exc
            except self._psycopg.Error as exc:
                raise self._db_error(doing, exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def setup(self) -> None:
        """Open the pool and create the tables (idempotent)."""
        await self._open()

    async def _open(self) -> None:
        self._check_usable("set up")
        async with self._guard:
            self._check_usable("set up")
            if self._pool is not None:
                return
            pool_class = self._psycopg_pool.AsyncConnectionPool
            pool = pool_class(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                open=False,
                timeout=self.connect_timeout_s,
                kwargs={"autocommit": True, "application_name": "engine-checkpoint"},
                # A connection the server closed while it sat in the pool
                # (idle_session_timeout, a restart) is replaced, not lent.
                check=pool_class.check_connection,
                # A server that went away: the pool retries in the background
                # with a growing backoff, and while it does no call may try.
                # Give up as soon as a call would, so that the first call
                # after the server is back connects at once.
                reconnect_timeout=self.connect_timeout_s,
            )
            try:
                await pool.open(wait=True, timeout=self.connect_timeout_s)
                async with pool.connection() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SETUP_LOCK_KEY,))
                    await create_tables(conn)
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

    async def put(self, checkpoint: Checkpoint) -> Checkpoint:
        """Store one checkpoint, its writes and its parent's writes in one transaction."""
        enc = encode(checkpoint)
        # Minted before the transaction: a put retried on a fresh connection
        # lands on the same row.
        fresh = new_checkpoint_id()
        tid, step = checkpoint.thread_id, checkpoint.step
        doing = f"save thread {tid!r} step {step}"
        for attempt in (1, 2):
            run = self._held.get(tid)
            try:
                where = await self._db(
                    doing, functools.partial(self._put_txn, checkpoint, enc, fresh, run)
                )
                return stored(checkpoint, where)
            except _LockLost:
                if attempt == 2:
                    break
                assert run is not None
                await self._retake(tid, run, step)
        raise CheckpointError(  # pragma: no cover - the lock was just retaken
            f"cannot {doing}: run {run} lost the thread's lock twice in a row; stop this run "
            "and resume the thread"
        )

    async def _put_txn(
        self,
        cp: Checkpoint,
        enc: Encoded,
        fresh: str,
        run: str | None,
        conn: psycopg.AsyncConnection[Any],
    ) -> Placement:
        tid, ns, step = cp.thread_id, cp.checkpoint_ns, cp.step
        async with conn.transaction():
            if run is not None:
                await self._fence(conn, tid, run, step)
            cur = await conn.execute(
                "SELECT checkpoint_id, parent_id, step FROM checkpoints WHERE thread_id = %s"
                " AND checkpoint_ns = %s ORDER BY seq DESC LIMIT 1",
                (tid, ns),
            )
            row = await cur.fetchone()
            where = place(cp, Latest(*row) if row else None, fresh)
            await conn.execute(
                "INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_id,"
                " step, source, run_id, status, created_at, data)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, to_jsonb(%s::text))"
                " ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET"
                " parent_id = EXCLUDED.parent_id, step = EXCLUDED.step,"
                " source = EXCLUDED.source, run_id = EXCLUDED.run_id,"
                " status = EXCLUDED.status, created_at = EXCLUDED.created_at,"
                " data = EXCLUDED.data",
                (
                    tid,
                    ns,
                    where.checkpoint_id,
                    where.parent_id,
                    step,
                    cp.source,
                    cp.run_id,
                    cp.status,
                    cp.created_at,
                    enc.data,
                ),
            )
            # A checkpoint's writes are replaced with it: a re-put is the whole truth.
            await replace_writes(conn, tid, ns, where.checkpoint_id, enc.writes)
            if where.parent_id is not None and enc.parent_writes:
                await replace_writes(conn, tid, ns, where.parent_id, enc.parent_writes)
        return where

    async def _fence(
        self, conn: psycopg.AsyncConnection[Any], tid: str, run: str, step: int
    ) -> None:
        """Refuse the put unless the locks row still names ``run``.

        Scenario: this driver's lock connection died while the run went on;
        another driver took the free advisory lock and overwrote the row.
        ``FOR SHARE`` makes that overwrite wait for this transaction, so a
        put either commits before the takeover or fails here after it.
        When the row is still ours but our lock session no longer holds the
        advisory lock (the server closed it), raise ``_LockLost``: the put
        takes the lock again, then comes back here.
        """
        lock_conn = self._lock_conn
        alive = lock_conn is not None and not lock_conn.broken
        session = lock_conn.info.backend_pid if lock_conn is not None and alive else 0
        classid, objid = lock_key_oids(tid)
        cur = await conn.execute(
            "SELECT run_id, pid, host, EXISTS (SELECT 1 FROM pg_locks WHERE"
            " locktype = 'advisory' AND classid = %s::oid AND objid = %s::oid"
            " AND objsubid = 1 AND pid = %s AND granted)"
            " FROM locks WHERE thread_id = %s FOR SHARE",
            (classid, objid, session, tid),
        )
        row = await cur.fetchone()
        if row is not None and row[0] == run:
            if row[3]:
                return
            raise _LockLost
        by = f"run {row[0]} (pid {row[1]} on host {row[2]})" if row else "another run"
        raise CheckpointError(
            f"run {run} no longer holds thread {tid!r}: its lock connection was lost and {by} "
            f"took the thread over; step {step} was not saved. Stop this run and resume the "
            "thread once the other run is done"
        )

    async def _retake(self, tid: str, run: str, step: int) -> None:
        """Take ``tid``'s advisory lock again for ``run``, whose lock session died."""
        async with self._guard:
            if self._held.get(tid) != run:
                raise CheckpointError(
                    f"run {run} released thread {tid!r} while saving step {step}; step {step} "
                    "was not saved"
                )
            try:
                got = await self._try_lock(tid)
            except self._psycopg.Error as exc:
                raise self._db_error(f"lock thread {tid!r} again", exc) from exc
            if not got:
                raise CheckpointError(
                    f"run {run} lost its lock on thread {tid!r} (the server closed its lock "
                    f"connection) and another run holds it now; step {step} was not saved. "
                    "Stop this run and resume the thread once the other run is done"
                )
            self._session.add(tid)
            log.warning("checkpoint_lock_retaken", thread_id=tid, run_id=run, step=step)

    async def get_latest(self, thread_id: str) -> Checkpoint | None:
        """The newest checkpoint of the thread, or None."""
        return await self.get(thread_id)

    async def get(
        self, thread_id: str, checkpoint_id: str | None = None, *, checkpoint_ns: str = ""
    ) -> Checkpoint | None:
        """The checkpoint ``checkpoint_id`` (the newest when None), or None."""
        if checkpoint_id is None:
            found = await self._load(
                thread_id, checkpoint_ns, "ORDER BY c.seq DESC LIMIT 1", (), "read"
            )
        else:
            found = await self._load(
                thread_id, checkpoint_ns, "AND c.checkpoint_id = %s", (checkpoint_id,), "read"
            )
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
        check_limit(limit)
        sql, args = "", list[Any]()
        if before is not None:
            sql += (
                " AND c.seq < (SELECT b.seq FROM checkpoints b WHERE b.thread_id = c.thread_id"
                " AND b.checkpoint_ns = c.checkpoint_ns AND b.checkpoint_id = %s)"
            )
            args.append(before)
        sql += " ORDER BY c.seq DESC"
        if limit is not None and not filter:
            # With a filter the limit counts matches, so it cannot go into the SQL.
            sql += " LIMIT %s"
            args.append(limit)
        found = await self._load(
            thread_id, checkpoint_ns, sql, tuple(args), "list the checkpoints of"
        )
        found = [cp for cp in found if matches(cp, filter)]
        return found if limit is None else found[:limit]

    async def list(self, thread_id: str) -> builtins.list[Checkpoint]:
        """Every checkpoint of the thread, oldest first."""
        return await self._load(thread_id, "", "ORDER BY c.seq ASC", (), "list the checkpoints of")

    async def _load(
        self, thread_id: str, ns: str, rest: str, args: tuple[Any, ...], what: str
    ) -> builtins.list[Checkpoint]:
        check_thread_id(thread_id)

        async def select(conn: psycopg.AsyncConnection[Any]) -> builtins.list[Any]:
            cur = await conn.execute(SELECT + rest, (thread_id, ns, *args))
            return await cur.fetchall()

        rows = await self._db(f"{what} thread {thread_id!r}", select)
        return [
            decode(
                thread_id,
                step,
                data,
                [tuple(w) for w in json.loads(writes)],
                Identity(ns, cid, parent),
            )
            for cid, parent, step, data, writes in rows
        ]

    async def _lock_connection(self) -> psycopg.AsyncConnection[Any]:
        conn = self._lock_conn
        if conn is None or conn.closed or conn.broken:
            if self._session:
                # A lost session lost its advisory locks with it; the
                # fence in put() takes them again (or refuses the put).
                log.warning("checkpoint_lock_session_lost", threads=sorted(self._session))
            self._session.clear()
            self._lock_conn = None
            if conn is not None:
                await conn.close()  # a broken one still holds its socket
            conn = await self._psycopg.AsyncConnection.connect(
                self.dsn,
                autocommit=True,
                application_name="engine-checkpoint-locks",
                connect_timeout=max(1, round(self.connect_timeout_s)),
            )
            # Kept before its first statement: if the server closes it under
            # that statement, the caller sees it broken and opens another.
            self._lock_conn = conn
            if conn.info.server_version >= 140000:
                # This session idles for as long as a run holds a thread:
                # a server-wide idle_session_timeout must not end it (and the
                # locks with it). PostgreSQL 13 and older have no such timeout.
                await conn.execute("SET idle_session_timeout = 0")
        return conn

    async def _try_lock(self, thread_id: str) -> bool:
        """``pg_try_advisory_lock`` on the lock session, on a fresh one if it died."""
        for attempt in (1, 2, 3):
            try:
                conn = await self._lock_connection()
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_key(thread_id),))
                row = await cur.fetchone()
            except self._psycopg.OperationalError:
                # psycopg learns that a session died only when it uses it:
                # retry on a new one (broken marks the old one dead).
                # Scenario: the idle session was closed (found on use), and
                # the server also ends the new one under its first statement
                # (a pg_terminate_backend racing the reconnection): two lost
                # sessions in one call. A session that could not be opened at
                # all (the server is down) is not kept, and not retried.
                lost = self._lock_conn
                if attempt == 3 or lost is None or not lost.broken:
                    raise
                continue
            return bool(row is not None and row[0])
        raise AssertionError("unreachable")  # pragma: no cover

    async def _lock_or_refuse(self, thread_id: str) -> None:
        """Take the thread's advisory lock, or raise the refusal naming its holder.

        Scenario: the lock is busy but the holder's row is missing. The
        holder took the lock a moment ago and is writing its row, or deleted
        its row and is unlocking right now: look again for a moment before
        saying the holder is unknown.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BUSY_LOOKUP_S
        delay = 0.02

        async def holder(conn: psycopg.AsyncConnection[Any]) -> Any:
            cur = await conn.execute(
                "SELECT run_id, pid, host FROM locks WHERE thread_id = %s", (thread_id,)
            )
            return await cur.fetchone()

        while True:
            if await self._try_lock(thread_id):
                self._session.add(thread_id)
                return
            row = await self._db(f"find who holds thread {thread_id!r}", holder)
            if row is not None:
                raise CheckpointError(busy_message(thread_id, *row))
            if loop.time() >= deadline:
                raise CheckpointError(busy_unnamed_message(thread_id))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def acquire(self, thread_id: str, run_id: str) -> None:
        """Take the thread's advisory lock for ``run_id``, or raise naming the holder."""
        check_thread_id(thread_id)
        await self._ready("acquire a thread")
        async with self._guard:
            holder = self._held.get(thread_id)
            if holder is not None and holder != run_id:
                raise CheckpointError(busy_message(thread_id, holder, os.getpid(), this_host()))
            conn = self._lock_conn
            if holder == run_id and thread_id in self._session and conn and not conn.broken:
                return
            try:
                await self._lock_or_refuse(thread_id)

                async def label(pconn: psycopg.AsyncConnection[Any]) -> None:
                    await pconn.execute(
                        "INSERT INTO locks (thread_id, run_id, pid, host, acquired_at)"
                        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (thread_id) DO UPDATE SET"
                        " run_id = EXCLUDED.run_id, pid = EXCLUDED.pid, host = EXCLUDED.host,"
                        " acquired_at = EXCLUDED.acquired_at",
                        (thread_id, run_id, os.getpid(), this_host(), now()),
                    )

                await self._db(f"lock thread {thread_id!r}", label)
                self._held[thread_id] = run_id
            except self._psycopg.Error as exc:
                await self._unlock(thread_id)
                raise self._db_error(f"lock thread {thread_id!r}", exc) from exc
            except CheckpointError:
                await self._unlock(thread_id)
                raise

    async def _unlock(self, thread_id: str) -> None:
        """Drop the thread's advisory lock; never raises (a dead session holds no lock)."""
        if thread_id not in self._session:
            return
        self._session.discard(thread_id)
        conn = self._lock_conn
        if conn is None or conn.closed or conn.broken:
            return  # the session is gone, and its locks with it
        try:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key(thread_id),))
        except self._psycopg.Error as exc:
            if conn.broken:
                return  # it died just now: a dead session holds no locks either
            # The session's state is unknown: end it, so that no lock is left
            # behind. Other threads it held are taken again by their next put.
            log.warning("checkpoint_unlock_failed", thread_id=thread_id, error=str(exc))
            self._lock_conn = None
            await conn.close()

    async def release(self, thread_id: str, run_id: str) -> None:
        """Drop ``run_id``'s lock; a lock held by another run is left alone.

        Never raises for a database error: it runs after the run's own
        outcome (often an error of the same lost server), which must reach
        the caller. The advisory lock goes with its session in any case.
        """
        check_thread_id(thread_id)
        await self._ready("release a thread")
        async with self._guard:
            if self._held.get(thread_id) != run_id:
                return
            del self._held[thread_id]

            async def unlabel(conn: psycopg.AsyncConnection[Any]) -> None:
                await conn.execute(
                    "DELETE FROM locks WHERE thread_id = %s AND run_id = %s", (thread_id, run_id)
                )

            try:
                # Label first, lock second: the next holder writes its row after.
                await self._db(
                    f"release thread {thread_id!r}",
                    unlabel,
                    timeout=min(RELEASE_TIMEOUT_S, self.connect_timeout_s),
                )
            except CheckpointError as exc:
                # The label only names the holder in refusals; the next holder
                # of the free lock overwrites it.
                log.warning(
                    "checkpoint_release_failed", thread_id=thread_id, run_id=run_id, error=str(exc)
                )
            finally:
                await self._unlock(thread_id)

    async def delete_thread(self, thread_id: str) -> None:
        """Delete the thread's checkpoints and writes; refused while a run holds it."""
        check_thread_id(thread_id)
        await self._ready("delete a thread")
        async with self._guard:
            holder = self._held.get(thread_id)
            if holder is not None:
                raise CheckpointError(busy_message(thread_id, holder, os.getpid(), this_host()))
            try:
                await self._lock_or_refuse(thread_id)
            except self._psycopg.Error as exc:
                raise self._db_error(f"lock thread {thread_id!r}", exc) from exc

            async def delete(conn: psycopg.AsyncConnection[Any]) -> None:
                async with conn.transaction():
                    for table in ("checkpoints", "writes", "locks"):
                        await conn.execute(
                            f"DELETE FROM {table} WHERE thread_id = %s", (thread_id,)
                        )

            try:
                await self._db(f"delete thread {thread_id!r}", delete)
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
                    async with pool.connection(
                        timeout=min(RELEASE_TIMEOUT_S, self.connect_timeout_s)
                    ) as conn:
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

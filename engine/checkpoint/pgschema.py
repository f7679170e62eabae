"""The PostgreSQL checkpoint store's tables and SQL: the schema (created under a
setup lock, moving a store of the first layout into the tree layout), the
statement that reads checkpoints with their writes, writing a checkpoint's
writes, and the advisory-lock key of a thread. ``postgres.py`` runs them.
"""

from __future__ import annotations

import builtins
import hashlib
from typing import TYPE_CHECKING, Any

from ..logs import get_logger
from .migrate import layout, move

if TYPE_CHECKING:
    import psycopg

log = get_logger("engine.checkpoint")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS checkpoints (
        seq BIGSERIAL,
        thread_id TEXT NOT NULL,
        checkpoint_ns TEXT NOT NULL,
        checkpoint_id TEXT NOT NULL,
        parent_id TEXT,
        step INTEGER NOT NULL,
        source TEXT NOT NULL,
        run_id TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        data JSONB NOT NULL,
        PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id))""",
    """CREATE INDEX IF NOT EXISTS checkpoints_in_order
        ON checkpoints (thread_id, checkpoint_ns, seq)""",
    """CREATE TABLE IF NOT EXISTS writes (
        thread_id TEXT NOT NULL,
        checkpoint_ns TEXT NOT NULL,
        checkpoint_id TEXT NOT NULL,
        node TEXT NOT NULL,
        idx INTEGER NOT NULL,
        data JSONB NOT NULL,
        PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, node, idx))""",
    """CREATE TABLE IF NOT EXISTS locks (
        thread_id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        pid INTEGER NOT NULL,
        host TEXT NOT NULL,
        acquired_at DOUBLE PRECISION NOT NULL)""",
)

# Serialises concurrent CREATE TABLE IF NOT EXISTS from several drivers,
# which can otherwise collide in the catalog (duplicate pg_type rows).
SETUP_LOCK_KEY = 0x656E67696E65  # "engine"

# A row's JSON text: a jsonb string holds it whole; a jsonb object is a
# schema_version 1 row, written before rows were stored as strings.
TEXT = "CASE WHEN jsonb_typeof({0}) = 'string' THEN {0} #>> '{{}}' ELSE {0}::text END"

# Checkpoints of a thread and namespace with their writes, in one statement (one snapshot).
SELECT = f"""
SELECT c.checkpoint_id, c.parent_id, c.step, {TEXT.format("c.data")},
       COALESCE((SELECT json_agg(json_build_array(w.node, w.idx, {TEXT.format("w.data")})
                                 ORDER BY w.node, w.idx)
                 FROM writes w WHERE w.thread_id = c.thread_id
                   AND w.checkpoint_ns = c.checkpoint_ns AND w.checkpoint_id = c.checkpoint_id),
                '[]'::json)::text
FROM checkpoints c WHERE c.thread_id = %s AND c.checkpoint_ns = %s
"""


def lock_key(thread_id: str) -> int:
    """The advisory lock key (signed 64-bit) of a thread id."""
    digest = hashlib.blake2b(f"engine-thread:{thread_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_key_oids(thread_id: str) -> tuple[int, int]:
    """How ``pg_locks`` shows the thread's advisory lock: (classid, objid), objsubid 1."""
    key = lock_key(thread_id) & 0xFFFF_FFFF_FFFF_FFFF
    return key >> 32, key & 0xFFFF_FFFF


async def replace_writes(
    conn: psycopg.AsyncConnection[Any],
    tid: str,
    ns: str,
    checkpoint_id: str,
    writes: builtins.list[tuple[str, int, str]],
) -> None:
    await conn.execute(
        "DELETE FROM writes WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = %s",
        (tid, ns, checkpoint_id),
    )
    if writes:
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO writes (thread_id, checkpoint_ns, checkpoint_id, node, idx, data)"
                " VALUES (%s, %s, %s, %s, %s, to_jsonb(%s::text))",
                [(tid, ns, checkpoint_id, n, i, text) for n, i, text in writes],
            )


async def create_tables(conn: psycopg.AsyncConnection[Any]) -> None:
    """Create the tables, moving a store of the first layout into the tree layout first.

    Runs in the setup's transaction, under the setup lock: one driver moves
    the rows, every other one then finds the tree layout. Another program's
    ``checkpoints`` table is left alone.
    """
    cur = await conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'checkpoints'"
        " AND table_schema = current_schema()"
    )
    found = layout(row[0] for row in await cur.fetchall())
    if found == "old":
        cur = await conn.execute(
            f"SELECT thread_id, step, run_id, status, created_at, {TEXT.format('data')}"
            " FROM checkpoints"
        )
        old = await cur.fetchall()
        cur = await conn.execute(
            f"SELECT thread_id, step, node, idx, {TEXT.format('data')} FROM writes"
        )
        old_writes = await cur.fetchall()
        await conn.execute("DROP TABLE checkpoints")
        await conn.execute("DROP TABLE writes")
    for statement in SCHEMA:
        if found == "foreign" and "CREATE INDEX" in statement:
            continue  # no index on another program's table: its columns are not ours
        await conn.execute(statement)
    if found != "old":
        return
    moved = move(old, old_writes)
    async with conn.cursor() as c:
        await c.executemany(
            "INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_id, step,"
            " source, run_id, status, created_at, data)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, to_jsonb(%s::text))",
            moved.checkpoints,
        )
        await c.executemany(
            "INSERT INTO writes (thread_id, checkpoint_ns, checkpoint_id, node, idx, data)"
            " VALUES (%s, %s, %s, %s, %s, to_jsonb(%s::text))",
            moved.writes,
        )
    log.warning(
        "checkpoint_store_migrated",
        store="postgres",
        checkpoints=len(moved.checkpoints),
        writes=len(moved.writes),
    )


__all__ = [
    "SELECT",
    "SETUP_LOCK_KEY",
    "create_tables",
    "lock_key",
    "lock_key_oids",
    "replace_writes",
]

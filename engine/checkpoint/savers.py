"""LangGraph's checkpointer names and constructors over the engine's checkpointers.

::

    InMemorySaver() / MemorySaver()                     -> a MemoryCheckpointer
    SqliteSaver(sqlite3.connect(path))                  -> a SqliteCheckpointer on path
    with SqliteSaver.from_conn_string(path) as saver:   (the same, closed on leaving)
    async with AsyncSqliteSaver.from_conn_string(path) as saver:
    with PostgresSaver.from_conn_string(dsn) as saver:  -> a PostgresCheckpointer whose
        saver.setup()                                      pool lives on a loop of its own,
                                                           so sync invoke() calls share it
    async with AsyncPostgresSaver.from_conn_string(dsn) as saver:
        await saver.setup()                             -> a PostgresCheckpointer

Only the constructors are LangGraph's: what they store is the engine's own
layout (a LangGraph SQLite file or PostgreSQL schema is not read, nor written).
"""

from __future__ import annotations

import builtins
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from .base import Checkpoint
from .homeloop import HomeLoop
from .memory import MemoryCheckpointer
from .postgres import PostgresCheckpointer
from .sqlite import SqliteCheckpointer


class InMemorySaver(MemoryCheckpointer):
    """Checkpoints kept in this process (LangGraph's name for ``MemoryCheckpointer``)."""


#: LangGraph's older name for ``InMemorySaver``.
MemorySaver = InMemorySaver


def _sqlite_path(conn: sqlite3.Connection | str | os.PathLike[str]) -> str | os.PathLike[str]:
    """The file a connection (or a path) names; an in-memory connection cannot be shared."""
    if not isinstance(conn, sqlite3.Connection):
        return conn
    rows = conn.execute("PRAGMA database_list").fetchall()
    main = next((row[2] for row in rows if row[1] == "main"), "")
    if not main:
        raise ValueError(
            "SqliteSaver(conn) needs a connection to a file: the engine opens its own "
            "connection to it, and an in-memory database is private to its connection; "
            "use SqliteSaver.from_conn_string(':memory:') or a file path"
        )
    return str(main)


class SqliteSaver(SqliteCheckpointer):
    """Checkpoints in one SQLite file, opened LangGraph's way: ``SqliteSaver(conn)`` with a
    ``sqlite3`` connection to the file (or its path), or ``from_conn_string(path)``."""

    def __init__(self, conn: sqlite3.Connection | str | os.PathLike[str], **options: Any) -> None:
        super().__init__(_sqlite_path(conn), **options)

    @classmethod
    @contextmanager
    def from_conn_string(cls, conn_string: str | os.PathLike[str]) -> Iterator[SqliteSaver]:
        """A checkpointer on the file ``conn_string`` (or ``":memory:"``), closed on leaving
        the ``with`` block (releasing the threads it holds)."""
        saver = cls(conn_string)
        try:
            yield saver
        finally:
            saver.close()


class AsyncSqliteSaver(SqliteCheckpointer):
    """``SqliteSaver`` for ``async with``: ``AsyncSqliteSaver.from_conn_string(path)``."""

    @classmethod
    @asynccontextmanager
    async def from_conn_string(
        cls, conn_string: str | os.PathLike[str]
    ) -> AsyncIterator[AsyncSqliteSaver]:
        """A checkpointer on ``conn_string``, closed on leaving the ``async with`` block."""
        async with cls(conn_string) as saver:
            yield saver


class AsyncPostgresSaver(PostgresCheckpointer):
    """Checkpoints in PostgreSQL for async code, opened LangGraph's way:
    ``async with AsyncPostgresSaver.from_conn_string(dsn) as saver: await saver.setup()``.
    Its pool belongs to the loop that opened it (use it from that loop)."""

    @classmethod
    @asynccontextmanager
    async def from_conn_string(
        cls, conn_string: str, *, pipeline: bool = False, **options: Any
    ) -> AsyncIterator[AsyncPostgresSaver]:
        """A checkpointer on ``conn_string``, closed on leaving the block. ``pipeline`` is
        accepted for LangGraph's signature; each save is one transaction either way."""
        saver = cls(conn_string, **options)
        try:
            yield saver
        finally:
            await saver.aclose()


class PostgresSaver(PostgresCheckpointer):
    """Checkpoints in PostgreSQL for sync code, opened LangGraph's way:
    ``with PostgresSaver.from_conn_string(dsn) as saver: saver.setup()``.

    Every storage call runs on the saver's own event loop (a daemon thread),
    so ``invoke()`` calls, each on a new loop, share its pool and its locks.
    ``setup()`` is synchronous, as LangGraph's is; ``close()`` ends it.
    """

    def __init__(self, conn_string: str, **options: Any) -> None:
        super().__init__(conn_string, **options)
        self._home = HomeLoop("engine-postgres-saver")

    @classmethod
    @contextmanager
    def from_conn_string(
        cls, conn_string: str, *, pipeline: bool = False, **options: Any
    ) -> Iterator[PostgresSaver]:
        """A checkpointer on ``conn_string``, closed on leaving the block. ``pipeline`` is
        accepted for LangGraph's signature; each save is one transaction either way."""
        saver = cls(conn_string, **options)
        try:
            yield saver
        finally:
            saver.close()

    def setup(self) -> None:  # type: ignore[override]  # sync, as LangGraph's
        """Open the pool and create the tables (idempotent); blocks until done."""
        self._home.block(self._open())

    async def __aenter__(self) -> PostgresSaver:
        await self._home.call(self._open())
        return self

    def close(self) -> None:
        """Release held locks, close the pool, stop the saver's loop (idempotent)."""
        try:
            self._home.block(super().aclose())
        finally:
            self._home.stop()

    async def aclose(self) -> None:
        try:
            await self._home.call(super().aclose())
        finally:
            self._home.stop()

    async def put(self, checkpoint: Checkpoint) -> Checkpoint:
        return await self._home.call(super().put(checkpoint))

    async def get_latest(self, thread_id: str) -> Checkpoint | None:
        return await self._home.call(super().get_latest(thread_id))

    async def get(
        self, thread_id: str, checkpoint_id: str | None = None, *, checkpoint_ns: str = ""
    ) -> Checkpoint | None:
        return await self._home.call(
            super().get(thread_id, checkpoint_id, checkpoint_ns=checkpoint_ns)
        )

    async def history(
        self,
        thread_id: str,
        *,
        checkpoint_ns: str = "",
        before: str | None = None,
        limit: int | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> builtins.list[Checkpoint]:
        return await self._home.call(
            super().history(
                thread_id, checkpoint_ns=checkpoint_ns, before=before, limit=limit, filter=filter
            )
        )

    async def list(self, thread_id: str) -> builtins.list[Checkpoint]:
        return await self._home.call(super().list(thread_id))

    async def acquire(self, thread_id: str, run_id: str) -> None:
        await self._home.call(super().acquire(thread_id, run_id))

    async def release(self, thread_id: str, run_id: str) -> None:
        await self._home.call(super().release(thread_id, run_id))

    async def delete_thread(self, thread_id: str) -> None:
        await self._home.call(super().delete_thread(thread_id))


__all__ = [
    "AsyncPostgresSaver",
    "AsyncSqliteSaver",
    "InMemorySaver",
    "MemorySaver",
    "PostgresSaver",
    "SqliteSaver",
]

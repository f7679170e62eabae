"""LangGraph's checkpointer names over the engine's checkpointers.

::

    InMemorySaver() / MemorySaver()          -> a MemoryCheckpointer
    with SqliteSaver.from_conn_string(path) as saver:   -> a SqliteCheckpointer on path
        graph = builder.compile(checkpointer=saver)

Only the constructors are LangGraph's: what they store is the engine's own
layout (a LangGraph SQLite file is not read, nor written).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from .memory import MemoryCheckpointer
from .sqlite import SqliteCheckpointer


class InMemorySaver(MemoryCheckpointer):
    """Checkpoints kept in this process (LangGraph's name for ``MemoryCheckpointer``)."""


#: LangGraph's older name for ``InMemorySaver``.
MemorySaver = InMemorySaver


class SqliteSaver(SqliteCheckpointer):
    """Checkpoints in one SQLite file, opened LangGraph's way: ``from_conn_string(path)``."""

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


__all__ = ["InMemorySaver", "MemorySaver", "SqliteSaver"]

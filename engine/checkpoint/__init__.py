"""Durable checkpoints, JSON only: memory, SQLite (the default), PostgreSQL.

This module only re-exports. ``PostgresCheckpointer`` imports psycopg when
constructed, so the package imports without the ``engine[postgres]`` extra.
"""

from .base import Checkpoint as Checkpoint
from .base import Checkpointer as Checkpointer
from .base import PendingWrite as PendingWrite
from .base import TaskError as TaskError
from .base import TaskRef as TaskRef
from .history import PregelTask as PregelTask
from .history import StateSnapshot as StateSnapshot
from .memory import MemoryCheckpointer as MemoryCheckpointer
from .postgres import PostgresCheckpointer as PostgresCheckpointer
from .savers import AsyncPostgresSaver as AsyncPostgresSaver
from .savers import AsyncSqliteSaver as AsyncSqliteSaver
from .savers import InMemorySaver as InMemorySaver
from .savers import MemorySaver as MemorySaver
from .savers import PostgresSaver as PostgresSaver
from .savers import SqliteSaver as SqliteSaver
from .sqlite import SqliteCheckpointer as SqliteCheckpointer

__all__ = [
    "AsyncPostgresSaver",
    "AsyncSqliteSaver",
    "Checkpoint",
    "Checkpointer",
    "InMemorySaver",
    "MemoryCheckpointer",
    "MemorySaver",
    "PendingWrite",
    "PostgresCheckpointer",
    "PostgresSaver",
    "PregelTask",
    "SqliteCheckpointer",
    "SqliteSaver",
    "StateSnapshot",
    "TaskError",
    "TaskRef",
]

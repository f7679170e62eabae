"""Durable checkpoints, JSON only: memory, SQLite (the default), PostgreSQL.

This module only re-exports. ``PostgresCheckpointer`` imports psycopg when
constructed, so the package imports without the ``engine[postgres]`` extra.
"""

from .base import Checkpoint as Checkpoint
from .base import Checkpointer as Checkpointer
from .base import PendingWrite as PendingWrite
from .base import TaskRef as TaskRef
from .memory import MemoryCheckpointer as MemoryCheckpointer
from .postgres import PostgresCheckpointer as PostgresCheckpointer
from .sqlite import SqliteCheckpointer as SqliteCheckpointer

__all__ = [
    "Checkpoint",
    "Checkpointer",
    "MemoryCheckpointer",
    "PendingWrite",
    "PostgresCheckpointer",
    "SqliteCheckpointer",
    "TaskRef",
]

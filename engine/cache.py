"""Node caching: a node's result kept by a key of its input, so a later call skips the work.

::

    add_node("embed", fn, cache_policy=CachePolicy(ttl=3600))   what to key, how long to keep
    compile(cache=InMemoryCache())  or  SqliteCache("cache.db")  where results are kept

    dispatcher, before a call is given a lane (first attempts only):
      key = the node's name + a hash of its argument (or of key_func(argument))
      cache.get(key) -> the update  : settled at once, the call's record says ``cached``
                     -> nothing     : the call runs; a successful update is kept

The key is computed in the driver from the argument the node would be called
with: the projection of the state a node with ``reads=`` receives (lean
dispatch), a ``Send``'s payload, or the whole state. Two calls whose
arguments pickle the same share a result; a ``key_func`` picks what matters
(``key_func=lambda s: s["user"]``). Results are kept pickled, so a node that
changes what it returned, or a later step that changes the state, never
changes what the cache gives back.

Only a node's successful update is kept; a failure is never cached, and a
retry is never answered from the cache. Caching is for nodes whose result
depends on their input alone: a hit skips the node's side effects.
"""

from __future__ import annotations

import hashlib
import pickle
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import GraphError


@dataclass(frozen=True)
class CachePolicy:
    """How one node's results are cached: ``key_func`` maps the node's argument to what
    identifies its result (default: the whole argument); ``ttl`` is how many seconds a
    result is kept (None: until the cache is cleared)."""

    key_func: Callable[[Any], Any] | None = None
    ttl: float | None = None

    def __post_init__(self) -> None:
        if self.ttl is not None and not self.ttl > 0:
            raise ValueError(
                f"CachePolicy(ttl=...) must be a positive number of seconds or None, "
                f"got {self.ttl!r}"
            )
        if self.key_func is not None and not callable(self.key_func):
            raise ValueError(f"CachePolicy(key_func=...) must be callable, got {self.key_func!r}")


class NodeCache(Protocol):
    """Where cached node results live. Keys are ``(node, digest)``; values are bytes."""

    def get(self, node: str, key: str) -> bytes | None:
        """The value kept for ``key`` of ``node``, None when absent or expired."""
        ...

    def set(self, node: str, key: str, value: bytes, ttl: float | None) -> None:
        """Keep ``value``; ``ttl`` seconds (None: until cleared)."""
        ...

    def clear(self, nodes: Iterable[str] | None = None) -> None:
        """Forget every result (of ``nodes`` only, when given)."""
        ...


class InMemoryCache:
    """Results kept in this process, for as long as the cache object lives."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, tuple[bytes, float | None]]] = {}

    def __repr__(self) -> str:
        return f"<InMemoryCache nodes={len(self._data)}>"

    def get(self, node: str, key: str) -> bytes | None:
        with self._lock:
            entry = self._data.get(node, {}).get(key)
            if entry is None:
                return None
            value, expires = entry
            if expires is not None and expires <= time.time():
                del self._data[node][key]
                return None
            return value

    def set(self, node: str, key: str, value: bytes, ttl: float | None) -> None:
        expires = None if ttl is None else time.time() + ttl
        with self._lock:
            self._data.setdefault(node, {})[key] = (value, expires)

    def clear(self, nodes: Iterable[str] | None = None) -> None:
        with self._lock:
            if nodes is None:
                self._data.clear()
            else:
                for node in nodes:
                    self._data.pop(node, None)


class SqliteCache:
    """Results kept in a SQLite file: shared by the processes that open it, kept across
    restarts. One connection per thread; writes are short transactions."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._local = threading.local()
        with self._conn() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS engine_node_cache (node TEXT NOT NULL, "
                "key TEXT NOT NULL, value BLOB NOT NULL, expires REAL, PRIMARY KEY (node, key))"
            )

    def __repr__(self) -> str:
        return f"<SqliteCache {self.path!r}>"

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0)
            self._local.conn = conn
        return conn

    def get(self, node: str, key: str) -> bytes | None:
        row = (
            self._conn()
            .execute(
                "SELECT value, expires FROM engine_node_cache WHERE node = ? AND key = ?",
                (node, key),
            )
            .fetchone()
        )
        if row is None:
            return None
        value, expires = row
        if expires is not None and expires <= time.time():
            with self._conn() as conn:
                conn.execute(
                    "DELETE FROM engine_node_cache WHERE node = ? AND key = ? AND expires <= ?",
                    (node, key, time.time()),
                )
            return None
        return bytes(value)

    def set(self, node: str, key: str, value: bytes, ttl: float | None) -> None:
        expires = None if ttl is None else time.time() + ttl
        with self._conn() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO engine_node_cache (node, key, value, expires) "
                "VALUES (?, ?, ?, ?)",
                (node, key, value, expires),
            )

    def clear(self, nodes: Iterable[str] | None = None) -> None:
        with self._conn() as conn:
            if nodes is None:
                conn.execute("DELETE FROM engine_node_cache")
            else:
                conn.executemany(
                    "DELETE FROM engine_node_cache WHERE node = ?", [(n,) for n in nodes]
                )

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def cache_key(policy: CachePolicy, node: str, arg: Any, *, step: int) -> str:
    """The key of a call of ``node`` with ``arg``: a digest of ``key_func(arg)`` (or of
    ``arg``) pickled. A ``GraphError`` naming the node when it cannot be pickled."""
    try:
        what = policy.key_func(arg) if policy.key_func is not None else arg
    except Exception as exc:
        raise GraphError(
            f"node {node!r}: its CachePolicy key_func raised {type(exc).__name__}: {exc} "
            f"(step {step}); make it a plain function of the node's input",
            node=node,
            step=step,
        ) from exc
    if isinstance(what, str):
        data = what.encode("utf-8", "surrogatepass")
    else:
        try:
            data = pickle.dumps(what, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise GraphError(
                f"node {node!r}: its cache key cannot be computed, its input "
                f"({type(what).__name__}) cannot be pickled: {type(exc).__name__}: {exc} "
                f"(step {step}); give its CachePolicy a key_func returning a str",
                node=node,
                step=step,
            ) from exc
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def dump_value(value: Any) -> bytes | None:
    """A successful update as kept in the cache; None (not kept) when it cannot be pickled."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return None


def load_value(data: bytes) -> Any:
    return pickle.loads(data)


__all__ = [
    "CachePolicy",
    "InMemoryCache",
    "NodeCache",
    "SqliteCache",
    "cache_key",
    "dump_value",
    "load_value",
]

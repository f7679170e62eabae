"""Fixtures of the core tests (the root conftest.py has the shared ``mode`` fixture)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def warm_pool() -> None:
    """The default process pool with every worker started.

    Tests that prove parallelism from overlapping intervals use it, so that a
    worker still starting cannot push one call past the other. Per test, not
    per session: fault tests elsewhere break and replace the default pool.
    """
    from engine.lanes.pool import default_executor, warm

    warm(default_executor())


def _no_postgres(why: str) -> None:
    """Skip, or fail under ``ENGINE_REQUIRE_PG=1`` (CI), where a server must be reachable."""
    if os.environ.get("ENGINE_REQUIRE_PG") == "1":
        pytest.fail(f"ENGINE_REQUIRE_PG=1 but {why}", pytrace=False)
    pytest.skip(why)


def need_psycopg() -> None:
    """psycopg is importable; otherwise skip (or fail under ENGINE_REQUIRE_PG=1)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _no_postgres("psycopg is not installed (pip install 'engine[postgres]')")


def postgres_dsn() -> str:
    """The test server's DSN (``ENGINE_TEST_PG_DSN``), checked to be reachable.

    Without one the test skips and says how to start a server; with
    ``ENGINE_REQUIRE_PG=1`` (set by ``.ci/run``) it fails instead, so CI can
    never pass by skipping every PostgreSQL test.
    """
    dsn = os.environ.get("ENGINE_TEST_PG_DSN")
    if not dsn:
        _no_postgres(
            "ENGINE_TEST_PG_DSN is not set; start a server with: "
            'eval "$(bash scripts/postgres.sh | tail -n1)"'
        )
        raise AssertionError("unreachable")  # pragma: no cover (skip/fail raised)
    need_psycopg()
    import psycopg

    try:
        psycopg.connect(dsn, connect_timeout=3).close()
    except psycopg.Error as exc:
        _no_postgres(f"PostgreSQL at ENGINE_TEST_PG_DSN is unreachable: {exc}")
    return dsn


@pytest.fixture
def pg_dsn() -> str:
    """``postgres_dsn()`` as a fixture."""
    return postgres_dsn()


@pytest.fixture
def llm_url() -> Iterator[str]:
    """A local LLM server on its own thread and loop, as the harness runs it: a
    blocking API call (auto_lanes' lookups) on the loop under test must not
    block the server too."""
    from workloads.llm import LLMServer

    server = LLMServer.start_in_thread(latency_s=0.0)
    try:
        yield server.base_url
    finally:
        server.stop()


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """A checkpointer of each kind (memory, SQLite, PostgreSQL), closed after the test.
    Test files that need another set of stores define their own ``store``."""
    from engine.checkpoint import MemoryCheckpointer, PostgresCheckpointer, SqliteCheckpointer

    if request.param == "memory":
        yield MemoryCheckpointer()
        return
    cp: Any
    if request.param == "sqlite":
        cp = SqliteCheckpointer(tmp_path / "cp.db")
    else:
        cp = PostgresCheckpointer(postgres_dsn(), pool_size=2)
    yield cp
    await cp.aclose()

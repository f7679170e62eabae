"""PostgreSQL connections closed by the server do not fail a run; a server that stays down
fails it with the real cause, and the thread resumes once the server is back.

Every fault is caused for real on the test server: ``idle_session_timeout`` on the
checkpointer's sessions, ``pg_terminate_backend`` of its connections, and a stop (and
start) of the server by ``scripts/postgres.sh`` while a step runs. The server is
always started again at the end of a test.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engine.checkpoint import PostgresCheckpointer
from engine.errors import CheckpointError
from tests.conftest import _no_postgres, postgres_dsn
from tests.test_checkpoint import three_steps

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parent.parent


#: The final steps of ``three_steps`` run with input ``{}``.
FINAL = ["first 0", "second 0", "third 0"]


def thread() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


async def refused_to_an_intruder(dsn: str, thread_id: str) -> None:
    """Another driver cannot take the thread: the run still holds its lock."""
    async with PostgresCheckpointer(dsn, pool_size=1) as other:
        with pytest.raises(CheckpointError, match="already being run by run"):
            await other.acquire(thread_id, "intruder")


async def admin(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(sql, args)
        return await cur.fetchall() if cur.description else []


async def checkpointer_backends(dsn: str) -> set[int]:
    rows = await admin(
        dsn,
        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'engine-checkpoint%%'",
    )
    return {row[0] for row in rows}


async def terminate_checkpointer_backends(dsn: str) -> None:
    """pg_terminate_backend of every checkpointer connection (pool and lock); wait till gone."""
    victims = await checkpointer_backends(dsn)
    assert victims  # the pool's connection and the lock session
    await admin(dsn, "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", list(victims))
    async with asyncio.timeout(15):
        while victims & await checkpointer_backends(dsn):
            await asyncio.sleep(0.05)


async def runs_to_the_end(dsn: str, t: str, hooks: dict[str, Any]) -> None:
    """``three_steps`` with ``hooks`` on thread ``t`` finishes, every step saved."""
    async with PostgresCheckpointer(dsn, pool_size=1) as cp:
        app = three_steps(hooks=hooks).compile(checkpointer=cp)
        result = await app.arun({}, thread_id=t)
        assert result.state.steps == FINAL
        assert [c.step for c in await cp.list(t)] == [0, 1, 2, 3]


class TestConnectionsClosedByTheServer:
    async def test_idle_session_timeout_shorter_than_a_step(self) -> None:
        """The server ends every session idle for 0.2 s while each step takes 0.6 s: the run
        finishes, every step saved, and the thread stays locked all along."""
        import psycopg

        dsn = postgres_dsn()
        short = psycopg.conninfo.make_conninfo(dsn, options="-c idle_session_timeout=200")
        t = thread()

        async def slow() -> None:
            await asyncio.sleep(0.6)

        async def slow_then_check() -> None:
            await asyncio.sleep(0.6)
            await refused_to_an_intruder(dsn, t)

        hooks = {"first": slow, "second": slow, "third": slow_then_check}
        async with PostgresCheckpointer(short, pool_size=1) as cp:
            app = three_steps(hooks=hooks).compile(checkpointer=cp)
            result = await app.arun({}, thread_id=t)
            assert result.state.steps == FINAL
            assert [c.step for c in await cp.list(t)] == [0, 1, 2, 3]
            # And a resume (of a finished thread) goes through the same idle sessions.
            await asyncio.sleep(0.4)
            assert (await app.arun(None, thread_id=t)).state.steps == FINAL

    async def test_connections_terminated_between_steps(self) -> None:
        """pg_terminate_backend of every checkpointer connection (pool and lock) during step
        0: the run saves on new connections, takes its lock again, and finishes."""
        dsn = postgres_dsn()
        t = thread()

        async def terminate() -> None:
            await terminate_checkpointer_backends(dsn)

        async def check() -> None:
            await refused_to_an_intruder(dsn, t)

        await runs_to_the_end(dsn, t, {"first": terminate, "second": check})


class LockSessions:
    """Has the server end each of the next ``n`` lock sessions right after it opened them,
    before the checkpointer's first statement on it (``pg_terminate_backend``, as a drop
    racing a reconnection does); ``ended`` counts them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, dsn: str) -> None:
        import psycopg

        self.dsn, self.n, self.ended = dsn, 0, 0
        real = psycopg.AsyncConnection.connect

        async def connect(cls: Any, *args: Any, **kwargs: Any) -> Any:
            conn = await real(*args, **kwargs)
            if kwargs.get("application_name") == "engine-checkpoint-locks" and self.n:
                self.n -= 1
                await asyncio.to_thread(self._terminate, conn.info.backend_pid)
                self.ended += 1
            return conn

        monkeypatch.setattr(psycopg.AsyncConnection, "connect", classmethod(connect))

    def _terminate(self, pid: int) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as admin_conn:
            admin_conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            while admin_conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone():
                time.sleep(0.01)


class TestLockSessionClosedAtOnce:
    async def test_first_lock_session_closed_before_its_first_statement(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The server closes the run's new lock session before its first statement: the lock
        is taken on another new session and the run finishes (it failed with 'cannot lock
        thread': only the lock query itself was retried, not the session's set-up)."""
        dsn = postgres_dsn()
        sessions = LockSessions(monkeypatch, dsn)
        sessions.n = 1
        t = thread()

        async def check() -> None:
            await refused_to_an_intruder(dsn, t)

        await runs_to_the_end(dsn, t, {"second": check})
        assert sessions.ended == 1

    async def test_retaken_lock_on_a_session_closed_at_once(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The lock session is terminated during step 0, and the new session the next save
        opens to take the lock again is closed before its first statement too: the save
        takes it on a third session and the run finishes holding the thread."""
        dsn = postgres_dsn()
        sessions = LockSessions(monkeypatch, dsn)
        t = thread()

        async def terminate() -> None:
            await terminate_checkpointer_backends(dsn)
            sessions.n = 1  # the next lock session dies at once

        async def check() -> None:
            await refused_to_an_intruder(dsn, t)

        await runs_to_the_end(dsn, t, {"first": terminate, "second": check})
        assert sessions.ended == 1


# -- the server stopped -----------------------------------------------------------------


class Server:
    """The test server, stopped and started with ``scripts/postgres.sh`` (its own port)."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.dsn = dsn
        self.port = str(psycopg.conninfo.conninfo_to_dict(dsn).get("port", "5432"))

    def managed(self) -> bool:
        """Whether scripts/postgres.sh runs the server of the DSN (its postmaster.pid names the
        port), so that stopping it stops what the tests use and nothing else."""
        dirs = [REPO / ".pg", Path(f"/var/tmp/engine-pg-{self.port}")]
        if os.environ.get("ENGINE_PG_DIR"):
            dirs.insert(0, Path(os.environ["ENGINE_PG_DIR"]))
        for pg_dir in dirs:
            try:
                lines = (pg_dir / "data" / "postmaster.pid").read_text().splitlines()
            except OSError:
                continue
            if len(lines) > 3 and lines[3].strip() == self.port:
                return True
        return False

    async def _script(self, *args: str) -> None:
        env = {**os.environ, "ENGINE_PG_PORT": self.port}
        proc = await asyncio.create_subprocess_exec(
            "bash",
            str(REPO / "scripts" / "postgres.sh"),
            *args,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out.decode(errors="replace")

    async def stop(self) -> None:
        await self._script("stop")

    async def start(self) -> None:
        await self._script()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    """The test server, started again after the test whatever happened."""
    srv = Server(postgres_dsn())
    if not srv.managed():
        _no_postgres(
            "the server at ENGINE_TEST_PG_DSN is not run by scripts/postgres.sh from this "
            "checkout: the restart tests stop and start that server only"
        )
    try:
        yield srv
    finally:
        await srv.start()


class TestServerStopped:
    async def test_restart_between_steps(self, server: Server) -> None:
        """The server restarts during step 0: the run goes on once it is back, on new
        connections, holding its lock again."""
        t = thread()

        async def restart() -> None:
            await server.stop()
            await server.start()

        async def check() -> None:
            await refused_to_an_intruder(server.dsn, t)

        async with PostgresCheckpointer(server.dsn, pool_size=1) as cp:
            app = three_steps(hooks={"first": restart, "second": check}).compile(checkpointer=cp)
            result = await app.arun({}, thread_id=t)
            assert result.state.steps == FINAL
            assert [c.step for c in await cp.list(t)] == [0, 1, 2, 3]

    async def test_server_down_fails_with_the_cause_and_the_thread_resumes(
        self, server: Server
    ) -> None:
        """The server stops during step 0 and stays down: the save fails with a
        CheckpointError carrying psycopg's error (not a failure to release the lock); a
        resume while it is down says the same; once it is back the thread resumes and ends
        as an uninterrupted run."""
        import psycopg

        t = thread()
        stopped: list[bool] = []

        async def stop_once() -> None:
            if not stopped:
                stopped.append(True)
                await server.stop()

        cp = PostgresCheckpointer(server.dsn, pool_size=1, connect_timeout_s=2.0)
        try:
            app = three_steps(hooks={"first": stop_once}).compile(checkpointer=cp)
            with pytest.raises(CheckpointError) as info:
                await app.arun({}, thread_id=t)
            text = str(info.value)
            assert f"cannot save thread {t!r} step 1" in text, text
            assert "release" not in text
            assert isinstance(info.value.__cause__, psycopg.OperationalError)
            assert "resumes from its last saved step" in text

            with pytest.raises(CheckpointError) as again:
                await app.arun(None, thread_id=t)
            assert isinstance(again.value.__cause__, psycopg.OperationalError)
            assert "release" not in str(again.value)

            await server.start()
            result = await app.arun(None, thread_id=t)
            assert result.state.steps == FINAL
            assert [(c.step, c.status) for c in await cp.list(t)][-1] == (3, "done")
        finally:
            await cp.aclose()

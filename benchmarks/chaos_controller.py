"""The chaos run's controller: drivers started and killed, threads fed to them, the plan's
faults fired at their side-effect lines, and the books kept for the checks.

Data flow::

    plan --> Controller.run --> driver subprocess (JSON lines on stdin)
               ^    |                 |  events (CHAOS ... on stdout)
               |    +--- faults ------+  SIGKILL a worker or the driver, cancel,
               |                         pg_terminate_backend
               +---- side-effect file (each node's start and done lines)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from benchmarks.chaos_driver import CPU_NODES, PREFIX, STEP, ChaosState
from benchmarks.chaos_plan import (
    GONE_WITHIN_S,
    MAX_ERROR_RESUMES,
    ChaosConfig,
    Fault,
    Figures,
    PlannedRun,
)
from engine.procs import descendants, pid_alive

ROOT = Path(__file__).resolve().parents[1]
#: The environment variable every driver (and so each of its descendants) carries.
TAG_ENV = "ENGINE_CHAOS_TAG"


# -- what the controller tracks -----------------------------------------------------------


class Line(NamedTuple):
    """One side-effect line: ``<thread> <node> <step> <index> start|done <pid>``."""

    thread: str
    node: str
    step: int
    idx: int  # the Send index (-1: none)
    phase: str
    pid: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.node, self.step, self.idx)


@dataclass
class ThreadRun:
    """One thread of the chaos run, as the controller sees it.

    Invariant: ``hold`` is set from the moment a fault that ends the attempt
    (a cancel, a driver SIGKILL, an error) is sent until the resume reports
    where it starts; no fault fires for the thread meanwhile. ``excuses``
    only grows: one per interruption that may run a node's key again.
    """

    plan: PlannedRun
    faults: deque[Fault]
    status: str = "queued"  # queued | running | done | lost
    lines: list[Line] = field(default_factory=list)
    armed_at: int = 0
    hold: bool = False
    cancel_sent: bool = False
    cpu_peers: set[str] = field(default_factory=set)  # in their cpu step as it was sent
    excuses: Counter[tuple[str, int, int]] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    final: dict[str, Any] | None = None
    started: float = 0.0

    @property
    def thread(self) -> str:
        return self.plan.thread

    def has(self, node_in: frozenset[str] | set[str], phase: str) -> bool:
        return any(x.node in node_in and x.phase == phase for x in self.lines)


@dataclass
class DriverProc:
    """A driver subprocess and what it reported."""

    number: int
    proc: asyncio.subprocess.Process
    ready: asyncio.Future[dict[str, Any]]
    reader: asyncio.Task[None] | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)  # in flight on it
    killed: bool = False  # by the controller

    @property
    def pid(self) -> int:
        return self.proc.pid


# -- the controller -------------------------------------------------------------------------


class Controller:
    """Starts drivers, feeds them threads, fires the plan's faults, keeps the books.

    Invariant: ``driver`` is the only live driver; every running thread is in
    its ``threads``. Side-effect lines are read in file order, up to
    ``_offset``, before any fault acts on them.
    """

    def __init__(
        self, cfg: ChaosConfig, work: Path, base_url: str, dsn: str | None, units: int
    ) -> None:
        self.cfg = cfg
        self.work = work
        self.side = work / "side-effects"
        self.side.touch()
        self.db = work / "checkpoints.sqlite"
        self.base_url = base_url
        self.dsn = dsn
        self.units = units
        self.tag = uuid.uuid4().hex
        self.fig = Figures()
        self.threads: dict[str, ThreadRun] = {}
        self.drivers: list[DriverProc] = []
        self.driver: DriverProc | None = None
        self.events: asyncio.Queue[tuple[DriverProc, dict[str, Any]]] = asyncio.Queue()
        self.due: list[tuple[float, Fault, ThreadRun, Line]] = []
        self.checks: list[asyncio.Task[None]] = []
        self._offset = 0
        self._partial = b""
        self.journal = (work / "journal.jsonl").open("a", encoding="utf-8")

    def log(self, **entry: Any) -> None:
        entry["t"] = round(time.time(), 3)
        self.journal.write(json.dumps(entry) + "\n")
        if self.cfg.verbose:
            print("  " + " ".join(f"{k}={v}" for k, v in entry.items() if k != "t"), flush=True)

    def input_of(self, run: PlannedRun) -> dict[str, Any]:
        return ChaosState(
            thread=run.thread, topic=run.topic, api_s=self.cfg.api_s, units=self.units
        ).model_dump(mode="json")

    # -- drivers --------------------------------------------------------------------------

    async def start_driver(self) -> DriverProc:
        number = len(self.drivers)
        log = (self.work / f"driver-{number}.log").open("ab")
        argv = [
            sys.executable,
            "-m",
            "benchmarks.chaos_driver",
            "--side",
            str(self.side),
            "--db",
            str(self.db),
            "--base-url",
            self.base_url,
        ]
        if self.dsn:
            argv += ["--dsn", self.dsn]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=ROOT,
            env={**os.environ, TAG_ENV: self.tag},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            limit=2**24,
        )
        log.close()
        driver = DriverProc(number, proc, asyncio.get_running_loop().create_future())
        driver.reader = asyncio.create_task(self._read(driver))
        self.drivers.append(driver)
        self.driver = driver
        self.fig.drivers += 1
        async with asyncio.timeout(120):
            ready = await driver.ready
        driver.samples.append(ready["sample"])
        self.log(what="driver_ready", driver=number, pid=driver.pid)
        return driver

    async def _read(self, driver: DriverProc) -> None:
        assert driver.proc.stdout is not None
        while line := await driver.proc.stdout.readline():
            text = line.decode(errors="replace")
            if not text.startswith(PREFIX):
                continue
            event = json.loads(text[len(PREFIX) :])
            if event["event"] == "ready":
                driver.ready.set_result(event)
            else:
                self.events.put_nowait((driver, event))
        if not driver.ready.done():
            driver.ready.set_exception(
                RuntimeError(f"driver {driver.number} exited before it was ready")
            )
        self.events.put_nowait((driver, {"event": "exit"}))

    async def send(self, driver: DriverProc, cmd: dict[str, Any]) -> None:
        assert driver.proc.stdin is not None
        driver.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        with contextlib.suppress(ConnectionError):
            await driver.proc.stdin.drain()

    async def run_thread(self, tr: ThreadRun, *, resume: bool) -> None:
        assert self.driver is not None
        self.driver.threads.add(tr.thread)
        cmd = {
            "op": "run",
            "thread": tr.thread,
            "backend": tr.plan.backend,
            "input": self.input_of(tr.plan),
            "resume": resume,
        }
        await self.send(self.driver, cmd)

    # -- the side-effect file ----------------------------------------------------------------

    def read_side(self) -> list[Line]:
        """New complete lines of the side-effect file, in file order."""
        with self.side.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        new = []
        for raw in complete:
            thread, node, step, index, phase, pid = raw.decode().split()
            line = Line(thread, node, int(step), int(index), phase, int(pid))
            new.append(line)
            tr = self.threads.get(thread)
            if tr is not None:
                tr.lines.append(line)
                self._trigger(tr, line)
        return new

    def _trigger(self, tr: ThreadRun, line: Line) -> None:
        if tr.hold or tr.status != "running" or not tr.faults:
            return
        fault = tr.faults[0]
        if len(tr.lines) - tr.armed_at < fault.after:
            return
        if fault.kind == "worker_kill" and not (line.node in CPU_NODES and line.phase == "start"):
            return
        tr.faults.popleft()
        tr.armed_at = len(tr.lines)
        if fault.kind in ("cancel", "driver_kill"):
            tr.hold = True
        self.due.append((time.monotonic() + fault.delay_s, fault, tr, line))

    # -- faults ---------------------------------------------------------------------------------

    async def fire_due(self) -> None:
        now = time.monotonic()
        ready = [d for d in self.due if d[0] <= now]
        self.due = [d for d in self.due if d[0] > now]
        for _, fault, tr, line in ready:
            if fault.kind == "worker_kill":
                self.kill_worker(tr, line)
            elif fault.kind == "pg_drop":
                await self.drop_connections(tr, line)
            elif fault.kind == "cancel":
                await self.cancel(tr, line)
            else:
                await self.kill_driver(tr, line)

    def kill_worker(self, tr: ThreadRun, line: Line) -> None:
        self.read_side()
        driver = self.driver
        assert driver is not None
        if line.pid not in descendants(driver.pid):
            self.log(what="worker_kill_missed", thread=tr.thread, pid=line.pid)
            return
        at = len(tr.lines) - 1 - tr.lines[::-1].index(line)  # its latest start line
        mid_call = not any(
            x.phase == "done" and x.node == line.node and x.pid == line.pid for x in tr.lines[at:]
        )
        self.pool_breaks(driver)
        tree = {line.pid, *descendants(line.pid)}  # the worker, and what its node started
        with contextlib.suppress(ProcessLookupError):
            os.kill(line.pid, signal.SIGKILL)
        self.checks.append(asyncio.create_task(self.gone(tree, f"worker {line.pid}")))
        self.fig.fired["worker_kill"] += 1
        self.fig.worker_kills_mid_call += mid_call
        self.log(what="worker_kill", thread=tr.thread, node=line.node, pid=line.pid, mid=mid_call)

    def pool_breaks(self, driver: DriverProc) -> None:
        """A worker of ``driver``'s pool is about to die: the pool breaks, and every cpu call
        then in it may run again (docs/faults.md: "at least once under faults")."""
        self.excuse_cpu_calls(self.in_cpu_step(driver))

    def in_cpu_step(self, driver: DriverProc) -> set[str]:
        """The threads of ``driver`` in their cpu step: their calls may be in its pool."""
        return {t for t in driver.threads if in_cpu_step(self.threads[t])}

    def excuse_cpu_calls(self, threads: set[str]) -> None:
        for name in threads:
            for node in CPU_NODES:
                self.threads[name].excuses[(node, STEP[node], -1)] += 1

    async def drop_connections(self, tr: ThreadRun, line: Line) -> None:
        assert self.dsn is not None
        import psycopg

        async with await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, application_name="engine-chaos-admin"
        ) as conn:
            cur = await conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND application_name LIKE 'engine-checkpoint%'"
            )
            row = await cur.fetchone()
        n = int(row[0]) if row else 0
        self.fig.fired["pg_drop"] += 1
        self.fig.backends_terminated += n
        self.log(what="pg_drop", thread=tr.thread, at=line.node + ":" + line.phase, backends=n)

    async def cancel(self, tr: ThreadRun, line: Line) -> None:
        assert self.driver is not None
        if tr.thread not in self.driver.threads:
            tr.hold = False
            return
        self.read_side()
        tr.cpu_peers = self.in_cpu_step(self.driver) - {tr.thread}
        tr.cancel_sent = True
        await self.send(self.driver, {"op": "cancel", "thread": tr.thread})
        self.log(what="cancel_sent", thread=tr.thread, at=line.node + ":" + line.phase)

    async def kill_driver(self, tr: ThreadRun, line: Line) -> None:
        driver = self.driver
        assert driver is not None
        had = descendants(driver.pid)
        driver.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(driver.pid, signal.SIGKILL)
        await exited(driver.proc)
        self.checks.append(asyncio.create_task(self.gone(had, f"driver {driver.number}")))
        self.fig.fired["driver_kill"] += 1
        self.log(
            what="driver_kill", thread=tr.thread, at=line.node + ":" + line.phase, had=sorted(had)
        )
        if driver.reader is not None:
            # Its output ends when the last holder of its stdout is gone: a process it
            # left behind would hold it (and is reported as left behind).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(driver.reader), GONE_WITHIN_S)
        await self.drain()  # what it reported before it died
        interrupted = [self.threads[t] for t in sorted(driver.threads)]
        driver.threads.clear()
        for other in interrupted:
            other.hold = True
            other.cancel_sent = False  # the kill overtook it
        await self.start_driver()
        for other in interrupted:
            self.fig.resumes["driver_kill"] += 1
            await self.run_thread(other, resume=True)

    async def gone(self, pids: set[int], whose: str) -> None:
        """Record the processes of ``pids`` still alive ``GONE_WITHIN_S`` from now."""
        deadline = time.monotonic() + GONE_WITHIN_S
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            await asyncio.sleep(0.05)
        for pid in sorted(p for p in pids if pid_alive(p)):
            self.fig.leftover_after_kills.append(f"{whose}: {describe(pid)}")
            self.log(what="leftover", whose=whose, desc=describe(pid))
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    # -- the drivers' events ------------------------------------------------------------------

    async def drain(self) -> None:
        while not self.events.empty():
            driver, event = self.events.get_nowait()
            await self.on_event(driver, event)

    async def on_event(self, driver: DriverProc, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "exit":
            if not driver.killed and driver.threads:
                raise RuntimeError(
                    f"driver {driver.number} (pid {driver.pid}) exited on its own while running "
                    f"{sorted(driver.threads)}: see {self.work}/driver-{driver.number}.log"
                )
            return
        tr = self.threads[event["thread"]]
        if kind == "resuming":
            self.excuse(tr, event["latest"])
            tr.hold = False
            return
        if driver.killed and kind != "done":
            # Reported just before the kill: the thread is resumed with the kill's others.
            if kind == "cancelled" and tr.cancel_sent:
                self.fig.fired["cancel"] += 1
            elif kind == "error":
                self.fig.errors.append(f"{tr.thread}: {event['error']}")
            tr.cancel_sent = False
            return
        driver.threads.discard(tr.thread)
        if kind == "done":
            tr.status, tr.final = "done", event["state"]
            driver.samples.append(event["sample"])
            if tr.cancel_sent:
                self.fig.cancels_late += 1
            self.log(what="done", thread=tr.thread, s=round(time.monotonic() - tr.started, 2))
        elif kind == "cancelled":
            self.read_side()
            if in_cpu_step(tr):
                # The cancel killed the workers running its cpu calls, breaking the
                # pool: the calls of the threads in their cpu step meanwhile may run
                # again (its own: as its resume's checkpoint says).
                peers = tr.cpu_peers | self.in_cpu_step(driver)
                self.excuse_cpu_calls(peers - {tr.thread})
            if tr.cancel_sent:
                self.fig.fired["cancel"] += 1
            tr.cancel_sent = False
            self.fig.resumes["cancel"] += 1
            await self.run_thread(tr, resume=True)
        elif kind == "error":
            tr.errors.append(event["error"])
            self.fig.errors.append(f"{tr.thread}: {event['error']}")
            self.log(what="error", thread=tr.thread, error=event["traceback"])
            if len(tr.errors) > MAX_ERROR_RESUMES:
                tr.status = "lost"
                return
            tr.hold = True
            self.fig.resumes["error"] += 1
            await self.run_thread(tr, resume=True)

    def excuse(self, tr: ThreadRun, latest: dict[str, Any] | None) -> None:
        """What the interruption before this resume may run again: the tasks of the step it
        stopped in, less those whose writes were saved as pending writes."""
        self.log(what="resuming", thread=tr.thread, latest=latest)
        if latest is None or latest["status"] == "done":
            return
        pending = {tuple(p) for p in latest["pending"]}
        for node, index in latest["tasks"]:
            if (node, index) not in pending:
                tr.excuses[(node, latest["step"], index)] += 1

    # -- the run ------------------------------------------------------------------------------

    async def run(self, plan: list[PlannedRun]) -> None:
        for run in plan:
            self.threads[run.thread] = ThreadRun(run, deque(run.faults))
            self.fig.planned.update(f.kind for f in run.faults)
            self.fig.backends[run.backend] += 1
        self.fig.runs = len(plan)
        queue = deque(self.threads.values())
        await self.start_driver()
        running: list[ThreadRun] = []
        while queue or running:
            while queue and len(running) < self.cfg.concurrency:
                tr = queue.popleft()
                tr.status, tr.started = "running", time.monotonic()
                running.append(tr)
                await self.run_thread(tr, resume=False)
            self.read_side()
            await self.fire_due()
            await self.drain()
            for tr in list(running):
                if tr.status != "running":
                    running.remove(tr)
                elif time.monotonic() - tr.started > self.cfg.thread_timeout_s:
                    await self.dump_stuck()
                    raise RuntimeError(
                        f"thread {tr.thread} did not finish in {self.cfg.thread_timeout_s} s "
                        f"(see {self.work}/journal.jsonl and the driver logs)"
                    )
            await asyncio.sleep(0.005)
        await self.stop_driver()
        await asyncio.gather(*self.checks)
        for driver in self.drivers:  # output held open by a process left behind
            if driver.reader is not None and not driver.reader.done():
                driver.reader.cancel()

    async def stop_driver(self) -> None:
        """Close the last driver's input: it exits, and so must everything it started."""
        driver = self.driver
        if driver is None:
            return
        had = descendants(driver.pid)
        assert driver.proc.stdin is not None
        driver.proc.stdin.close()
        await exited(driver.proc, timeout=60.0)
        self.checks.append(asyncio.create_task(self.gone(had, f"driver {driver.number} (exited)")))
        self.driver = None

    async def dump_stuck(self) -> None:
        """Where a stuck driver stands: its processes' states, its threads' stacks (in its log)."""
        driver = self.driver
        if driver is None or driver.proc.returncode is not None:
            return
        for pid in sorted(descendants(driver.pid)):
            state = _state_of(pid)
            self.log(what="stuck_descendant", pid=pid, state=state, desc=describe(pid))
        with contextlib.suppress(OSError):
            os.kill(driver.pid, signal.SIGUSR1)
        await asyncio.sleep(1.0)

    async def abort(self) -> None:
        """After a failure: kill the live driver and everything under it."""
        if self.driver is not None and self.driver.proc.returncode is None:
            for pid in [self.driver.pid, *descendants(self.driver.pid)]:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            await exited(self.driver.proc)


def in_cpu_step(tr: ThreadRun) -> bool:
    """Whether ``tr`` has started its cpu step and not yet ended it (compile not started)."""
    return tr.has(CPU_NODES, "start") and not tr.has({"compile"}, "start")


async def exited(proc: asyncio.subprocess.Process, timeout: float = 10.0) -> None:
    """Wait until ``proc`` has exited. Not ``proc.wait()``: that also waits until its pipes
    close, which a process it left behind (holding its stdout) would put off."""
    async with asyncio.timeout(timeout):
        while proc.returncode is None:
            await asyncio.sleep(0.01)


def describe(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
    except (OSError, IndexError):
        return f"pid {pid}"
    return f"pid {pid} (ppid {ppid}): {cmd[:80]}"


def _state_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def tagged(tag: str) -> list[int]:
    """Live processes anywhere on this host whose environment carries ``tag``."""
    needle = f"{TAG_ENV}={tag}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            env = Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0") and pid_alive(int(name)):
            found.append(int(name))
    return found

"""The chaos run's graph and its driver process (``benchmarks/chaos.py`` starts and kills them).

The graph is the seed workload's shape (``workloads/seed.py``): four agents,
each an API call to the local OpenAI-compatible server then real CPU work
on its answer, joined by ``compile``::

    step 0: ceo_call  coo_call  cfo_call  cto_call      (io: HTTP to the server)
    step 1: ceo_process ... cto_process                 (cpu: workloads.genai.process)
    step 2: compile                                     (inline)

Every node appends one line to the side-effect file when it starts and one
when it is done (``O_APPEND``, one ``write`` per line, so lines from many
processes never interleave)::

    <thread> <node> <step> <index> start|done <pid>

A fresh thread runs each node in exactly one step (``STEP``); the chaos run
checks that against the checkpoints. A cpu node also starts a helper
process of its own (``sleep``) for the length of its work, so a killed call
leaves a grandchild behind unless the engine kills the worker's whole tree.

The driver (``python -m benchmarks.chaos_driver ...``, from the repository
root) is long-lived: it reads one JSON command per line on stdin and writes
one event per line on stdout, prefixed with ``CHAOS``:

- ``{"op": "run", "thread": t, "backend": "sqlite"|"postgres", "input": {...},
  "resume": bool}``: run the thread (``resume``: continue it from its latest
  checkpoint, reported first in a ``resuming`` event; a thread with no
  checkpoint yet starts from ``input``). Answers ``done`` (final state and a
  resource sample), ``cancelled`` or ``error``.
- ``{"op": "cancel", "thread": t}``: cancel that thread's ``arun`` task.
- end of input: close the checkpointers and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from engine import END, START, CompiledGraph, Graph
from engine.checkpoint import Checkpointer, PostgresCheckpointer, SqliteCheckpointer
from engine.lanes.pool import default_executor, warm
from engine.procs import descendants
from workloads.seed import AGENTS, SeedState, analyse, call_api, compile_report

#: Prefix of the driver's protocol lines on stdout.
PREFIX = "CHAOS "

#: The step each node runs in on a fresh thread (the graph is a DAG of depth 3).
STEP: dict[str, int] = {
    **{f"{role}_call": 0 for role in AGENTS},
    **{f"{role}_process": 1 for role in AGENTS},
    "compile": 2,
}
#: Nodes that run in the process pool.
CPU_NODES = frozenset(f"{role}_process" for role in AGENTS)
#: Steps a fresh thread saves: 0..3, the last one "done".
LAST_STEP = 3


class ChaosState(SeedState):
    """The seed state plus the thread it belongs to (for the side-effect lines)."""

    thread: str = ""


def note(side: str, thread: str, node: str, phase: str) -> None:
    """Append one side-effect line: one ``write`` on an ``O_APPEND`` descriptor."""
    line = f"{thread} {node} {STEP[node]} -1 {phase} {os.getpid()}\n".encode()
    fd = os.open(side, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


async def call_node(role: str, base_url: str, side: str, state: ChaosState) -> dict[str, Any]:
    """The agent's API call (real HTTP to the server), recorded when started and done."""
    node = f"{role}_call"
    note(side, state.thread, node, "start")
    update = await call_api(role, base_url, state)
    note(side, state.thread, node, "done")
    return update


def process_node(role: str, side: str, state: ChaosState) -> dict[str, Any]:
    """Real CPU work on the answer, with a helper process alive for as long as it runs."""
    node = f"{role}_process"
    note(side, state.thread, node, "start")
    # A grandchild of the driver: one left behind lives until the end of the run,
    # where the controller finds it.
    helper = subprocess.Popen(["sleep", "3600"])
    try:
        update = analyse(role, state)
    finally:
        helper.kill()
        helper.wait()
    note(side, state.thread, node, "done")
    return update


def compile_node(side: str, state: ChaosState) -> dict[str, Any]:
    note(side, state.thread, "compile", "start")
    update = compile_report(state)
    note(side, state.thread, "compile", "done")
    return update


def build(base_url: str, side: str) -> Graph:
    """The seed graph's shape with recorded side effects (uncompiled)."""
    g = Graph(ChaosState)
    for role in AGENTS:
        g.add_node(f"{role}_call", functools.partial(call_node, role, base_url, side), lane="io")
        g.add_node(f"{role}_process", functools.partial(process_node, role, side), lane="cpu")
        g.add_edge(START, f"{role}_call")
        g.add_edge(f"{role}_call", f"{role}_process")
    g.add_node("compile", functools.partial(compile_node, side), lane="inline")
    g.add_edge([f"{role}_process" for role in AGENTS], "compile")
    g.add_edge("compile", END)
    return g


# -- the driver process ---------------------------------------------------------------


def sample() -> dict[str, Any]:
    """This process's resident memory, open descriptors, threads and live descendants."""
    rss_kb = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    return {
        "rss_mb": round(rss_kb / 1024, 1),
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
        "children": len(descendants(os.getpid())),
    }


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(PREFIX + json.dumps(event) + "\n")
    sys.stdout.flush()


class Driver:
    """Runs the threads the controller sends, one ``arun`` task each.

    Invariant: ``tasks`` holds the task of every thread this driver is running,
    removed when it reports done, cancelled or error.
    """

    def __init__(self, apps: dict[str, CompiledGraph], cps: dict[str, Checkpointer]) -> None:
        self.apps = apps
        self.cps = cps
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def handle(self, cmd: dict[str, Any]) -> None:
        thread = cmd["thread"]
        if cmd["op"] == "run":
            self.tasks[thread] = asyncio.create_task(self._run(cmd))
        elif cmd["op"] == "cancel":
            task = self.tasks.get(thread)
            if task is not None and not task.done():
                task.cancel()
        else:
            raise ValueError(f"unknown command {cmd!r}")

    async def _run(self, cmd: dict[str, Any]) -> None:
        thread, backend = cmd["thread"], cmd["backend"]
        app, cp = self.apps[backend], self.cps[backend]
        try:
            arg: ChaosState | None = ChaosState(**cmd["input"])
            if cmd["resume"]:
                latest = await cp.get_latest(thread)
                emit(
                    {
                        "event": "resuming",
                        "thread": thread,
                        "latest": None
                        if latest is None
                        else {
                            "step": latest.step,
                            "status": latest.status,
                            "tasks": [[t.node, t.index] for t in latest.next_tasks],
                            "pending": [[w.node, w.index] for w in latest.pending_writes],
                        },
                    }
                )
                if latest is not None:
                    arg = None
            result = await app.arun(arg, thread_id=thread)
        except asyncio.CancelledError:
            emit({"event": "cancelled", "thread": thread})
        except Exception as exc:
            emit(
                {
                    "event": "error",
                    "thread": thread,
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(),
                }
            )
        else:
            state = result.state.model_dump(mode="json")
            emit({"event": "done", "thread": thread, "state": state, "sample": sample()})
        finally:
            self.tasks.pop(thread, None)


async def serve(args: argparse.Namespace) -> None:
    graph = build(args.base_url, args.side)
    cps: dict[str, Checkpointer] = {"sqlite": SqliteCheckpointer(args.db)}
    if args.dsn:
        cps["postgres"] = PostgresCheckpointer(args.dsn, pool_size=2)
    apps = {name: graph.compile(checkpointer=cp) for name, cp in cps.items()}
    for cp in cps.values():
        await cp.setup()
    await asyncio.to_thread(warm, default_executor())
    driver = Driver(apps, cps)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    emit({"event": "ready", "pid": os.getpid(), "sample": sample()})
    try:
        while line := await reader.readline():
            driver.handle(json.loads(line))
        if driver.tasks:  # the controller closes stdin once every thread is done
            await asyncio.gather(*driver.tasks.values(), return_exceptions=True)
    finally:
        for cp in cps.values():
            with contextlib.suppress(Exception):
                await cp.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A chaos-run driver (started by chaos.py).")
    parser.add_argument("--side", required=True, help="the side-effect file")
    parser.add_argument("--db", required=True, help="the SQLite checkpoint file")
    parser.add_argument("--dsn", default="", help="the PostgreSQL DSN (none: SQLite only)")
    parser.add_argument("--base-url", required=True, help="the LLM server's API root")
    args = parser.parse_args(argv)
    # The controller asks for every thread's stack (SIGUSR1) when a thread is stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # The cpu nodes are defined here (__main__ when run with -m): cloudpickle
    # sends them to the workers by value. uvloop when installed, as app.run uses.
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args))


if __name__ == "__main__":
    main()

"""Nodes and objects that really break a worker process, for the fault tests.

Module-level, so workers can run them: the fault tests register this module
with cloudpickle to travel by value (workers cannot import the tests
package). Every node takes its Send payload or the state as its last
argument; side effects are lines appended to a file, so a test can count
how many times a node finished.
"""

from __future__ import annotations

import ctypes
import operator
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel


class FaultState(BaseModel):
    items: Annotated[list[str], operator.add] = []
    pids: Annotated[list[int], operator.add] = []
    log: Annotated[list[str], operator.add] = []
    total: int = 0


# -- side effects ------------------------------------------------------------


def note(path: str, line: str) -> None:
    """Append one line (atomic for short lines with O_APPEND): the side-effect counter."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def lines(path: str | Path) -> list[str]:
    p = Path(path)
    return p.read_text(encoding="utf-8").splitlines() if p.exists() else []


def publish_pid(path: str) -> None:
    """Write this process's pid to ``path`` atomically (a reader never sees half of it)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    Path(tmp).write_text(str(os.getpid()))
    os.replace(tmp, path)


def burn(seconds: float) -> int:
    """Pure-Python CPU work for about ``seconds`` of wall time."""
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        for i in range(1000):
            x = (x + i * i) % 1_000_003
    return x


# -- crashing nodes ----------------------------------------------------------


def segfault(arg: Any) -> dict[str, Any]:
    ctypes.string_at(0)  # reads address 0: SIGSEGV
    return {}


def hard_exit(arg: Any) -> dict[str, Any]:
    os._exit(3)


def sys_exit(arg: Any) -> dict[str, Any]:
    sys.exit(4)


def stall(pid_file: str, arg: Any) -> dict[str, Any]:
    """Publish this worker's pid, then compute for a minute (until killed)."""
    publish_pid(pid_file)
    burn(60.0)
    return {"items": ["stalled to the end"]}


def exit_after_returning(delay: float, arg: Any) -> dict[str, Any]:
    """Compute a little, deliver a result, then take the worker down ``delay`` s later.

    The computing keeps this worker busy while the step's other calls start
    on the other workers, so the death hits a worker that runs nothing.
    """
    burn(0.3)

    def later() -> None:
        time.sleep(delay)
        os._exit(7)

    threading.Thread(target=later, daemon=True).start()
    return {"items": ["delivered"]}


def return_payload(arg: Any) -> dict[str, Any]:
    """Return the Send payload as an update (for results that fail to travel)."""
    return {"items": [arg]}


def touch_payload(arg: Any) -> dict[str, Any]:
    """Accept a payload and ignore it (for arguments that fail to travel)."""
    return {"items": ["ran"]}


def not_a_dict(arg: Any) -> Any:
    return ["not", "a", "dict"]


def sibling(path: str, name: str, seconds: float, arg: Any) -> dict[str, Any]:
    """An innocent neighbour: computes, then records that it finished."""
    burn(seconds)
    note(path, name)
    return {"items": [name], "pids": [os.getpid()]}


async def io_sibling(path: str, name: str, seconds: float, arg: Any) -> dict[str, Any]:
    import asyncio

    await asyncio.sleep(seconds)
    note(path, name)
    return {"items": [name]}


# -- objects that fail at one end of the process boundary ---------------------


def _raise_on_load(where: str) -> Any:
    raise RuntimeError(f"refuses to be unpickled {where}")


def _exit_on_load(code: int) -> Any:
    os._exit(code)


def _raise_on_load_in_driver(driver_pid: int) -> Any:
    """Loads fine in the worker that built it; refuses in the driver process."""
    if os.getpid() == driver_pid:
        raise RuntimeError("refuses to be unpickled in the driver")
    return UnpicklableInDriver(driver_pid)


class FailsToPickle:
    """``pickle.dumps`` raises (in whichever process pickles it)."""

    def __reduce__(self) -> Any:
        raise TypeError("FailsToPickle refuses to be pickled")


class FailsToUnpickle:
    """Pickles fine; ``pickle.loads`` raises."""

    def __reduce__(self) -> Any:
        return (_raise_on_load, ("in the worker",))


class CrashesOnUnpickle:
    """Pickles fine; ``pickle.loads`` kills the process (os._exit(5))."""

    def __reduce__(self) -> Any:
        return (_exit_on_load, (5,))


class CrashesOnPickle:
    """``pickle.dumps`` kills the process (os._exit(6)): a result that crashes on the way out."""

    def __reduce__(self) -> Any:
        os._exit(6)


class UnpicklableInDriver:
    """Round-trips in a worker, but cannot be unpickled in the driver whose pid it holds."""

    def __init__(self, driver_pid: int) -> None:
        self.driver_pid = driver_pid

    def __reduce__(self) -> Any:
        return (_raise_on_load_in_driver, (self.driver_pid,))


def return_unpicklable_in_driver(driver_pid: int, arg: Any) -> dict[str, Any]:
    return {"items": [UnpicklableInDriver(driver_pid)]}


def return_fails_to_pickle(arg: Any) -> dict[str, Any]:
    return {"items": [FailsToPickle()]}


def return_crashes_on_pickle(arg: Any) -> dict[str, Any]:
    return {"items": [CrashesOnPickle()]}


def kill_self(arg: Any) -> dict[str, Any]:
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


def stall_once(flag: str, pid_file: str, side: str, name: str, arg: Any) -> dict[str, Any]:
    """First call (``flag`` absent): create it, publish the pid, compute until killed.

    Later calls finish at once. Records the finish in ``side`` either way.
    """
    if not os.path.exists(flag):
        Path(flag).touch()
        publish_pid(pid_file)
        burn(60.0)
    note(side, f"{name} {os.getpid()}")
    return {"items": [name]}


def fail_until(count_file: str, failures: int, side: str, name: str, arg: Any) -> dict[str, Any]:
    """Raise ConnectionError for the first ``failures`` calls (counted in a file), then succeed."""
    n = len(lines(count_file))
    note(count_file, str(n))
    if n < failures:
        raise ConnectionError(f"{name}: transient failure {n + 1}")
    note(side, f"{name} {os.getpid()}")
    return {"items": [name]}


async def async_fail_until(
    count_file: str, failures: int, side: str, name: str, arg: Any
) -> dict[str, Any]:
    return fail_until(count_file, failures, side, name, arg)


def step_node(side: str, name: str, seconds: float, arg: Any) -> dict[str, Any]:
    """A well-behaved cpu node: computes, then records the finish with its pid."""
    burn(seconds)
    note(side, f"{name} {os.getpid()}")
    return {"items": [name]}


async def async_step_node(side: str, name: str, arg: Any) -> dict[str, Any]:
    import asyncio

    await asyncio.sleep(0.01)
    note(side, f"{name} {os.getpid()}")
    return {"items": [name]}


def durable_graph(side: str, flag: str, pid_file: str) -> Any:
    """a(io) -> b, c (cpu) -> d (cpu; stalls on its first call) -> e (io).

    Steps: 0 a; 1 b, c; 2 d; 3 e. A driver killed while d stalls has
    checkpointed steps 0 and 1; a resume runs d and e only.
    """
    import functools

    from engine import END, START, Graph

    g = Graph(FaultState)
    g.add_node("a", functools.partial(async_step_node, side, "a"))
    g.add_node("b", functools.partial(step_node, side, "b", 0.05), lane="cpu")
    g.add_node("c", functools.partial(step_node, side, "c", 0.05), lane="cpu")
    g.add_node("d", functools.partial(stall_once, flag, pid_file, side, "d"), lane="cpu")
    g.add_node("e", functools.partial(async_step_node, side, "e"))
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("a", "c")
    g.add_edge(["b", "c"], "d")
    g.add_edge("d", "e")
    g.add_edge("e", END)
    return g


def interruptible_graph(side: str, flag: str, pid_file: str) -> Any:
    """Step 0: ``fast`` (io, finishes at once) beside ``st`` (cpu, stalls on its first call)."""
    import functools

    from engine import START, Graph

    g = Graph(FaultState)
    g.add_node("fast", functools.partial(async_step_node, side, "fast"))
    g.add_node("st", functools.partial(stall_once, flag, pid_file, side, "st"), lane="cpu")
    g.add_edge(START, "fast")
    g.add_edge(START, "st")
    return g


#: A driver process for the durability tests: builds a graph from this module,
#: runs (``start``) or resumes (``resume``) thread "t" on a SQLite file, and
#: prints the final state as one JSON line after "RESULT ". ``sync`` runs it
#: through ``invoke`` (``run_sync``: the CLI's path, with its signal handling).
DRIVER = """
import asyncio, json, sys
import cloudpickle
import tests.crashers as C
cloudpickle.register_pickle_by_value(C)
from engine.checkpoint import SqliteCheckpointer

builder, side, flag, pid_file, db, how, entry = sys.argv[1:8]
graph = getattr(C, builder)(side, flag, pid_file)
app = graph.compile(checkpointer=SqliteCheckpointer(db))
arg = {} if how == "start" else None
if entry == "sync":
    state = app.invoke(arg, thread_id="t")
else:
    state = asyncio.run(app.ainvoke(arg, thread_id="t"))
print("RESULT " + json.dumps(state.model_dump(mode="json")), flush=True)
"""


def exit_when_started(started: str, arg: Any) -> dict[str, Any]:
    """Deliver a result, then take this worker down once ``started`` exists.

    ``started`` is published by the next call this worker runs
    (``start_then_burn``): the worker dies *after* delivering this call's
    result and *while* it runs the next one, which loky blames.
    """

    def later() -> None:
        deadline = time.monotonic() + 30.0
        while not os.path.exists(started) and time.monotonic() < deadline:
            time.sleep(0.002)
        os._exit(7)

    threading.Thread(target=later, daemon=True).start()
    return {"items": ["delivered"], "pids": [os.getpid()]}


def start_then_burn(started: str, side: str, name: str, seconds: float, arg: Any) -> dict[str, Any]:
    """Publish this worker's pid in ``started``, compute, then record the finish."""
    publish_pid(started)
    burn(seconds)
    note(side, f"{name} {os.getpid()}")
    return {"items": [name], "pids": [os.getpid()]}


def crash_then_fail(count_file: str, side: str, name: str, arg: Any) -> dict[str, Any]:
    """Call 1 kills its worker, call 2 raises ConnectionError, call 3 succeeds (file-counted)."""
    n = len(lines(count_file))
    note(count_file, str(n))
    if n == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    if n == 1:
        raise ConnectionError(f"{name}: transient failure")
    note(side, f"{name} {os.getpid()}")
    return {"items": [name]}


# -- processes a node starts ---------------------------------------------------------


def start_processes(kind: str) -> list[Any]:
    """Start processes of this node's own: a ``Popen``, or a nested pool with busy workers.

    Returns what keeps them referenced (the Popen, the pool and its futures).
    """
    if kind == "popen":
        return [subprocess.Popen(["sleep", "60"])]
    if kind == "popen-session":  # a child in a session of its own: out of our process group
        return [subprocess.Popen(["sleep", "60"], start_new_session=True)]
    if kind == "stdlib":
        from concurrent.futures import ProcessPoolExecutor

        pool: Any = ProcessPoolExecutor(2)
    elif kind == "loky":
        import loky

        pool = loky.ProcessPoolExecutor(2)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    futures = [pool.submit(time.sleep, 60) for _ in range(2)]
    deadline = time.monotonic() + 30
    while len(pool._processes) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    return [pool, futures]


def spawn_and_stall(kind: str, ready: str, arg: Any) -> dict[str, Any]:
    """Start processes (``start_processes``), publish this worker's pid, compute until stopped."""
    keep = start_processes(kind)
    publish_pid(ready)
    burn(60.0)
    return {"items": [f"survived {len(keep)}"]}


def grow(step_mb: int, steps: int, side: str, arg: Any) -> dict[str, Any]:
    """Allocate ``step_mb`` MB at a time (touched), computing a little between steps.

    Records in ``side`` that it reached the end (a memory limit should stop
    it before); returns how much it held.
    """
    held = []
    for _ in range(steps):
        held.append(bytearray(step_mb * 1_000_000))  # zero-filled: every page touched
        burn(0.01)
    note(side, f"grew to {step_mb * steps} MB")
    return {"items": [f"held {sum(len(b) for b in held) // 1_000_000} MB"]}


# -- pools made by the user ------------------------------------------------------------


def limit_address_space(limit: int) -> None:
    """A pool initializer: cap this worker's address space (RLIMIT_AS, soft)."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def address_space_limit(arg: Any) -> dict[str, Any]:
    """Report this worker's RLIMIT_AS (what its pool's initializer set), and its pid."""
    import resource

    return {"total": resource.getrlimit(resource.RLIMIT_AS)[0], "pids": [os.getpid()]}


def missing_model() -> None:
    """A pool initializer that always fails, as one loading a missing file would."""
    raise FileNotFoundError("no model file at /models/tokenizer.bin")


# -- large results -----------------------------------------------------------------


def large_text(size: int, arg: Any) -> dict[str, Any]:
    """A result of ``size`` bytes: one ASCII string, built here."""
    return {"log": ["x" * size]}


def many_strings(n: int, arg: Any) -> dict[str, Any]:
    """A result of ``n`` short distinct strings."""
    return {"items": [f"item-{i:012d}" for i in range(n)]}


def kill_self_when(ready: str, delay: float, arg: Any) -> dict[str, Any]:
    """SIGKILL this worker (breaking the pool) ``delay`` s after ``ready`` exists."""
    deadline = time.monotonic() + 30
    while not os.path.exists(ready) and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


def start_daemon_then_burn(ready: str, seconds: float, arg: Any) -> dict[str, Any]:
    """Start ``sleep 60`` through a shell that exits at once (so it is not this worker's
    child, but stays in its process group), publish its pid in ``ready``, compute."""
    out = subprocess.run(
        ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    tmp = f"{ready}.tmp"
    Path(tmp).write_text(out.stdout.strip())
    os.replace(tmp, ready)
    burn(seconds)
    return {"items": ["daemon"]}

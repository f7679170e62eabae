"""What a worker process of the cpu lane runs: its entry point, its marker, its guard.

Imported inside worker processes, so it stays small and imports nothing of
the engine but ``engine.procs``, ``engine.streaming`` (standard library only)
and its light siblings (``measure``, ``frames``, ``channel``: the stream
writer of a streamed run's calls).
Data flow of a cpu-lane call (``process.py`` has the driver's side)::

    driver: frames.request(fn, init, [arg blob, ...])  --bytes-->  worker:
                run_marked("calls", payload, marker)    marker <- its pid (O_EXCL)
                  run_calls: load fn once, each arg -> measure.call_with_init
                  -> frames.encode([Measured, ...])
                  (no worker_init, no span: _run_lean times the calls in one loop,
                  and while each returns plain data -> frames.encode_columns)
            frames.decode(frame) -> a Decoded per call  <--bytes--  marker removed

Pickling happens in our code, not the executor's, so (a) any
``concurrent.futures.Executor`` works (loky, stdlib, Dask), (b) functions and
state classes from the user's ``__main__`` travel by value, (c) a payload
that cannot be pickled fails in the driver before anything is submitted, and
(d) the bytes in and out are measured exactly.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from ..context import enter, from_wire, leave
from ..otel import worker_span
from ..procs import become_group_leader, hostname, kill_group, kill_own_tree
from ..streaming import UNSTREAMED, reset_stream, set_stream
from .channel import worker_stream
from .frames import SPILLED, encode, encode_columns, is_plain
from .measure import (
    OK,
    PAYLOAD,
    Measured,
    call_with_init,
    failed,
    load_fn,
    queued_s,
    raised,
    returned,
)

#: What ``run_marked`` returns for a call the driver took back before it started.
NOT_RUN = b""


def run_calls(payload: bytes) -> bytes:
    """Worker entry point of the cpu lane: the calls of ``frames.request``, one frame back.

    Runs the calls one after another (one, for a lone call; a chunk's worth
    for a batch), each measured on its own: a call that fails, or whose
    argument or result cannot cross, fails alone, with its own timing and
    byte counts. A function that cannot be unpickled fails them all, each
    with the same error. Where the calls run (pid, thread, host) is looked up
    once, and the time this thread waited on a run queue is read once for
    them all (``frames.decode`` shares it out by wall time).
    """
    fn_bytes, init, blobs, stream, wire, headers = pickle.loads(payload)
    token = enter(from_wire(wire)) if wire is not None else None
    try:
        if stream is None:
            # Nobody streams (``worker_stream(None)``'s case, without its context
            # manager: every lone cpu call pays for this): the node's writer drops
            # what it is given, and a node can tell it runs in a run.
            unstreamed = set_stream(UNSTREAMED)
            try:
                return _run_calls(fn_bytes, init, blobs, _no_stream, headers)
            finally:
                reset_stream(unstreamed)
        with worker_stream(stream) as at:  # get_stream_writer() sends to the driver
            return _run_calls(fn_bytes, init, blobs, at, headers)
    finally:
        if token is not None:
            leave(token)


def _no_stream(i: int) -> None:
    """``at`` of a run nobody streams: nothing to say which call of a chunk runs."""


def _run_calls(
    fn_bytes: bytes,
    init: Any,
    blobs: list[bytes] | bytes,
    at: Callable[[int], None],
    headers: dict[str, str] | None,
) -> bytes:
    start = time.time()
    try:
        fn = load_fn(fn_bytes)
    except BaseException as exc:
        bad = failed(exc, start, f"could not unpickle the node's function: {exc}", PAYLOAD)
        return encode([(bad, size) for _, size, _ in _arguments(blobs)])
    where = (os.getpid(), threading.get_native_id(), hostname())
    queued0 = queued_s()
    items = enumerate(_arguments(blobs))
    results: list[tuple[Measured, int]] = []
    if init is None and headers is None:
        done = _run_lean(fn, items, at, where)
        if isinstance(done, tuple):  # every call returned plain data
            return encode_columns(where, *done, queued=max(0.0, queued_s() - queued0))
        results = done  # the calls so far, then the rest the general way
    for i, (arg, size, problem) in items:
        at(i)  # the stream knows which call of a chunk runs
        if problem is not None:
            measured = failed(
                problem, time.time(), f"could not unpickle its input: {problem}", PAYLOAD
            )
        else:
            if headers is None:  # no span to nest under: no span of its own either
                measured = call_with_init(fn, arg, init, where=where)
            else:
                with worker_span(headers):  # (OpenTelemetry's, when installed: engine.otel)
                    measured = call_with_init(fn, arg, init, where=where)
        results.append((measured, size))
    return encode(results, queued=max(0.0, queued_s() - queued0))


#: A chunk's calls as ``encode_columns`` takes them: starts, ends, CPU seconds, values, sizes.
Columns = tuple[list[float], list[float], list[float], list[Any], list[int]]


def _run_lean(
    fn: Callable[..., Any],
    items: Iterator[tuple[int, tuple[Any, int, BaseException | None]]],
    at: Callable[[int], None],
    where: tuple[int, int, str],
) -> Columns | list[tuple[Measured, int]]:
    """The calls of a chunk with nothing around them (no ``worker_init``, no span), timed
    in one tight loop, kept as columns while each returns plain data (``encode_columns``).

    The thread's CPU clock is read as a window's first call starts and after the call
    that ends ``CPU_WINDOW_S`` or more after that, not twice per call (a system call of
    ~0.7 us each on a VM; a fan-out of 0.1 ms calls lost 2-3% of its throughput to
    them): the calls of a window share its CPU by their wall times, each at most its
    own wall time. A long call that opens a window has its CPU to itself; one that
    follows short calls shares with them. The window's CPU includes the loop's own
    handling between its calls (about a microsecond a call, and unpickling the next
    call's argument when arguments travel one pickle each), never unpickling a chunk
    of plain arguments (one pickle, loaded as the first is fetched).

    At the first call that does not return plain data (it raised, its input did not
    unpickle, it returned anything else, or a dict it returned before), the calls so
    far become rows, that one last: the caller goes on with the rest of ``items`` the
    general way.
    """
    starts: list[float] = []
    ends: list[float] = []
    cpus: list[float] = []
    values: list[Any] = []
    sizes: list[int] = []
    seen: set[int] = set()  # the dicts returned (alive in ``values``, so ids are unique)
    clock, cpu_clock = time.time, time.thread_time
    window = 0  # the first call of the open window
    read: float | None = None  # the CPU clock as the window's first call started
    for i, (arg, size, problem) in items:
        at(i)
        if problem is not None:
            if read is not None:
                _share(cpus, starts, ends, window, cpu_clock() - read)
            last = failed(problem, clock(), f"could not unpickle its input: {problem}", PAYLOAD)
            break
        if read is None:  # a window opens with its first call (the chunk's unpickling,
            read = cpu_clock()  # and the worker's work between windows, are not its)
        start = clock()
        try:
            value = fn(arg)
        except BaseException as exc:
            cpu0 = _close_with(cpus, starts, ends, window, read, start, clock(), cpu_clock())
            last = raised(exc, where, start, cpu0)
            break
        end = clock()
        if not is_plain(value) or id(value) in seen:
            cpu0 = _close_with(cpus, starts, ends, window, read, start, end, cpu_clock())
            last = returned(value, where, start, cpu0)  # (an awaitable is run here)
            break
        if type(value) is dict:
            seen.add(id(value))
        starts.append(start)
        ends.append(end)
        cpus.append(0.0)
        values.append(value)
        sizes.append(size)
        if end - starts[window] >= CPU_WINDOW_S:
            _share(cpus, starts, ends, window, cpu_clock() - read)
            window, read = len(starts), None
    else:
        if read is not None:
            _share(cpus, starts, ends, window, cpu_clock() - read)
        return starts, ends, cpus, values, sizes
    pid, tid, host = where
    rows = [
        (Measured(OK, pid, tid, host, s, e, c, 0.0, None, "", "", "", v), n)
        for s, e, c, v, n in zip(starts, ends, cpus, values, sizes, strict=True)
    ]
    rows.append((last, size))
    return rows


#: Back-to-back calls of a chunk share the CPU of a window this long (``_run_lean``).
CPU_WINDOW_S = 0.001


def _share(cpus: list[float], starts: list[float], ends: list[float], lo: int, cpu: float) -> None:
    """The CPU of a window (calls ``lo`` on) shared by the calls' wall times, each at most
    its own wall time."""
    n = len(cpus) - lo
    if n <= 0:
        return
    if n == 1:
        cpus[lo] = min(max(0.0, cpu), max(0.0, ends[lo] - starts[lo]))
        return
    walls = [max(0.0, e - s) for s, e in zip(starts[lo:], ends[lo:], strict=True)]
    total = sum(walls)
    cpu = max(0.0, cpu)
    for j, wall in enumerate(walls, lo):
        cpus[j] = min(wall, cpu * wall / total) if total > 0 else cpu / n


def _close_with(
    cpus: list[float],
    starts: list[float],
    ends: list[float],
    lo: int,
    read: float,
    start: float,
    end: float,
    now: float,
) -> float:
    """Close the open window with one more call (``start``-``end``, not kept as a column:
    it fails or leaves the lean path) whose CPU clock reading is ``now``; the CPU clock
    value that call's measurement counts from (``measure.raised``/``returned`` read the
    clock again at their end), so that it is charged its share of the window."""
    wall = max(0.0, end - start)
    before = sum(max(0.0, e - s) for s, e in zip(starts[lo:], ends[lo:], strict=True))
    cpu = max(0.0, now - read)
    mine = cpu if before + wall <= 0 else min(wall, cpu * wall / (before + wall))
    _share(cpus, starts, ends, lo, cpu - mine)
    return now - mine


def _arguments(blobs: list[bytes] | bytes) -> Iterator[tuple[Any, int, BaseException | None]]:
    """Each call's argument, its share of the input's bytes, and why it could not be
    unpickled (None: it was). ``blobs``: one pickle per call, or one of them all."""
    if isinstance(blobs, bytes):  # plain data (cpu.pickled_together): it loads
        args = pickle.loads(blobs)
        size = len(blobs) // max(1, len(args))
        for arg in args:
            yield arg, size, None
        return
    for blob in blobs:
        try:
            yield pickle.loads(blob), len(blob), None
        except BaseException as exc:
            yield None, len(blob), exc


def run_marked(entry: Callable[[bytes], bytes] | str, payload: bytes, marker: str | None) -> bytes:
    """Run ``entry(payload)`` with the worker's pid in the marker ``marker`` meanwhile.

    ``entry`` is a function, or the name of one of this module's entry
    points (``ENTRY_NAMES``): a name costs the pool's pickler less than a
    function, and every cpu-lane call pays for it.

    The marker says to the driver which worker process runs which call, which
    is how it blames a crash on the right call and kills the right worker on
    a timeout. Both sides create it exclusively (``make_mark``): whoever
    creates it first owns the call, so a call the driver took back while it
    waited in the executor's queue is never started (``NOT_RUN``). A missing
    directory means the driver that sent the call has exited: nothing to run either.
    """
    fn = _ENTRIES[entry] if isinstance(entry, str) else entry
    if marker is None:
        return fn(payload)
    become_worker()  # a local pool's worker: once per process
    try:
        make_mark(marker, str(os.getpid()))
    except (FileExistsError, FileNotFoundError):
        return NOT_RUN
    try:
        result = fn(payload)
        if len(result) >= LARGE_RESULT_BYTES and marker.startswith(_TMPFS):
            result = _spill(result, marker)
        return result
    finally:
        # Gone once the call is over: a marker left behind belongs to a call
        # whose worker died while running it.
        with contextlib.suppress(OSError):
            os.unlink(marker)


#: Results at least this large travel through a file on tmpfs, not the pool's pipe.
LARGE_RESULT_BYTES = 4 * 1024 * 1024
_TMPFS = "/dev/shm" + os.sep


def _spill(result: bytes, marker: str) -> bytes:
    """``result`` written to a file beside ``marker``: ``SPILLED`` + the file's path.

    Through the pool's pipe, a large result is read and unpickled by the
    pool's thread in the driver, holding the GIL (so stalling the event
    loop) for as long as the copy takes, and is held twice meanwhile. From
    a file on tmpfs the driver maps it (``results.opened``) and unpickles
    the value straight out of the mapping. Where tmpfs is full (a container's
    small ``/dev/shm``) the result takes the pipe after all.
    """
    path = marker + ".out"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return result
    try:
        with memoryview(result) as view:
            done = 0
            while done < len(view):
                done += os.write(fd, view[done:])
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        return result
    os.close(fd)
    return SPILLED + os.fsencode(path)


#: The entry points ``run_marked`` knows by name, and their names.
_ENTRIES: dict[str, Callable[[bytes], bytes]] = {"calls": run_calls}
ENTRY_NAMES: dict[Callable[[bytes], bytes], str] = {fn: name for name, fn in _ENTRIES.items()}


def make_mark(marker: str, text: str) -> None:
    """Create ``marker`` holding ``text``, atomically; FileExistsError if it exists.

    A symbolic link whose target is the text: one system call that creates
    the marker with its content (a file takes an open, a write and a close,
    and is empty for a moment in between). Windows, where links need a
    privilege, gets an ``O_EXCL`` file.
    """
    if sys.platform != "win32":
        os.symlink(text, marker)
        return
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def read_mark(marker: str) -> str | None:
    """What ``marker`` holds ("" while a Windows file is being written); None if absent."""
    try:
        if sys.platform != "win32":
            return os.readlink(marker)
        with open(marker, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


#: Marker directories are named this, then the driver's pid and a dash (``markers.py``).
MARKER_PREFIX = "engine-cpu-"


def marker_base() -> str:
    """Where marker directories live: tmpfs (``/dev/shm``) where there is one."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()


def bury_dead_workers(driver_pid: int) -> None:
    """Kill what is left of the process groups of ``driver_pid``'s workers that died mid-call.

    Scenario: a worker dies while it runs a call (the OOM killer, a SIGKILL
    from outside) and its driver is SIGKILLed before it judged that break,
    which is when it kills what the dead worker's node started: that group
    has no guard left and lives on, re-parented to init. The call's marker,
    never removed, still names its worker, whose pid is the group's id. Run
    by the guard of every worker of that driver (which outlives it by up to
    ``GUARD_INTERVAL_S``) and by the next driver's sweep; ``kill_group``
    leaves a live worker alone (its own guard takes its tree).
    """
    for pid in marked_pids(driver_pid):
        if pid != os.getpid():
            kill_group(pid)


def marked_pids(driver_pid: int) -> list[int]:
    """The worker pids in the markers of ``driver_pid``'s calls.

    A marker is removed when its call ends, so one that holds a dead worker's
    pid belongs to a call that was running when that worker died.
    """
    base = marker_base()
    mine = f"{MARKER_PREFIX}{driver_pid}-"
    try:
        dirs = [os.path.join(base, n) for n in os.listdir(base) if n.startswith(mine)]
    except OSError:
        return []
    found = []
    for d in dirs:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            text = read_mark(os.path.join(d, name))
            if text is not None and text.isdigit():
                found.append(int(text))
    return found


#: How often a worker's guard looks for its driver (seconds): the longest an
#: orphan computes on after its driver died.
GUARD_INTERVAL_S = 0.1


def guard_parent(parent_pid: int) -> None:
    """Worker initializer: die with the driver *process*, whichever thread started us.

    A SIGKILLed driver runs no cleanup, so without this its busy workers
    would compute on as orphans. A daemon thread looks at ``os.getppid()``
    every ``GUARD_INTERVAL_S`` and, once the driver is gone (the worker was
    re-parented), kills what the worker started and ends the worker (see
    ``become_worker``). Not ``PR_SET_PDEATHSIG``: that fires when the
    *thread* that spawned the worker exits, so workers started from a
    short-lived thread (``app.invoke()`` there) would die under the next
    run's calls. The cost is one ``getppid`` ten times a second. A call
    stuck in native code that holds the GIL keeps the watcher from running
    until it lets go. If the driver died before this ran, exit now (after
    burying what its workers that died mid-call left: ``bury_dead_workers``).
    """
    if os.getppid() != parent_pid:
        bury_dead_workers(parent_pid)
        os._exit(0)
    become_worker()


@functools.cache
def become_worker() -> None:
    """Once per worker process: a process group of its own, and the parent guard.

    Run by the default pool's initializer, and by ``run_marked`` before the
    first call a local pool's worker runs (a user's pool has no initializer
    of ours). The group makes everything a node starts (a ``Popen``, a
    nested pool) killable with its worker in one signal (``kill_tree``);
    the guard takes that tree down when the driver dies. The parent watched
    is the one this process has now: the driver, or for a ``forkserver``
    pool the fork server, which exits with the driver.
    """
    become_group_leader()
    if sys.platform == "win32":  # getppid never changes there; loky's pipes end idle workers
        return
    watcher = threading.Thread(
        target=_watch_parent, args=(os.getppid(),), name="engine-parent-guard", daemon=True
    )
    watcher.start()


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(GUARD_INTERVAL_S)
        if os.getppid() != parent_pid:
            # Everything this worker started goes with it: Popen'ed
            # programs, nested pools' workers (and this process, by its group);
            # so does what is left of the groups of its siblings that died
            # mid-call just before the driver.
            try:
                bury_dead_workers(parent_pid)
                kill_own_tree()
            finally:
                os._exit(0)


def report_initializer(
    initializer: Callable[..., Any], initargs: tuple[Any, ...], path: str
) -> None:
    """Run a pool's ``initializer``; if it raises, write its traceback to ``path`` and re-raise.

    What ``pool.probe_initializer`` runs in a throwaway worker: a pool whose
    workers die in their initializer only logs the error in the worker.
    """
    try:
        initializer(*initargs)
    except BaseException as exc:
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(traceback.format_exception(exc)))
        raise


def pid_after(seconds: float) -> int:
    """This worker's pid, after ``seconds``: ``warm`` uses it to reach every worker."""
    time.sleep(seconds)
    return os.getpid()

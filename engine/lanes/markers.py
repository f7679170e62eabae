"""Markers: which worker process runs which call, one symbolic link per submission.

A marker is created atomically and exclusively (``make_mark``) by whoever
takes the call first: the worker, writing its pid, before it runs the call;
or the driver, writing ``CLAIMED``, to take back a call still queued (the
worker then skips it). The worker removes it when the call ends, so a
marker holding a dead worker's pid belongs to a call that was running when
that worker died. A claimed marker stays until the call can no longer be
started (its future is done), then goes too.

Markers live in one directory per driver process (``new_marker``), named
after its pid, on tmpfs (``/dev/shm``) where there is one: process-wide
state like the default pool, created lazily under a lock by the first cpu
call, removed when the driver exits. Directories of drivers that died without
cleaning up are swept by every driver that makes cpu calls, at most once per
``SWEEP_EVERY_S`` (the sweep also buries what their dead workers' nodes
started). (A directory and a sweep per run cost each run a ``mkdtemp``, a
``listdir`` and an ``rmtree``: a fifth of a one-node cpu run.)
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ..procs import pid_alive
from .worker import MARKER_PREFIX as PREFIX
from .worker import bury_dead_workers, make_mark, marked_pids, marker_base, read_mark

# This driver's marker directory, as (pid, path): see the module docstring.
_dir_lock = threading.Lock()
_dir: tuple[int, str] | None = None
_names = itertools.count()
_swept_at = 0.0  # monotonic time of this driver's last sweep

#: How often a driver making cpu calls sweeps dead drivers' marker directories.
SWEEP_EVERY_S = 0.5


def new_marker() -> str:
    """A fresh marker path in this driver's directory (created on first use)."""
    global _dir, _swept_at
    here = _dir
    pid = os.getpid()
    now = time.monotonic()
    if here is None or here[0] != pid or now - _swept_at > SWEEP_EVERY_S:
        with _dir_lock:
            here = _dir
            if now - _swept_at > SWEEP_EVERY_S:
                _swept_at = now
                sweep(marker_base())
            if here is None or here[0] != pid:  # none yet, or a forked child's inheritance
                path = tempfile.mkdtemp(prefix=f"{PREFIX}{pid}-", dir=marker_base())
                atexit.register(shutil.rmtree, path, True)
                here = _dir = (pid, path)
    return f"{here[1]}{os.sep}{next(_names)}"


def running_on(pids: Mapping[int, Any]) -> bool:
    """True when a marker of this driver holds one of ``pids``: a call ran on that worker.

    Read only when a pool breaks. A marker is removed when its call ends, so
    one holding a dead worker's pid belongs to a call that was running when
    that worker died (or that a lane killed, which ``_Breaks`` knows anyway).
    """
    return bool(pids) and any(pid in pids for pid in marked_pids(os.getpid()))


def forget(pids: Iterable[int]) -> None:
    """Remove this driver's markers that hold one of ``pids`` (workers of a replaced pool)."""
    here = _dir
    dead = {str(p) for p in pids}
    if here is None or here[0] != os.getpid() or not dead:
        return
    try:
        names = os.listdir(here[1])
    except OSError:
        return
    for name in names:
        path = os.path.join(here[1], name)
        if read_mark(path) in dead:
            unlink(path)


def sweep(base: str) -> None:
    """Remove marker directories of drivers that died without cleaning up (SIGKILL).

    Pids are compared within this host and pid namespace, which is the reach
    of ``/dev/shm`` (one per IPC namespace) and of the temp dir in practice.
    """
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            # A worker of that driver that died mid-call, with no sibling
            # left to bury its group: what its node started goes now.
            bury_dead_workers(int(pid))
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)


#: What the driver writes into a marker it claims: not a pid, so never run.
CLAIMED = "claimed"


def read_pid(marker: str) -> int | None:
    text = read_mark(marker)
    return int(text) if text is not None and text.isdigit() else None


def started_at(marker: str) -> float | None:
    """When the worker took the call (the marker's time, wall clock); None if it has not."""
    if read_pid(marker) is None:  # absent, or claimed by the driver
        return None
    try:
        return os.lstat(marker).st_mtime  # the marker itself, not what a link names
    except OSError:
        return None


def claim(marker: str) -> int | None:
    """Take a call back: None when it will never run (claimed, or finished), else its pid."""
    try:
        make_mark(marker, CLAIMED)
    except FileExistsError:
        pass
    except OSError:
        return None
    else:
        return None  # a marker the worker cannot create: it will not run the call
    # The worker owns the call. A marker file (Windows) is empty for a few
    # microseconds between its create and its write: wait that out (bounded).
    for _ in range(200):
        text = read_mark(marker)
        if text is None:
            return None  # it finished meanwhile: nothing runs on
        if text.isdigit():
            return int(text)
        time.sleep(0.0005)
    return None


def unlink(marker: str | None) -> None:
    if marker is not None:
        with contextlib.suppress(OSError):
            os.unlink(marker)


__all__ = [
    "CLAIMED",
    "PREFIX",
    "SWEEP_EVERY_S",
    "claim",
    "forget",
    "marker_base",
    "new_marker",
    "read_pid",
    "running_on",
    "started_at",
    "sweep",
    "unlink",
]

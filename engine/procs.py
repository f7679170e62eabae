"""Processes on this host: is one alive, what runs under it, how much memory, kill a tree,
and which host (or Dask worker) this is.

One home for what the process lane, the workers, the checkpointers' lock
and the tests each need to know about processes. Standard library only: it
is imported inside worker processes too. Linux reads ``/proc``; elsewhere
the functions degrade to what ``os.kill`` can tell (no descendants, no RSS).

Why trees: a node may start processes of its own (``subprocess.Popen``, a
nested process pool). Killing only the worker that ran it leaves them
running, re-parented to init, for as long as they like. Each worker makes
itself the leader of its own process group (``become_group_leader``), so
what it starts shares that group, and ``kill_tree`` takes the whole group
down with one signal, plus any descendant that moved to a group or session
of its own (``start_new_session=True``), found by walking ``/proc`` while
the tree is stopped so that nothing can fork or re-parent during the walk.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import sys

_PROC = "/proc"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` on this host still runs; a zombie (dead, not yet reaped) is dead."""
    if pid <= 0:
        return False
    if sys.platform == "win32":
        # os.kill(pid, 0) would terminate the process there: assume alive.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = _state(pid)
    return state is None or state not in ("Z", "X")


def _state(pid: int) -> str | None:
    """The one-letter state of ``pid`` from /proc (None if unknown)."""
    try:
        with open(f"{_PROC}/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (zombies included); [] when unknown."""
    try:
        tasks = os.listdir(f"{_PROC}/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for tid in tasks:
        try:
            with open(f"{_PROC}/{pid}/task/{tid}/children", encoding="ascii") as f:
                found.extend(int(c) for c in f.read().split())
        except FileNotFoundError:
            if not os.path.isdir(f"{_PROC}/{pid}/task/{tid}"):
                continue  # the thread ended meanwhile
            return _children_by_scan(pid)  # a kernel without the children file
        except (OSError, ValueError):
            continue
    return found


def _children_by_scan(pid: int) -> list[int]:
    """``children`` the slow way: every process's parent, from /proc/PID/stat."""
    found = []
    try:
        names = os.listdir(_PROC)
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"{_PROC}/{name}/stat", encoding="ascii", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(name))
    return found


def descendants(pid: int, *, live: bool = True) -> set[int]:
    """Every process under ``pid`` (children, their children...); only live ones by default."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {p for p in found if pid_alive(p)} if live else found


def rss(pid: int) -> int:
    """Resident memory of ``pid`` in bytes (0 when unknown or gone)."""
    try:
        with open(f"{_PROC}/{pid}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * _page_size()
    except (OSError, IndexError, ValueError):
        return 0


def tree_rss(pid: int) -> int:
    """Resident memory of ``pid`` and every live process under it, in bytes."""
    return rss(pid) + sum(rss(p) for p in descendants(pid))


def _page_size() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4096


def become_group_leader() -> bool:
    """Make this process the leader of a process group of its own; True if it is one.

    What it starts afterwards joins the group, so ``kill_tree`` reaches it
    with one signal. A process that leads a session cannot move (EPERM):
    then it stays where it is.
    """
    if sys.platform == "win32":
        return False
    pid = os.getpid()
    with contextlib.suppress(OSError):
        if os.getpgid(0) != pid:
            os.setpgid(0, 0)
    try:
        return os.getpgid(0) == pid
    except OSError:
        return False


def _leads_group(pid: int) -> bool:
    """True when ``pid`` leads a process group that is not this process's own."""
    try:
        return os.getpgid(pid) == pid and pid != os.getpgrp()
    except OSError:
        return False


def kill_tree(pid: int) -> set[int]:
    """SIGKILL process ``pid``, its process group if it leads one, and everything under it.

    The tree is stopped first (the group with one ``SIGSTOP``, then each
    descendant found outside it, walking again until nothing new turns
    up): a stopped process cannot fork, and no process dies meanwhile, so
    none re-parents out of reach of the walk. Returns the pids signalled.
    Never signals this process or its own group. On Windows: ``pid`` only.
    """
    if pid == os.getpid() or pid <= 0:
        return set()
    if sys.platform == "win32":
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
        return {pid}
    group = _leads_group(pid)
    _signal(pid, signal.SIGSTOP, group=group)
    stopped = _stop_descendants(pid) - {os.getpid()}
    for child in stopped:
        _signal(child, signal.SIGKILL, group=False)
    _signal(pid, signal.SIGKILL, group=group)
    return stopped | {pid}


def kill_group(pgid: int) -> bool:
    """SIGKILL what is left of the process group ``pgid`` (its leader died); True if any.

    Safe to call with the pid of a worker that died: a group's id cannot be
    given to a new process while the group has members, and if nothing is
    left the call finds no group. A live process with that pid is a stranger
    that reused it (or the worker did not die): it is left alone.
    """
    if sys.platform == "win32" or pgid <= 1 or pgid == os.getpgrp() or pid_alive(pgid):
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        return False
    return True


def kill_own_tree() -> None:
    """SIGKILL every process under this one and this process's group (itself included).

    For a worker whose driver died: what its node started goes with it.
    Returns only when this process does not lead its group (it is then up
    to the caller to exit).
    """
    if sys.platform == "win32":
        return
    me = os.getpid()
    for child in _stop_descendants(me):
        _signal(child, signal.SIGKILL, group=False)
    if os.getpgrp() == me:
        os.killpg(me, signal.SIGKILL)


def _stop_descendants(root: int) -> set[int]:
    """SIGSTOP every process under ``root``, walking again until none is new; their pids.

    A stopped process cannot fork, so the tree stops growing; nothing in it
    dies meanwhile, so nothing re-parents out of the walk's reach.
    """
    stopped: set[int] = set()
    for _ in range(64):  # bounded: a stopped tree cannot grow
        found = descendants(root, live=False) - stopped
        if not found:
            break
        for child in found:
            _signal(child, signal.SIGSTOP, group=False)
        stopped |= found
    return stopped


def _signal(pid: int, sig: int, *, group: bool) -> None:
    with contextlib.suppress(OSError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def hostname() -> str:
    """Where a call runs: the Dask worker's address inside a Dask task, else the machine.

    A worker address (``tcp://10.0.0.7:38211``) names one worker process, so
    the trace shows one row per Dask worker. Dask is never imported here: a
    process that is running a Dask task has imported ``distributed`` already,
    so any other process pays one dict lookup. The address is looked up per
    call, not cached per process: it is a context-variable read, and one
    process may host several in-process workers (``LocalCluster(processes=False)``).
    """
    dask_worker = sys.modules.get("distributed.worker")
    if dask_worker is not None:
        try:
            return str(dask_worker.get_worker().address)
        except Exception:  # not inside a Dask task (ValueError), or an older API
            pass
    return _machine_name()


@functools.cache
def _machine_name() -> str:
    return socket.gethostname()


__all__ = [
    "become_group_leader",
    "children",
    "descendants",
    "hostname",
    "kill_group",
    "kill_own_tree",
    "kill_tree",
    "pid_alive",
    "rss",
    "tree_rss",
]

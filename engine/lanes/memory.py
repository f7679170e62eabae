"""The memory limit of cpu calls: a worker that outgrows it is ended, as Dask's nanny does.

::

    ProcessLane.run(..., memory_limit=N)     watch thread, every INTERVAL_S:
      WATCH.watch(marker, procs, N) ------>    pid <- the call's marker (its worker)
      ... the call runs ...                    rss <- the worker and everything under it
      WATCH.unwatch(entry)                     rss > N: entry.exceeded = (pid, rss)
                                                        kill_tree(pid)   the pool breaks:
                                                        this call is the culprit
                                                        (WorkerDied), the others innocents

Dask's nanny polls its worker's RSS (every 100 ms) and restarts a worker
that passes 95% of its memory limit, whatever it runs; the task is
rescheduled and fails as ``KilledWorker`` after a few such deaths. Here the
watch is in the driver, so it works with any local pool (the default loky
pool, a user's loky or stdlib pool) without an initializer of ours, and it
counts what the worker's node started (a nested pool, a ``Popen``) with the
worker. The kill takes the same path as a timeout: the call is charged as
a crash (the engine runs it again, and fails it as poison on its third
crash), the step's other calls are re-sent uncharged.

A limit is checked every ``INTERVAL_S``: a call that allocates faster than
that can overshoot it by what it allocates in one interval before it is
stopped. The worker's RSS counts memory the worker kept from calls before
(Python rarely returns freed memory to the system), as Dask's does.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..logs import get_logger
from ..procs import kill_tree, tree_rss
from .breaks import BREAKS
from .markers import read_pid

log = get_logger("engine")

#: How often the watch reads the RSS of the workers running limited calls (seconds).
INTERVAL_S = 0.05
#: How long the watch thread waits with nothing to watch before it ends (seconds).
IDLE_S = 2.0


@dataclass(eq=False)
class Watched:
    """One call under a memory limit; ``exceeded`` is (pid, rss) once its worker was ended."""

    marker: str
    procs: Mapping[int, Any]
    limit: int
    exceeded: tuple[int, int] | None = field(default=None)


class MemoryWatch:
    """Ends the worker of a call whose process tree grows past the call's memory limit.

    One per driver process (``WATCH``), like the record of broken pools:
    every run's lanes share its one thread, started with the first watched
    call and ended after ``IDLE_S`` with nothing to watch.

    Invariant: ``_watched`` and ``_thread`` are only touched under
    ``_lock``; ``_thread`` is alive whenever ``_watched`` is not empty (a
    thread about to end re-checks ``_watched`` under the lock before it goes).
    """

    def __init__(self, interval_s: float = INTERVAL_S, idle_s: float = IDLE_S) -> None:
        self._lock = threading.Lock()
        self._watched: set[Watched] = set()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self.interval_s = interval_s
        self.idle_s = idle_s

    def __repr__(self) -> str:
        running = self._thread is not None and self._thread.is_alive()
        return f"<MemoryWatch watched={len(self._watched)} thread={'on' if running else 'off'}>"

    def watch(self, marker: str, procs: Mapping[int, Any], limit: int) -> Watched:
        """Watch the call whose marker is ``marker`` until ``unwatch``."""
        entry = Watched(marker, procs, limit)
        with self._lock:
            self._watched.add(entry)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="engine-memory-watch", daemon=True
                )
                self._thread.start()
        return entry

    def unwatch(self, entry: Watched | None) -> None:
        if entry is not None:
            with self._lock:
                self._watched.discard(entry)

    def _run(self) -> None:
        idle = 0.0
        while True:
            with self._lock:
                entries = list(self._watched)
                if not entries and idle >= self.idle_s:
                    self._thread = None
                    return
            idle = 0.0 if entries else idle + self.interval_s
            for entry in entries:
                self.check(entry)
            self._wake.wait(self.interval_s)

    def check(self, entry: Watched) -> None:
        """Read the RSS of ``entry``'s worker now, and end the worker past the limit."""
        if entry.exceeded is not None:
            return
        pid = read_pid(entry.marker)
        if pid is None or pid not in entry.procs:
            return  # not started yet, finished, or not a worker of this pool
        used = tree_rss(pid)
        if used <= entry.limit:
            return
        entry.exceeded = (pid, used)
        BREAKS.killed(pid)  # before the kill: the break it causes has a culprit
        kill_tree(pid)
        log.warning(
            "cpu_worker_over_memory_limit",
            pid=pid,
            rss_mb=round(used / 1e6, 1),
            limit_mb=round(entry.limit / 1e6, 1),
        )


WATCH = MemoryWatch()


__all__ = ["INTERVAL_S", "WATCH", "MemoryWatch", "Watched"]

"""Broken pools: who died, and whether anyone is to blame.

loky and the stdlib pool fail *every* pending call when one worker dies.
Each submission of the process lane (``Submission``) judges its call's
part in a break (``Submission.judge``) from the break as it was first
seen, recorded here once per pool for the whole driver (``BREAKS``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..procs import kill_group, pid_alive
from .failures import is_worker_crash
from .markers import read_pid, running_on

if TYPE_CHECKING:
    from .memory import Watched


@dataclass(frozen=True)
class Verdict:
    """What a broken pool meant for one call: did its own worker die?

    ``attributed`` says whether the break had a culprit at all (this call or
    another, of this run or another): only a break nobody can be blamed for
    counts toward ``MAX_DISRUPTIONS``.
    """

    culprit: bool
    pid: int | None = None
    exitcode: int | None = None
    attributed: bool = False


@dataclass(frozen=True)
class Break:
    """One broken pool as it was when the break was first reported."""

    #: pid -> exit code (None if unknown) of the workers found dead.
    dead: Mapping[int, int | None]
    #: A dead worker was running a call (its marker held its pid), or a lane
    #: killed it on purpose (a timeout, a cancellation): the break has a culprit.
    attributed: bool
    #: Every worker the pool had then, dead or alive: loky empties its own list
    #: when it kills the survivors, and the lane buries them all from this one.
    workers: frozenset[int] = frozenset()


class _Breaks:
    """The process's record of broken pools: who died, and whether anyone is to blame.

    One per process (``BREAKS``), next to the one default pool it mostly
    describes: lanes of concurrent runs share that pool, so one break must be
    judged alike by all of them, and its culprit may be another run's call.

    A break is taken once, by the first verdict (in the pool's thread, before
    any caller hears of the break, so before a culprit's lane can remove its
    marker), and shared by the others. A worker closes its end of the pool's
    pipes a moment before the kernel marks it dead, so the snapshot waits (at
    most ``patience`` s) until at least one worker is seen dead, as loky does
    before it reports exit codes. Then the break is attributed when a dead
    worker's pid is in a marker of this driver (it was running a call) or was
    killed by a lane.

    Invariant: ``_seen`` maps id(executor) -> (executor, Break) for the last
    ``keep`` pools that broke (keeping the executor stops its id from being
    reused meanwhile); ``_killed`` holds the last pids lanes killed. Both are
    only touched under ``_lock`` (verdicts run in the pools' threads).
    """

    def __init__(self, patience: float = 0.5, keep: int = 8) -> None:
        self._lock = threading.Lock()
        self._seen: dict[int, tuple[Executor, Break]] = {}
        self._killed: collections.deque[int] = collections.deque(maxlen=64)
        self._patience = patience
        self._keep = keep

    def __repr__(self) -> str:
        return f"<_Breaks seen={len(self._seen)} killed={len(self._killed)}>"

    def killed(self, pid: int) -> None:
        """A lane killed worker ``pid`` on purpose: the break it causes has a culprit."""
        with self._lock:
            self._killed.append(pid)

    def known(self, executor: Executor) -> Break | None:
        """The break of ``executor`` if one was taken already."""
        with self._lock:
            found = self._seen.get(id(executor))
            return found[1] if found is not None and found[0] is executor else None

    def of(self, executor: Executor, procs: Mapping[int, Any]) -> Break:
        """The break of broken ``executor``, taken now if it is the first time it is asked."""
        with self._lock:
            found = self._seen.get(id(executor))
            if found is not None and found[0] is executor:
                return found[1]
            dead: dict[int, int | None] = {}
            deadline = time.monotonic() + self._patience
            while True:
                for pid in list(procs):
                    code = exitcode_of(procs, pid)
                    if code is not None or not pid_alive(pid):
                        dead[pid] = code
                # A worker with threads (the parent guard's) shows as a zombie
                # while its other threads still exit, before its status can be
                # read: wait for the status too, within the same patience.
                known = dead and all(code is not None for code in dead.values())
                if known or time.monotonic() > deadline:
                    break
                time.sleep(0.002)
            attributed = any(pid in self._killed for pid in dead) or running_on(dead)
            brk = Break(dead=dead, attributed=attributed, workers=frozenset(procs))
            for pid in dead:
                # What a dead worker's node started lives on in its process
                # group (a Popen, a nested pool): nothing of it may outlive it.
                kill_group(pid)
            self._seen.pop(id(executor), None)
            self._seen[id(executor)] = (executor, brk)
            while len(self._seen) > self._keep:
                del self._seen[next(iter(self._seen))]
            return brk


BREAKS = _Breaks()


class Submission:
    """One submission of one call to the pool.

    Invariant: ``verdict`` is written at most once, by the pool's thread, in
    ``settled`` (the one done-callback of ``future``) before it hands the
    outcome to ``waiting`` on the loop, so the loop reads it only after it
    was written. ``watch`` is the call's entry in the memory watch while it
    runs under a limit (else None).
    """

    __slots__ = ("executor", "future", "marker", "procs", "verdict", "waiting", "watch")

    def __init__(
        self,
        executor: Executor,
        marker: str | None,
        procs: dict[int, Any] | None,
        waiting: asyncio.Future[bytes] | None = None,
    ) -> None:
        self.executor = executor
        self.marker = marker
        self.procs = procs
        self.future: Future[bytes] | None = None
        #: The loop's side of ``future`` (made on the loop's thread), what the lane awaits.
        self.waiting = waiting
        self.verdict: Verdict | None = None
        self.watch: Watched | None = None

    def settled(self, fut: Future[bytes]) -> None:
        """Done-callback, in the pool's thread: the verdict, then the outcome to the loop.

        One callback in place of ``judge`` and ``asyncio.wrap_future``'s own,
        in that order; a loop that has closed meanwhile hears nothing.
        """
        self.judge(fut)
        waiting = self.waiting
        if waiting is None:
            return
        loop = waiting.get_loop()
        if loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # closed between the look and the call
            loop.call_soon_threadsafe(_resolve, waiting, fut)

    def judge(self, fut: Future[bytes]) -> None:
        """Done-callback, in the pool's thread: blame this call, or not, for a break.

        Both loky and the stdlib fail the pending futures *before* killing the
        surviving workers, so here the worker that died is dead and the
        others are still alive: liveness tells culprit from innocent.
        """
        if fut.cancelled() or self.marker is None:
            return
        exc = fut.exception()
        if exc is None or not is_worker_crash(exc):
            return
        pid = read_pid(self.marker)
        brk = BREAKS.of(self.executor, self.procs or {})
        if pid is None:  # never started, or finished before the break
            self.verdict = Verdict(culprit=False, attributed=brk.attributed)
            return
        if pid not in brk.dead and (pid in (self.procs or {}) or pid_alive(pid)):
            self.verdict = Verdict(culprit=False, pid=pid, attributed=brk.attributed)
            return
        code = brk.dead.get(pid)
        if code is None:
            code = exitcode_of(self.procs, pid)
        if code is None:
            code = exitcode_from_message(str(exc))
        self.verdict = Verdict(culprit=True, pid=pid, exitcode=code, attributed=True)


def _resolve(waiting: asyncio.Future[bytes], fut: Future[bytes]) -> None:
    """On the loop: ``waiting`` takes ``fut``'s outcome (unless it was cancelled first)."""
    if waiting.done():
        return
    if fut.cancelled():
        waiting.cancel()
        return
    exc = fut.exception()
    if exc is not None:
        waiting.set_exception(exc)
    else:
        waiting.set_result(fut.result())


def exitcode_of(procs: Mapping[int, Any] | None, pid: int) -> int | None:
    """The exit code of dead worker ``pid``: from the pool's process object, else waitid."""
    proc = (procs or {}).get(pid)
    if proc is not None:
        try:
            code = proc.exitcode
        except Exception:
            code = None
        if isinstance(code, int):
            return code
    waitid = getattr(os, "waitid", None)
    if waitid is None:
        return None
    try:
        # WNOWAIT: read a dead child's status without reaping it (the pool will).
        info = waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except (ChildProcessError, OSError):
        return None
    if info is None:
        return None
    if info.si_code == os.CLD_EXITED:
        return int(info.si_status)
    return -int(info.si_status)


def exitcode_from_message(message: str) -> int | None:
    """loky's "The exit codes of the workers are {SIGKILL(-9)}": the code when only one."""
    codes = re.findall(r"\((-?\d+)\)", message.split("exit codes", 1)[-1])
    return int(codes[0]) if "exit codes" in message and len(set(codes)) == 1 else None


__all__ = ["BREAKS", "Break", "Submission", "Verdict", "exitcode_from_message", "exitcode_of"]

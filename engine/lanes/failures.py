"""How a call can fail on its way through the cpu lane, before any result comes back.

Two kinds, told apart by what running the call again would do:

- ``WorkerDied``: the worker process running the call died (a crash, a
  kill, the memory limit). Running it again may well work: the engine
  re-runs it on the engine's own crash budget.
- ``CallRefused``: the call could not be run, and would fail the same way
  again: its payload cannot cross the process boundary (``PayloadError``),
  or the executor cannot run anything (``ExecutorUnusable``: shut down, its
  initializer raises, no worker can be started). The dispatcher turns it
  into a ``NodeError`` naming node, step and lane, never retried.

The dispatcher turns each into the call's typed failure (``lanes.calls``);
the messages here say what happened and what to do, and the run's error
adds the node, the step and the lane.
"""

from __future__ import annotations

import errno
import os
import signal
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool


class WorkerDied(Exception):
    """The worker process running a call died (the dispatcher makes it a ``WorkerLost``).

    ``pid`` and ``exitcode`` are known for local pools (``exitcode`` < 0 is
    the signal number, negated, as in ``multiprocessing``).
    """

    def __init__(self, message: str, *, pid: int | None = None, exitcode: int | None = None):
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode


class CallRefused(Exception):
    """A call that could not be run and would fail the same way again (never retried).

    ``kind`` is what the trace records for the lost attempt.
    """

    kind = "refused"


class PayloadError(CallRefused):
    """A payload could not cross the process boundary (before or after the call).

    The dispatcher turns it into a ``Refused`` failure (a NodeError naming node,
    step and lane); it is
    never retried, since pickling the same objects fails the same way. The
    pool is untouched either way.
    """

    kind = "payload"


class ExecutorUnusable(CallRefused):
    """The cpu lane's executor cannot run any call: the run's setup is at fault, not the node.

    Shut down while the run used it, an initializer that raises in every
    worker, a pool that broke and cannot be rebuilt the way its owner made
    it, or no worker process could be started (out of file descriptors or
    processes).
    """

    kind = "executor"


def is_worker_crash(exc: BaseException) -> bool:
    """True when ``exc`` says a worker process died under a call.

    loky's ``TerminatedWorkerError`` and the stdlib's ``BrokenProcessPool``
    (one is a subclass of the other), and dask.distributed's ``KilledWorker``
    (matched by class name, so Dask is never imported here).
    """
    if isinstance(exc, BrokenProcessPool | WorkerDied):
        return True
    return any(cls.__name__ == "KilledWorker" for cls in type(exc).__mro__)


def describe_exit(exitcode: int | None) -> str:
    """Exit code or signal in words, with the likely cause."""
    if exitcode is None:
        return "exit status unknown"
    if exitcode >= 0:
        return f"exited with code {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        return f"killed by signal {-exitcode}"
    hints = {
        "SIGKILL": ", possibly out of memory (the kernel's OOM killer sends SIGKILL)",
        "SIGSEGV": " (a segmentation fault, in native code)",
        "SIGBUS": " (a bus error, in native code)",
        "SIGABRT": " (aborted, e.g. a failed assertion in native code)",
    }
    return f"killed by signal {name}{hints.get(name, '')}"


# -- what the executor's failures say -----------------------------------------------


def mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def shut_down_message(executor: Executor) -> str:
    return (
        f"the executor you passed ({type(executor).__name__}) was shut down while the run "
        "still had calls for it, so it cannot run this one; shut it down only after arun "
        "returns (or use it in a with block around the run), or pass none for the default pool"
    )


def spawn_failed_message(executor: Executor | None, exc: OSError, *, default: bool) -> str:
    """Why no worker process could be started, with the numbers that say which limit."""
    kind = "the default pool" if default else type(executor).__name__
    said = f"no worker process could be started for it ({kind}): {type(exc).__name__}: {exc}"
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        opened, limit = _fds()
        return (
            f"{said}; this driver has {opened} file descriptors open of its limit of {limit} "
            "(RLIMIT_NOFILE), and each worker needs a few: raise the limit (ulimit -n, or "
            "resource.setrlimit(resource.RLIMIT_NOFILE, ...)) or close the files, sockets "
            "and connections the app keeps open"
        )
    if exc.errno in (errno.EAGAIN, errno.ENOMEM):
        return (
            f"{said}; the system refused a new process (a limit on processes, RLIMIT_NPROC "
            "or a container's pids limit, or memory): raise it, or use fewer workers "
            "(ENGINE_CPU_WORKERS, memory_per_worker)"
        )
    return f"{said}; check the limits of this process (ulimit -a)"


def _fds() -> tuple[int | str, int | str]:
    """(file descriptors this process has open, its soft RLIMIT_NOFILE), as far as known.

    Counted without opening one (listing /proc/self/fd needs a descriptor,
    which is exactly what is missing): an ``fstat`` of each possible one.
    """
    try:
        import resource

        limit: int | str = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        limit = "?"
    if not isinstance(limit, int) or not 0 < limit <= 1 << 16:
        return "?", limit
    opened = 0
    for fd in range(limit):
        try:
            os.fstat(fd)
        except OSError:
            continue
        opened += 1
    return opened, limit


__all__ = [
    "CallRefused",
    "ExecutorUnusable",
    "PayloadError",
    "WorkerDied",
    "describe_exit",
    "is_worker_crash",
    "mb",
    "shut_down_message",
    "spawn_failed_message",
]

"""How a call can fail on its way through a lane, as the scheduler sees it.

Two kinds, told apart by what running the call again would do:

- ``WorkerLost``: the worker process running the call died (a crash, a
  kill, the memory limit). Running it again may well work: the scheduler
  re-runs it on the engine's own crash budget.
- ``CallRefused``: the call could not be run, and would fail the same way
  again: its payload cannot cross the process boundary (``PayloadError``),
  or the executor cannot run anything (``ExecutorUnusable``: shut down, its
  initializer raises, no worker can be started). The scheduler turns it
  into a ``NodeError`` naming node, step and lane, never retried.

The messages here say what happened and what to do; the scheduler adds
the node, the step and the lane.
"""

from __future__ import annotations

import signal
from concurrent.futures.process import BrokenProcessPool


class WorkerLost(Exception):
    """The worker process running a call died; the scheduler names node and step.

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

    The scheduler turns it into a NodeError naming node, step and lane; it is
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
    if isinstance(exc, BrokenProcessPool | WorkerLost):
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


__all__ = [
    "CallRefused",
    "ExecutorUnusable",
    "PayloadError",
    "WorkerLost",
    "describe_exit",
    "is_worker_crash",
]

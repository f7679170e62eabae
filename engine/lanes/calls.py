"""The dispatcher's vocabulary: a call handed to the lanes, and the outcome it comes back as.

::

    scheduler: Task (routing) --> dispatcher: Call(task, step, attempt) --> a lane
               settle(Outcome) <-- Outcome(call, record, value | failure, load)

Every attempt of a call ends as exactly one ``Outcome`` carrying exactly one
trace record (``NodeCall``), built here and nowhere else: from what the lane
measured where the call ran (``outcome``), or, when nothing came back, timed
from the driver (``lost``). A failed outcome says how it failed with a type
of its own, never an exception to decode:

=================  ==========================================================
failure            what happened
=================  ==========================================================
``NodeRaised``     the node's own code raised (its exception, or its text)
``TimedOut``       it ran past its timeout and was stopped
``Refused``        it could not run and would fail the same way again: what
                   it was given or returned cannot cross the process boundary
                   (``payload``), or the executor cannot run anything
                   (``executor``)
``WorkerLost``     the worker process running it died (a crash, a kill, the
                   memory limit): charged to this call only
``Cancelled``      the node's own code was cancelled (a ``CancelledError`` the
                   run did not send); a cancelled run propagates instead
``Interrupted``    not a failure: the node asked a person (``interrupt()``);
                   never retried, never a write (``engine.interrupts``). A
                   ``Failure`` subclass so that whatever does not know of
                   questions treats it as "no update" (the node cache keeps
                   nothing, the trace shows no result)
=================  ==========================================================

The messages say what happened and what to do; ``engine.attempts`` adds the
node, the step, the lane and the attempt when it turns a failure into the
run's error.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from ..procs import hostname
from ..spec import Task
from ..trace import NodeCall, call_record, chunk_records
from .frames import Columns, Decoded
from .measure import INTERRUPTED, OK, PAYLOAD, Load, Measured


class Call(NamedTuple):
    """One attempt at one task in one step: what the dispatcher runs."""

    task: Task
    step: int
    attempt: int = 1

    def again(self) -> Call:
        """The next attempt at the same task."""
        return Call(self.task, self.step, self.attempt + 1)


# -- failures -------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """Why an attempt failed. ``error`` is the original exception where there is one
    (what a ``RetryPolicy``'s ``retry_on`` is asked about)."""

    message: str
    error: BaseException | None = None

    def label(self) -> str:
        """What the trace record's ``error`` says of an attempt that left no record of its own."""
        return "failed"


@dataclass(frozen=True)
class NodeRaised(Failure):
    """The node's own code raised; ``error_type`` and ``traceback`` come from where it ran."""

    error_type: str = ""
    traceback: str = ""


@dataclass(frozen=True)
class TimedOut(Failure):
    """It ran past its timeout of ``timeout_s`` seconds; ``stopped`` says what that did to it."""

    timeout_s: float = 0.0
    stopped: Literal["cancelled", "killed", "abandoned"] = "cancelled"

    def label(self) -> str:
        return "timeout"


@dataclass(frozen=True)
class Refused(Failure):
    """It could not run and would fail the same way again (never retried)."""

    reason: Literal["payload", "executor"] = "payload"
    error_type: str = ""  # the type of what failed to cross (a pickling error's)

    def label(self) -> str:
        return self.reason


@dataclass(frozen=True)
class WorkerLost(Failure):
    """The worker process running it died. ``by_executor``: the executor said so itself
    (Dask's ``KilledWorker``), rather than the engine finding the dead worker."""

    pid: int | None = None
    exitcode: int | None = None
    by_executor: bool = False

    def label(self) -> str:
        return "crash"


@dataclass(frozen=True)
class Cancelled(Failure):
    """The node's own code was cancelled: a failure of the node, not of the run."""

    def label(self) -> str:
        return "cancelled"


@dataclass(frozen=True)
class Interrupted(Failure):
    """The node asked a person: ``value`` is its question, ``index`` its position among
    the call's questions (``interrupts.GraphInterrupt``)."""

    value: Any = None
    index: int = 0

    def label(self) -> str:
        return "interrupted"


# -- outcomes -------------------------------------------------------------------------


class Outcome(NamedTuple):
    """How one attempt ended: its trace record, and its value or its failure."""

    call: Call
    record: NodeCall
    value: Any = None
    failure: Failure | None = None
    load: Load | None = None  # a worker_init resource built for it

    @property
    def ok(self) -> bool:
        return self.failure is None


def outcome(call: Call, lane: str, m: Measured, bytes_in: int = 0, bytes_out: int = 0) -> Outcome:
    """The outcome of a call that ran, from what was measured where it ran."""
    ok = m.kind == OK
    record = call_record(
        call.task.node, call.step, lane, call.attempt, call.task.index,
        m.pid, m.thread, m.host, m.start, m.end, m.cpu_s, bytes_in, bytes_out, ok,
        None if ok else m.error_type, m.queued_s,
        m.load.end - m.load.start if m.load is not None else 0.0,
    )  # fmt: skip
    if ok:
        return Outcome(call, record, m.value, None, m.load)
    failure: Failure
    if m.kind == INTERRUPTED and m.error is not None:
        asked = m.error
        failure = Interrupted(
            m.error_message, asked, getattr(asked, "value", None), getattr(asked, "index", 0)
        )
    elif m.kind == INTERRUPTED:  # its question could not be pickled in the worker
        failure = Refused(
            f"its interrupt() value cannot be pickled to return from the worker "
            f"({m.error_message}); ask with plain data (dicts, lists, str, numbers)",
            None,
            "payload",
            m.error_type,
        )
    elif m.kind == PAYLOAD:
        failure = Refused(m.error_message, m.error, "payload", m.error_type)
    else:
        failure = NodeRaised(m.error_message, m.error, m.error_type, m.traceback_text)
    return Outcome(call, record, None, failure, m.load)


def returned(
    call: Call, lane: str, start: float, end: float, value: Any, load: Load | None
) -> Outcome:
    """The outcome of a call that returned here, on the loop's thread (no CPU attributable)."""
    record = call_record(
        call.task.node, call.step, lane, call.attempt, call.task.index,
        os.getpid(), threading.get_native_id(), hostname(), start, end, 0.0, 0, 0, True, None, 0.0,
        load.end - load.start if load is not None else 0.0,
    )  # fmt: skip
    return Outcome(call, record, value, None, load)


def decoded(call: Call, lane: str, d: Decoded) -> Outcome:
    """The outcome of a call whose result came back in a frame (``frames.decode``).

    Built straight from the frame's head (a chunk brings back thousands).
    """
    head = d.head
    kind = head[0]
    if kind == OK and d.unloadable is None:
        load = head[8]
        record = call_record(
            call.task.node, call.step, lane, call.attempt, call.task.index,
            head[1], head[2], head[3], head[4], head[5], head[6], d.bytes_in, d.bytes_out, True,
            None, d.queued_s, load[2] - load[1] if load is not None else 0.0,
        )  # fmt: skip
        return Outcome(call, record, d.obj, None, load)
    m = d.measured
    if d.unloadable is not None and m.ok:
        what, error = d.unloadable
        m = m._replace(
            kind=PAYLOAD,
            error_type=type(error).__qualname__,
            error_message=(
                f"{what} came back from the worker but cannot be unpickled in the driver: "
                f"{type(error).__name__}: {error}; return plain data (dicts, lists, str, "
                "numbers, pydantic models)"
            ),
            error=error,
        )
    return outcome(call, lane, m, d.bytes_in, d.bytes_out)


def decoded_columns(calls: list[Call], lane: str, c: Columns) -> list[Outcome]:
    """The outcomes of a chunk's calls that all returned plain data (``frames.Columns``,
    its values loaded): ``decoded`` for each, their records made together
    (``trace.chunk_records``; a chunk brings back hundreds)."""
    task = calls[0].task
    records = chunk_records(
        task.node, calls[0].step, lane, c.where, c.bytes_out,
        [call.attempt for call in calls], [call.task.index for call in calls],
        c.starts, c.ends, c.cpus, c.sizes, c.waits,
    )  # fmt: skip
    new = tuple.__new__  # (a named tuple's own __new__ is a Python call per outcome)
    return [
        new(Outcome, (call, record, value, None, None))
        for call, record, value in zip(calls, records, c.values, strict=True)
    ]


def lost(call: Call, lane: str, started: float, failure: Failure) -> Outcome:
    """The outcome of a call whose own record never came back: timed from the driver."""
    record = call_record(
        call.task.node, call.step, lane, call.attempt, call.task.index,
        -1, -1, hostname(), started, time.time(), 0.0, 0, 0, False, failure.label(), 0.0, 0.0,
    )  # fmt: skip
    return Outcome(call, record, None, failure)


__all__ = [
    "Call",
    "Cancelled",
    "Failure",
    "Interrupted",
    "NodeRaised",
    "Outcome",
    "Refused",
    "TimedOut",
    "WorkerLost",
    "decoded",
    "decoded_columns",
    "lost",
    "outcome",
    "returned",
]

"""What a run tells the world: events, log lines and trace records, each from one source.

::

    scheduler / dispatcher / attempts          Recorder
      run_started, step_started, ...  ------>  builds the event once (when someone
      call_started(call)                       listens, or its log level is on)
      call_finished(outcome)                     -> the run's event sinks (on_event, astream)
      call_failed(outcome, error)                -> the log line: the event's type and fields
      budget_waited(call, wait)                the call's trace record (the lane built it,
                                               where the call was measured) -> ``calls``
                                               worker_init builds, budget waits, loop lags
                                               -> ``marks``
      values(state), updates(step, writes)     stream chunks (engine.streaming), when the
      call_started / finished / failed           run streams: values, updates, debug; the
                                                 node calls' writer and the cpu workers'
                                                 chunk channel (lanes.channel)

Nothing is copied field by field from one record into a look-alike: a call's
``NodeCall`` comes built in its ``Outcome``, and a log line is the event it
logs. A run nobody observes, with debug logging off, builds no per-call
event at all.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .events import (
    BudgetWaited,
    Event,
    NodeFailed,
    NodeFinished,
    NodeStarted,
    RunFinished,
    RunStarted,
    RunStatus,
    StepFinished,
    StepStarted,
    WorkerLoaded,
)
from .lanes.calls import Call, Outcome
from .lanes.channel import ChunkChannel, StreamInfo
from .lcmessages import node_output, wanted
from .logs import get_logger
from .marks import Mark
from .otel import spans_for
from .streaming import (
    CallStream,
    ChunkSink,
    RunStream,
    StateInput,
    debug_result,
    debug_task,
    task_id,
)
from .trace import NodeCall, Trace
from .warm import load_mark

if TYPE_CHECKING:
    from .errors import InvalidUpdateError, NodeError
    from .resources import Budgets, BudgetWait, Clock
    from .spec import Task
    from .watchdog import LoopWatchdog

log = get_logger("engine")

#: node_failed is a warning for this many failed attempts per step, then debug.
FAILURES_LOGGED_PER_STEP = 10


class Sink(Protocol):
    """Where a run's events go: a callable, false when nobody listens."""

    def __call__(self, event: Event) -> None: ...

    def __bool__(self) -> bool: ...


EventSink = Callable[[Event], None]


class Recorder:
    """The run's voice and memory: events and log lines as things happen, records kept.

    Invariant: ``calls`` holds one record per settled attempt, in the order
    they settled, and only grows; ``_loads`` one mark per ``worker_init``
    build; a per-call event is built only when ``_chatty`` (someone listens,
    or debug lines go somewhere), decided when the run starts.
    """

    def __init__(
        self,
        run_id: str,
        *,
        thread_id: str | None,
        mode: str,
        sink: Sink | EventSink,
        clock: Clock,
        watchdog: LoopWatchdog | None = None,
        budgets: Budgets | None = None,
        chunks: ChunkSink | None = None,
    ) -> None:
        self.run_id = run_id
        #: Where the stream modes' chunks go (None: nobody streams them).
        self.chunks = chunks
        self.thread_id = thread_id
        self.mode = mode
        self._sink = sink
        self._clock = clock
        self._watchdog = watchdog
        self._budgets = budgets
        self.log = log.bind(run_id=run_id, thread_id=thread_id, mode=mode)
        self._listening = bool(sink)
        self._chatty = self._listening or self.log.enabled("debug")
        # Whether RunStarted/RunFinished go anywhere (a listener, an info log line).
        self._tells_runs = self._chatty or self.log.enabled("info")
        self.calls: list[NodeCall] = []
        self._loads: list[Mark] = []
        self._failures_logged: dict[int, int] = {}  # step -> node_failed lines so far
        self._emit: RunStream | None = None  # node calls' chunk writer, made once
        self._channel: ChunkChannel | None = None  # cpu workers' chunks, opened on first use
        self._state: Any = None  # the state the running step started from (debug chunks)
        self._wrote = True  # whether the last step wrote anything (a values chunk after it)
        # OpenTelemetry spans (engine.otel): None unless the extra is installed and configured.
        self._spans = spans_for(run_id, thread_id=thread_id, mode=mode)
        #: Whether ``call_started`` does anything (an event, a debug chunk, a span): a
        #: fan-out of thousands of calls skips it when nothing would come of it.
        self.tells_calls = self._chatty or chunks is not None or self._spans is not None

    def __repr__(self) -> str:
        return f"<Recorder run={self.run_id} calls={len(self.calls)}>"

    def _tell(self, event: Event, level: str = "debug") -> None:
        if self._listening:
            self._sink(event)
        getattr(self.log, level)(event.type, **event.fields())

    # -- stream chunks -------------------------------------------------------------

    def values(self, state: Any) -> None:
        """The state a step starts from: a ``values`` chunk; none after a step that wrote
        nothing (LangGraph's rule: the state did not change)."""
        if self.chunks is not None:
            self._state = state  # a debug task's input
            if self._wrote:
                self.chunks("values", state)
            self._wrote = True

    def updates(self, step: int, writes: Iterable[tuple[str, int, Any]]) -> None:
        """A step's writes, ``(node, index, update)`` in (node, Send index) order:
        ``updates`` chunks, ``{node: update}`` (None for a node that wrote nothing), with
        ``"__metadata__": {"cached": True}`` for an update the node cache gave."""
        if self.chunks is None:
            return
        cached = {(c.node, c.index) for c in self.calls if c.step == step and c.cached}
        wrote = False
        for node, index, update in writes:
            empty = update is None or (isinstance(update, Mapping) and not update)
            wrote = wrote or not empty
            chunk = {node: None if empty else update}
            if (node, index) in cached:
                chunk["__metadata__"] = {"cached": True}
            self.chunks("updates", chunk)
        self._wrote = wrote

    def writer(self) -> RunStream | None:
        """The run's ``(mode, chunk)`` writer for node calls, from the loop's thread or any
        other (a chunk from another thread is handed to the loop, in order); None when
        nobody streams."""
        chunks = self.chunks
        if chunks is None:
            return None
        if self._emit is None:
            loop = asyncio.get_running_loop()
            loop_thread = threading.get_ident()

            def emit(mode: str, chunk: Any) -> None:
                if threading.get_ident() == loop_thread:
                    chunks(mode, chunk)
                else:
                    loop.call_soon_threadsafe(chunks, mode, chunk)

            self._emit = RunStream(emit)
        return self._emit

    def stream_info(
        self, node: str, step: int, index: int = -1, indexes: tuple[int, ...] = ()
    ) -> StreamInfo | None:
        """What a cpu-lane call (a chunk of Send calls: ``indexes``) sends to its worker to
        stream its chunks while it runs: the run's chunk channel, opened at the first such
        call; None when nobody streams."""
        emit = self.writer()
        if emit is None:
            return None
        if self._channel is None:
            self._channel = ChunkChannel(emit)
        return self._channel.info(node, step, index, indexes)

    def close_channel(self) -> None:
        """Close the run's chunk channel, if a cpu call opened one."""
        if self._channel is not None:
            self._channel.close()

    # -- debug chunks ----------------------------------------------------------------

    def _debug_task(self, call: Call) -> None:
        assert self.chunks is not None
        task = call.task
        ident = task_id(self.run_id, call.step, task.node, task.index)
        arg = task.payload if task.has_payload else StateInput(self._state)
        self.chunks("debug", debug_task(call.step, ident, task.node, task.index, arg))

    def _debug_result(self, out: Outcome, error: BaseException | None) -> None:
        assert self.chunks is not None
        call = out.call
        ident = task_id(self.run_id, call.step, call.task.node, call.task.index)
        value = None if error is not None else out.value
        self.chunks("debug", debug_result(call.step, ident, call.task.node, value, error))

    # -- the run -------------------------------------------------------------------

    def run_started(self, step: int, *, resumed: bool) -> None:
        if self._spans is not None:
            self._spans.run_started(step, resumed=resumed)
        if not self._tells_runs:
            return
        self._tell(
            RunStarted(
                run_id=self.run_id,
                time=self._clock.time(),
                thread_id=self.thread_id,
                mode=self.mode,
                step=step,
                resumed_from_step=step if resumed else None,
            ),
            "info",
        )

    def run_finished(
        self, status: RunStatus, steps: int, wall_s: float, error: BaseException | None
    ) -> None:
        self.close_channel()
        if self._watchdog is not None:
            self._watchdog.flush()  # a block in the last step, before RunFinished
        if self._tells_runs:
            self._tell(
                RunFinished(
                    run_id=self.run_id,
                    time=self._clock.time(),
                    status=status,
                    steps=steps,
                    wall_s=wall_s,
                    error=f"{type(error).__name__}: {error}" if error is not None else None,
                ),
                "info",
            )
        if self._spans is not None:
            marks = self._watchdog.marks() if self._watchdog is not None else []
            self._spans.run_finished(status, steps, error, marks)

    # -- steps ---------------------------------------------------------------------

    def step_started(self, step: int, tasks: Sequence[Task]) -> None:
        """A step starts running ``tasks`` (its span, StepStarted with their nodes)."""
        if self._spans is None and not self._chatty:
            return
        nodes = [t.node for t in tasks]
        if self._spans is not None:
            self._spans.step_started(step, nodes)
        if self._chatty:
            self._tell(
                StepStarted(run_id=self.run_id, time=self._clock.time(), step=step, nodes=nodes)
            )

    def step_finished(self, step: int, duration_s: float, ok: bool) -> None:
        if self._spans is not None:
            self._spans.step_finished(step, ok)
        logged = self._failures_logged.pop(step, 0)
        if logged > FAILURES_LOGGED_PER_STEP:
            # A fan-out that fails thousands of times must not print thousands of lines.
            self.log.warning(
                "node_failures_summarised",
                step=step,
                failed_attempts=logged,
                as_warnings=FAILURES_LOGGED_PER_STEP,
                hint="the rest were logged at debug level; the step's NodeError names the first",
            )
        if self._chatty:
            self._tell(
                StepFinished(
                    run_id=self.run_id,
                    time=self._clock.time(),
                    step=step,
                    duration_s=duration_s,
                    ok=ok,
                )
            )

    # -- calls ---------------------------------------------------------------------

    def call_started(self, call: Call, lane: str) -> None:
        if self.chunks is not None and call.attempt == 1:
            self._debug_task(call)
        if self._spans is not None:
            self._spans.call_started(call, lane)
        if self._chatty:
            task = call.task
            self._tell(
                NodeStarted(
                    run_id=self.run_id,
                    time=self._clock.time(),
                    step=call.step,
                    node=task.node,
                    index=task.index,
                    lane=lane,
                    attempt=call.attempt,
                )
            )

    def call_finished(self, out: Outcome) -> None:
        """A call that succeeded: its record, its worker_init build, NodeFinished."""
        record = self._keep(out)
        if self.chunks is not None:
            self._debug_result(out, None)
            if self._emit is not None and wanted():  # messages a node returned
                task = out.call.task
                stream = CallStream(self._emit, task.node, out.call.step, task.index)
                node_output(self._emit, stream, out.value)
        if self._spans is not None:
            self._spans.call_settled(record)
        if self._chatty:
            self._tell(
                NodeFinished(
                    run_id=self.run_id,
                    time=self._clock.time(),
                    step=record.step,
                    node=record.node,
                    index=record.index,
                    lane=record.lane,
                    attempt=record.attempt,
                    duration_s=record.end - record.start,
                    pid=record.pid,
                    cached=record.cached,
                )
            )

    def call_failed(
        self, out: Outcome, error: NodeError | InvalidUpdateError, *, will_retry: bool
    ) -> None:
        """A failed attempt: its record, NodeFailed; a warning for the step's first few."""
        record = self._keep(out)
        if self.chunks is not None and not will_retry:
            self._debug_result(out, out.failure.error if out.failure is not None else error)
        if self._spans is not None:
            self._spans.call_settled(record, error, will_retry=will_retry)
        logged = self._failures_logged.get(record.step, 0) + 1
        self._failures_logged[record.step] = logged
        error_type = getattr(error, "error_type", "") or type(error).__name__
        message = error.args[0] if error.args else str(error)
        self._tell(
            NodeFailed(
                run_id=self.run_id,
                time=self._clock.time(),
                step=record.step,
                node=record.node,
                index=record.index,
                lane=record.lane,
                attempt=record.attempt,
                error=f"{error_type}: {message}",
                error_type=error_type,
                will_retry=will_retry,
            ),
            "warning" if logged <= FAILURES_LOGGED_PER_STEP else "debug",
        )

    def budget_waited(self, call: Call, wait: BudgetWait) -> None:
        if self._chatty:
            self._tell(
                BudgetWaited(
                    run_id=self.run_id,
                    time=self._clock.time(),
                    step=call.step,
                    node=call.task.node,
                    index=call.task.index,
                    resources=list(wait.keys),
                    wait_s=wait.waited_s,
                )
            )

    def kept(self, records: list[NodeCall]) -> None:
        """Successful calls' records, in a run nobody watches call by call (not
        ``tells_calls``) and without a worker_init build: ``call_finished`` for each."""
        self.calls.extend(records)

    def _keep(self, out: Outcome) -> NodeCall:
        """Keep an attempt's record (and its worker_init build, if it paid for one)."""
        self.calls.append(out.record)
        if out.load is not None:
            self._loaded(out)
        return out.record

    def _loaded(self, out: Outcome) -> None:
        """A worker_init build: a slice on the row of the thread that built it, an event."""
        load = out.load
        assert load is not None
        record = out.record
        self._loads.append(
            load_mark(
                load.name,
                load.start,
                load.end,
                pid=record.pid,
                thread=load.thread or record.thread,
                host=record.host,
                node=record.node,
            )
        )
        self._tell(
            WorkerLoaded(
                run_id=self.run_id,
                time=load.end,
                node=record.node,
                resource=load.name,
                pid=record.pid,
                load_s=max(0.0, load.end - load.start),
            ),
            "info",
        )

    # -- the trace -----------------------------------------------------------------

    def trace(self) -> Trace:
        """The run's trace: every call record, and the marks of what was not a call."""
        marks: list[Mark] = []
        if self._watchdog is not None:
            marks += self._watchdog.marks()
        if self._budgets is not None:
            marks += self._budgets.marks()
        marks += self._loads
        return Trace(
            calls=tuple(self.calls),
            run_id=self.run_id,
            driver_pid=os.getpid(),
            marks=tuple(sorted(marks, key=lambda m: m.start)),
        )


class Nobody:
    """The event sink of a run nobody observes: false, so per-call events are skipped."""

    def __call__(self, event: Any) -> None:
        return None

    def __bool__(self) -> bool:
        return False


__all__ = ["FAILURES_LOGGED_PER_STEP", "EventSink", "Nobody", "Recorder", "Sink"]

"""OpenTelemetry spans for runs, steps and node calls (the ``otel`` extra).

::

    Recorder (driver)                       RunSpans
      run_started / run_finished    ---->   "engine.run"   (child of the caller's span)
      step_started / step_finished  ---->   "engine.step"  (child of the run)
      call_started                  ---->   "engine.node"  (child of its step), made the
                                              call task's current span, so
      cpu lane: frames.request(...)           carrier() -> W3C traceparent in the request
      call_finished / call_failed   ---->   attributes, events (retry, timeout, crash), end
                                            loop-blocked marks -> events on the run span
    worker (worker.run_calls)
      worker_span(carrier)          ---->   "engine.worker" (child of the node's span):
                                              the node's own spans nest under it

Spans go to the global tracer provider, as OpenTelemetry asks of libraries:
nothing to switch on beyond configuring OpenTelemetry in the application (and,
for spans from worker processes, in the workers: a ``worker_init`` or the
workers' environment). Without ``opentelemetry-api`` installed, ``AVAILABLE``
is false and the recorder never builds a ``RunSpans``: a run pays one flag test
per event. This module imports only the standard library at import time (worker
processes import it).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from typing import TYPE_CHECKING, Any, cast

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate
    from opentelemetry import trace as otel_trace
except ImportError:  # the extra is not installed: no spans, no cost
    AVAILABLE = False
else:
    AVAILABLE = True

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from .events import RunStatus
    from .lanes.calls import Call
    from .marks import Mark
    from .trace import NodeCall

#: The instrumentation scope's name (``trace.get_tracer("engine", version)``).
SCOPE = "engine"

CallKey = tuple[int, str, int, int]  # step, node, Send index, attempt


def spans_for(run_id: str, *, thread_id: str | None, mode: str) -> RunSpans | None:
    """A run's spans, or None when nobody would see them: OpenTelemetry not installed,
    or no tracer provider configured (the API's default, which records nothing)."""
    if not AVAILABLE:
        return None
    provider = otel_trace.get_tracer_provider()
    if isinstance(provider, otel_trace.ProxyTracerProvider | otel_trace.NoOpTracerProvider):
        return None
    return RunSpans(run_id, thread_id=thread_id, mode=mode)


def _tracer() -> Any:
    try:
        version: str | None = metadata.version("engine")
    except metadata.PackageNotFoundError:  # run from a source tree, not installed
        version = None
    return otel_trace.get_tracer(SCOPE, version)


class RunSpans:
    """One run's spans: the run, its steps, its calls' attempts.

    Invariant: ``_steps`` and ``_calls`` hold the spans started and not yet
    ended; a call's span is the current span of the task that runs it (from
    ``call_started`` until it settles) unless several calls started in one
    task (a batch sent as one submission), where the step's span is current.
    """

    def __init__(self, run_id: str, *, thread_id: str | None, mode: str) -> None:
        self._tracer = _tracer()
        self._attrs: dict[str, Any] = {"engine.run_id": run_id, "engine.mode": mode}
        if thread_id is not None:
            self._attrs["engine.thread_id"] = thread_id
        self._run: Span | None = None
        self._steps: dict[int, Span] = {}
        self._calls: dict[CallKey, tuple[Span, object, asyncio.Task[Any] | None]] = {}

    def __repr__(self) -> str:
        return f"<RunSpans open steps={len(self._steps)} calls={len(self._calls)}>"

    # -- the run and its steps -----------------------------------------------------

    def run_started(self, step: int, *, resumed: bool) -> None:
        attrs = dict(self._attrs, **{"engine.step": step, "engine.resumed": resumed})
        self._run = self._tracer.start_span("engine.run", attributes=attrs)

    def run_finished(
        self, status: RunStatus, steps: int, error: BaseException | None, marks: list[Mark]
    ) -> None:
        span = self._run
        if span is None:
            return
        for key in list(self._calls):  # a cancelled run leaves calls unsettled
            self._end_call(key, "cancelled")
        for step in list(self._steps):
            self._steps.pop(step).end()
        for mark in marks:
            if mark.kind == "instant" and mark.cat == "watchdog":
                span.add_event(
                    "engine.loop_blocked",
                    {
                        "engine.lag_s": mark.value,
                        "engine.nodes": [str(n) for n in mark.args.get("nodes", ())],
                        "engine.culprit": str(mark.args.get("culprit") or ""),
                    },
                    timestamp=int(mark.start * 1e9),
                )
        span.set_attribute("engine.steps", steps)
        span.set_attribute("engine.outcome", str(status))
        if error is not None:
            span.record_exception(error)
            span.set_status(otel_trace.StatusCode.ERROR, f"{type(error).__name__}: {error}")
        span.end()
        self._run = None

    def step_started(self, step: int, nodes: list[str]) -> None:
        parent = otel_trace.set_span_in_context(self._run) if self._run is not None else None
        self._steps[step] = self._tracer.start_span(
            "engine.step",
            context=parent,
            attributes={**self._attrs, "engine.step": step, "engine.nodes": nodes},
        )

    def step_finished(self, step: int, ok: bool) -> None:
        span = self._steps.pop(step, None)
        if span is None:
            return
        span.set_attribute("engine.outcome", "ok" if ok else "failed")
        if not ok:
            span.set_status(otel_trace.StatusCode.ERROR)
        span.end()

    # -- calls ---------------------------------------------------------------------

    def call_started(self, call: Call, lane: str) -> None:
        task = call.task
        step = self._steps.get(call.step) or self._run
        parent = otel_trace.set_span_in_context(step) if step is not None else None
        span = self._tracer.start_span(
            "engine.node",
            context=parent,
            attributes={
                "engine.node": task.node,
                "engine.step": call.step,
                "engine.index": task.index,
                "engine.lane": lane,
                "engine.attempt": call.attempt,
            },
        )
        # The call's span becomes its task's current span: what the node's own
        # spans nest under on the loop, and what the cpu lane sends to the worker.
        # Several calls started in one task are one submission (a batch): the
        # step is their common parent there.
        here = _current_task()
        batch = any(t is here for _, _, t in self._calls.values()) and here is not None
        current = parent if batch and parent is not None else otel_trace.set_span_in_context(span)
        token = otel_context.attach(current)
        self._calls[_key(call)] = (span, None if batch else token, here)

    def call_settled(
        self, record: NodeCall, error: BaseException | None = None, *, will_retry: bool = False
    ) -> None:
        """A settled attempt: its numbers, and for a failure its events and status."""
        key = (record.step, record.node, record.index, record.attempt)
        found = self._calls.get(key)
        if found is None:
            return
        span = found[0]
        span.set_attributes(
            {
                "engine.pid": record.pid,
                "engine.host": record.host,
                "engine.bytes_in": record.bytes_in,
                "engine.bytes_out": record.bytes_out,
                "engine.cache_hit": record.cached,
                "engine.cpu_s": record.cpu_s,
            }
        )
        if error is None:
            self._end_call(key, "cached" if record.cached else "ok")
            return
        outcome = _failure_kind(error)
        attrs = {"engine.error": str(error).split("\n", 1)[0][:500]}
        if outcome == "timeout":
            span.add_event("engine.timeout", attrs)
        elif outcome == "crashed":
            span.add_event("engine.crash", {**attrs, "engine.exitcode": _exitcode(error)})
        if will_retry:
            span.add_event("engine.retry", {"engine.next_attempt": record.attempt + 1})
        span.record_exception(error)
        span.set_status(otel_trace.StatusCode.ERROR, attrs["engine.error"])
        self._end_call(key, "retry" if will_retry else outcome)

    def _end_call(self, key: CallKey, outcome: str) -> None:
        span, token, task = self._calls.pop(key)
        span.set_attribute("engine.outcome", outcome)
        span.end()
        # Detach only where it was attached and while it is still current: a batch's
        # calls settle in another order than they started.
        here = task is _current_task()
        if token is not None and here and otel_trace.get_current_span() is span:
            otel_context.detach(cast(Any, token))


def _key(call: Call) -> CallKey:
    return (call.step, call.task.node, call.task.index, call.attempt)


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _failure_kind(error: BaseException) -> str:
    # By name: workers import this module, and engine.errors is not theirs to import.
    kinds = {c.__name__ for c in type(error).__mro__}
    if "NodeTimeoutError" in kinds:
        return "timeout"
    if "WorkerCrashedError" in kinds:
        return "crashed"
    return "failed"


def _exitcode(error: BaseException) -> int:
    code = getattr(error, "exitcode", None)
    return code if isinstance(code, int) else 0


# -- across the process boundary ----------------------------------------------------


def carrier() -> dict[str, str] | None:
    """The current span's context as W3C headers (``traceparent``), to travel with a
    cpu call to its worker; None without OpenTelemetry or without a current span."""
    if not AVAILABLE or not otel_trace.get_current_span().get_span_context().is_valid:
        return None
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers or None


@contextmanager
def worker_span(headers: Mapping[str, str] | None) -> Iterator[None]:
    """In a worker: an ``engine.worker`` span, child of the node's span in the driver,
    current while the node runs (its own spans nest under it). Nothing without headers
    or without OpenTelemetry in the worker."""
    if headers is None or not AVAILABLE:
        yield
        return
    parent = propagate.extract(dict(headers))
    attrs = {"engine.pid": os.getpid(), "engine.host": os.uname().nodename}
    with _tracer().start_as_current_span("engine.worker", context=parent, attributes=attrs):
        yield


__all__ = ["AVAILABLE", "SCOPE", "RunSpans", "carrier", "spans_for", "worker_span"]

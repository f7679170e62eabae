"""OpenTelemetry spans (engine.otel): runs, steps and node calls in the application's tracer
provider, parented across the process boundary, with events for what went wrong."""

from __future__ import annotations

import operator
import subprocess
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra and opentelemetry-sdk (dev)")

from loky import ProcessPoolExecutor
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from pydantic import BaseModel

import engine
from engine import START, Graph, RetryPolicy
from engine.otel import spans_for
from tests import crashers, otel_nodes


class S(BaseModel):
    n: int = 0
    seen: Annotated[list[Any], operator.add] = []


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The application's tracer provider, exporting to memory; the API's default after."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # The API lets a provider be set once per process; tests reset it as OTel's own do.
    before = (trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE._done)
    trace._TRACER_PROVIDER_SET_ONCE._done = False
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE._done = before


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def fetch(state: S) -> dict[str, Any]:
    return {"n": state.n + 1}


def fan_out() -> Graph[S]:
    g = Graph(S)
    g.add_node("fetch", fetch)
    g.add_node("score", otel_nodes.traced, lane="cpu")
    g.add_edge(START, "fetch")
    g.add_edge(START, "score")
    return g


class TestSpans:
    def test_run_step_and_node_spans_nest_under_the_callers_span(
        self, spans: InMemorySpanExporter
    ) -> None:
        """A run is a span under the caller's, its steps under it, each call under its step,
        with the call's node, step, lane, attempt, process, bytes, cache hit and outcome."""
        app = fan_out().compile()
        with trace.get_tracer("app").start_as_current_span("request") as outer:
            result = app.run({}, mode="parallel")
        (run,) = named(spans, "engine.run")
        (step,) = named(spans, "engine.step")
        calls = {s.attributes["engine.node"]: s for s in named(spans, "engine.node")}
        assert parent_id(run) == outer.get_span_context().span_id
        assert parent_id(step) == run.context.span_id
        assert set(calls) == {"fetch", "score"}
        records = {c.node: c for c in result.trace.calls}
        for node, span in calls.items():
            assert parent_id(span) == step.context.span_id
            a = span.attributes
            assert (a["engine.step"], a["engine.attempt"], a["engine.outcome"]) == (0, 1, "ok")
            assert a["engine.lane"] == records[node].lane
            assert a["engine.pid"] == records[node].pid
            assert a["engine.host"] == records[node].host
            assert a["engine.cache_hit"] is False
        assert calls["score"].attributes["engine.bytes_in"] > 0
        assert calls["score"].attributes["engine.bytes_out"] > 0
        assert calls["score"].attributes["engine.pid"] != result.trace.driver_pid
        assert run.attributes["engine.outcome"] == "done"

    def test_a_span_opened_in_a_cpu_node_nests_under_its_node_span(
        self, spans: InMemorySpanExporter
    ) -> None:
        """The node's span context travels with the call: in the worker, an engine.worker
        span is its child, and the node's own span nests under that."""
        pool = ProcessPoolExecutor(max_workers=2, initializer=otel_nodes.install_provider)
        try:
            result = fan_out().compile().run({}, mode="parallel", executor=pool)
        finally:
            pool.shutdown(wait=True)
        (node,) = [s for s in named(spans, "engine.node") if s.attributes["engine.node"] == "score"]
        (seen,) = result.state.seen
        mine, around = seen["mine"], seen["around"]
        assert around["name"] == "engine.worker"
        assert around["parent_id"] == node.context.span_id
        assert mine["parent_id"] == around["span_id"]
        assert mine["trace_id"] == node.context.trace_id

    @pytest.mark.parametrize("lane", ["io", "thread", "inline"])
    def test_a_span_opened_in_a_node_in_the_driver_nests_under_its_node_span(
        self, spans: InMemorySpanExporter, lane: str
    ) -> None:
        """On the loop, on a thread, inline: the node's span is current while it runs."""

        async def on_loop(state: S) -> dict[str, Any]:
            with trace.get_tracer("user.code").start_as_current_span("user work"):
                return {"n": 1}

        def off_loop(state: S) -> dict[str, Any]:
            with trace.get_tracer("user.code").start_as_current_span("user work"):
                return {"n": 1}

        g = Graph(S)
        g.add_node("work", on_loop if lane == "io" else off_loop, lane=lane)
        g.add_edge(START, "work")
        g.compile().run({}, mode="parallel")
        (node,) = named(spans, "engine.node")
        (mine,) = named(spans, "user work")
        assert parent_id(mine) == node.context.span_id

    async def test_a_cancelled_run_ends_its_spans(self, spans: InMemorySpanExporter) -> None:
        """Cancelled mid-call: the call's, the step's and the run's spans all end."""
        import asyncio

        g = Graph(S)
        g.add_node("slow", otel_nodes.too_slow)
        g.add_edge(START, "slow")
        run = asyncio.create_task(g.compile().arun({}))
        await asyncio.sleep(0.3)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        (node,) = named(spans, "engine.node")
        (run_span,) = named(spans, "engine.run")
        assert len(named(spans, "engine.step")) == 1
        assert node.attributes["engine.outcome"] in ("cancelled", "failed")
        assert run_span.attributes["engine.outcome"] == "cancelled"
        assert trace.get_current_span() is trace.INVALID_SPAN  # nothing left current

    def test_on_a_dask_worker_too(self, spans: InMemorySpanExporter) -> None:
        """The context travels with the call to a Dask worker the same way."""
        pytest.importorskip("distributed")
        from engine.backends.dask import dask_executor

        backend = dask_executor(n_workers=1, threads_per_worker=1)
        with backend:
            backend.client.run(otel_nodes.install_provider)
            result = fan_out().compile().run({}, mode="parallel", executor=backend.executor)
        (node,) = [s for s in named(spans, "engine.node") if s.attributes["engine.node"] == "score"]
        (seen,) = result.state.seen
        assert seen["around"]["name"] == "engine.worker"
        assert seen["around"]["parent_id"] == node.context.span_id
        assert seen["mine"]["parent_id"] == seen["around"]["span_id"]

    def test_a_batch_of_calls_nests_under_its_step(self, spans: InMemorySpanExporter) -> None:
        """Calls sent to a worker as one submission each still get a span under the step."""
        g = Graph(S)
        g.add_node("fan", lambda s: None, lane="inline")
        g.add_node("score", otel_nodes.traced, lane="cpu")
        g.add_edge(START, "fan")
        g.add_conditional_edges("fan", lambda s: [engine.Send("score", {}) for _ in range(40)])
        result = g.compile().run({}, mode="parallel")
        assert len(result.state.seen) == 40
        steps = {s.attributes["engine.step"]: s for s in named(spans, "engine.step")}
        scored = [s for s in named(spans, "engine.node") if s.attributes["engine.node"] == "score"]
        assert len(scored) == 40
        assert {parent_id(s) for s in scored} == {steps[1].context.span_id}

    def test_a_cache_hit_says_so(self, spans: InMemorySpanExporter) -> None:
        """A call the node cache answered: engine.cache_hit true, outcome cached."""
        g = Graph(S)
        g.add_node("fetch", fetch, cache_policy=engine.CachePolicy())
        g.add_edge(START, "fetch")
        app = g.compile(cache=engine.InMemoryCache())
        app.run({}, mode="parallel")
        app.run({}, mode="parallel")
        first, second = named(spans, "engine.node")
        assert (first.attributes["engine.cache_hit"], first.attributes["engine.outcome"]) == (
            False,
            "ok",
        )
        assert (second.attributes["engine.cache_hit"], second.attributes["engine.outcome"]) == (
            True,
            "cached",
        )

    def test_a_streamed_run_streams_and_traces_its_cpu_calls(
        self, spans: InMemorySpanExporter
    ) -> None:
        """A cpu node's custom chunks and its span context share the call's request."""
        from tests.test_streaming import ours

        chunks = list(ours("cpu").stream({"x": 1, "log": []}, stream_mode="custom"))
        assert {"progress": "a"} in chunks and "b-chunk" in chunks
        nodes = {s.attributes["engine.node"]: s for s in named(spans, "engine.node")}
        assert nodes["a"].attributes["engine.lane"] == "cpu"
        assert nodes["a"].attributes["engine.outcome"] == "ok"


class TestEvents:
    def test_a_retried_attempt_says_so(self, spans: InMemorySpanExporter) -> None:
        """A failed attempt that runs again: an error span with an engine.retry event."""
        tries: list[int] = []

        async def flaky(state: S) -> dict[str, Any]:
            tries.append(1)
            if len(tries) == 1:
                raise ConnectionError("reset by peer")
            return {"n": 1}

        g = Graph(S)
        g.add_node("flaky", flaky, retry=RetryPolicy(max_attempts=2, initial_interval=0.0))
        g.add_edge(START, "flaky")
        g.compile().run({}, mode="parallel")
        first, second = sorted(
            named(spans, "engine.node"), key=lambda s: s.attributes["engine.attempt"]
        )
        assert first.attributes["engine.outcome"] == "retry"
        assert first.status.status_code == trace.StatusCode.ERROR
        assert [e.name for e in first.events] == ["engine.retry", "exception"]
        assert second.attributes["engine.outcome"] == "ok"

    def test_a_timeout_and_a_crash_are_events(self, spans: InMemorySpanExporter) -> None:
        """A call past its timeout and a worker that died under a call: events on their spans."""
        g = Graph(S)
        g.add_node("slow", otel_nodes.too_slow, timeout=0.2)
        g.add_edge(START, "slow")
        with pytest.raises(engine.NodeTimeoutError):
            g.compile().run({}, mode="parallel")
        (slow,) = named(spans, "engine.node")
        assert slow.attributes["engine.outcome"] == "timeout"
        assert "engine.timeout" in [e.name for e in slow.events]

        spans.clear()
        g = Graph(S)
        g.add_node("dies", crashers.hard_exit, lane="cpu")
        g.add_edge(START, "dies")
        with pytest.raises(engine.WorkerCrashedError):
            g.compile().run({}, mode="parallel")
        crashes = [
            e for s in named(spans, "engine.node") for e in s.events if e.name == "engine.crash"
        ]
        assert crashes
        (run,) = named(spans, "engine.run")
        assert run.attributes["engine.outcome"] == "failed"
        assert run.status.status_code == trace.StatusCode.ERROR

    def test_a_blocked_loop_is_an_event_on_the_run(self, spans: InMemorySpanExporter) -> None:
        """The watchdog's LoopBlocked: an engine.loop_blocked event naming the node."""
        g = Graph(S)
        g.add_node("hog", otel_nodes.block_the_loop, lane="inline")
        g.add_edge(START, "hog")
        g.compile().run({}, mode="parallel", loop_threshold=0.1)
        (run,) = named(spans, "engine.run")
        blocked = [e for e in run.events if e.name == "engine.loop_blocked"]
        assert blocked
        assert "hog" in blocked[0].attributes["engine.nodes"]


class TestWithoutIt:
    def test_no_provider_configured_builds_no_spans(self) -> None:
        """The API's default provider records nothing: a run builds no RunSpans at all."""
        assert spans_for("r", thread_id=None, mode="parallel") is None

    def test_the_engine_runs_without_the_extra(self) -> None:
        """Without opentelemetry installed the engine imports, runs cpu calls and sends no
        context (the import is guarded once)."""
        code = (
            "import sys; sys.modules['opentelemetry'] = None\n"
            "import engine, engine.otel as o\n"
            "from tests import nodes\n"
            "assert not o.AVAILABLE and o.carrier() is None\n"
            "from pydantic import BaseModel\n"
            "class C(BaseModel):\n"
            "    count: int = 0\n"
            "    items: list[str] = []\n"
            "g = engine.Graph(C)\n"
            "g.add_node('bump', nodes.bump, lane='cpu')\n"
            "g.add_edge(engine.START, 'bump')\n"
            "r = g.compile().run({}, mode='parallel')\n"
            "assert r.state.count == 1 and r.trace.calls[0].pid != r.trace.driver_pid\n"
            "print('ok')\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.stdout.strip() == "ok", out.stderr

"""Nodes and a worker initializer for tests/test_otel.py: importable by worker processes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider


def install_provider() -> None:
    """A worker's OpenTelemetry setup, as an application does it (an executor initializer)."""
    trace.set_tracer_provider(TracerProvider())


def _ids(span: Any) -> dict[str, Any]:
    ctx = span.get_span_context()
    parent = span.parent if isinstance(span, ReadableSpan) else None
    return {
        "name": getattr(span, "name", ""),
        "trace_id": ctx.trace_id,
        "span_id": ctx.span_id,
        "parent_id": parent.span_id if parent is not None else None,
    }


def traced(state: Any) -> dict[str, Any]:
    """A cpu node that opens its own span: its ids, and those of the span it nests under."""
    around = trace.get_current_span()
    with trace.get_tracer("user.code").start_as_current_span("user work") as mine:
        sum(i * i for i in range(10_000))
        seen = {"mine": _ids(mine), "around": _ids(around)}
    return {"seen": [seen]}


def block_the_loop(state: Any) -> dict[str, Any]:
    """An inline node that holds the event loop (the watchdog's LoopBlocked)."""
    time.sleep(0.4)
    return {"n": 1}


async def too_slow(state: Any) -> dict[str, Any]:
    await asyncio.sleep(5)
    return {"n": 1}

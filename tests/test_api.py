"""The exported surface of the engine package."""

from __future__ import annotations

import engine

EXPECTED = {
    "END", "START", "CheckpointError", "CompiledGraph", "EngineError", "Event", "Explanation",
    "Graph", "GraphError", "InvalidUpdateError", "LaneDecision", "LoopBlocked", "Metrics",
    "NodeCall", "NodeError", "NodeFailed", "NodeFinished", "NodeStarted", "NodeTimeoutError",
    "RecursionLimitError", "RetryPolicy", "RunFinished", "RunResult", "RunStarted", "Send",
    "StepFinished", "StepStarted", "Trace", "WorkerCrashedError", "cpu", "default_executor",
    "inline", "io", "run_sync", "thread",
}  # fmt: skip


def test_exported_names() -> None:
    """engine.__all__ is exactly the documented surface."""
    assert set(engine.__all__) == EXPECTED


def test_every_name_importable() -> None:
    """Every exported name resolves."""
    for name in engine.__all__:
        assert getattr(engine, name) is not None, name


def test_errors_share_one_root() -> None:
    """Every engine error derives from EngineError, and from the matching stdlib type."""
    assert issubclass(engine.NodeTimeoutError, engine.NodeError)
    assert issubclass(engine.NodeTimeoutError, TimeoutError)
    assert issubclass(engine.RecursionLimitError, RecursionError)
    for name in ("GraphError", "InvalidUpdateError", "NodeError", "CheckpointError"):
        assert issubclass(getattr(engine, name), engine.EngineError)

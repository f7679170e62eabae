"""The public surface of the engine package: exported names, entry points, return types."""

from __future__ import annotations

import functools

import pytest

import engine
from engine import START, Graph
from tests.support import State, append

EXPECTED = {
    "END", "START", "BudgetWaited", "CheckpointError", "Clock", "CompiledGraph", "EngineError",
    "Event", "ExplainRow", "Explanation", "FakeClock", "Graph", "GraphError",
    "InvalidUpdateError", "LaneDecision", "LoopBlocked", "Metrics", "NodeCall", "NodeError",
    "NodeFailed", "NodeFinished", "NodeStarted", "NodeTimeoutError", "Rate",
    "RecursionLimitError", "RetryPolicy", "RunFinished", "RunKwargs", "RunOptions",
    "RunResult", "RunStarted", "RunStatus", "Send", "StepFinished", "StepStarted", "Trace",
    "WorkerCrashedError", "WorkerLoaded", "cpu", "default_executor", "inline", "io",
    "run_sync", "thread", "CachePolicy", "InMemoryCache", "NodeCache", "SqliteCache",
    "GraphRecursionError", "Runtime", "get_config", "get_runtime", "node_error_of", "Command",
    "GraphInterrupt", "Interrupt", "interrupt",
}  # fmt: skip


class TestExports:
    def test_exported_names(self) -> None:
        """engine.__all__ is exactly the documented surface."""
        assert set(engine.__all__) == EXPECTED
        assert len(engine.__all__) == len(EXPECTED)  # no name listed twice

    def test_every_name_importable(self) -> None:
        """Every exported name resolves on the package."""
        missing = [name for name in engine.__all__ if not hasattr(engine, name)]
        assert missing == []

    def test_errors_share_one_root(self) -> None:
        """Every engine error derives from EngineError, and from the matching stdlib type."""
        assert issubclass(engine.NodeTimeoutError, engine.NodeError)
        assert issubclass(engine.NodeTimeoutError, TimeoutError)
        assert issubclass(engine.WorkerCrashedError, engine.NodeError)
        assert issubclass(engine.RecursionLimitError, RecursionError)
        assert issubclass(engine.GraphError, ValueError)
        assert issubclass(engine.InvalidUpdateError, ValueError)
        for name in (
            "GraphError",
            "InvalidUpdateError",
            "NodeError",
            "RecursionLimitError",
            "CheckpointError",
        ):
            assert issubclass(getattr(engine, name), engine.EngineError), name

    def test_every_exported_type_and_function_is_documented(self) -> None:
        """Each exported class and function says what it is in a docstring of its own."""
        import inspect

        bare = []
        for name in engine.__all__:
            obj = getattr(engine, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
            # a dataclass without a docstring gets its signature as one: not documentation
            if not doc or not doc.strip() or doc.startswith(f"{name}("):
                bare.append(name)
        assert bare == []

    def test_run_options_and_their_keywords_are_the_same_options(self) -> None:
        """RunKwargs (keywords of arun, ainvoke, invoke, run, astream) lists RunOptions' fields."""
        import dataclasses

        fields = {f.name for f in dataclasses.fields(engine.RunOptions)}
        assert set(engine.RunKwargs.__annotations__) == fields

    def test_start_and_end_are_distinct_strings(self) -> None:
        """START and END are distinct reserved strings."""
        assert isinstance(engine.START, str) and isinstance(engine.END, str)
        assert engine.START != engine.END


def one_node_app() -> engine.CompiledGraph:
    g = Graph(State)
    g.add_node("a", functools.partial(append, "items", "a"), lane="inline")
    g.add_edge(START, "a")
    return g.compile()


class TestEntryPoints:
    async def test_arun_returns_run_result(self) -> None:
        """arun returns a RunResult with the final state, its trace and metrics."""
        r = await one_node_app().arun(State(topic="t"), mode="sequential")
        assert isinstance(r, engine.RunResult)
        assert isinstance(r.state, State) and r.state.items == ["a"] and r.state.topic == "t"
        assert isinstance(r.trace, engine.Trace) and len(r.trace.calls) == 1
        assert isinstance(r.metrics, engine.Metrics) and r.metrics.steps == 1
        assert r.mode == "sequential" and r.thread_id is None and r.run_id

    async def test_ainvoke_returns_state(self) -> None:
        """ainvoke returns only the final state, validated from a dict input."""
        out = await one_node_app().ainvoke({"topic": "t"})
        assert isinstance(out, State) and out.items == ["a"] and out.topic == "t"

    def test_invoke_returns_state(self) -> None:
        """invoke runs from sync code on its own loop and returns the final state."""
        out = one_node_app().invoke({"topic": "t"}, mode="concurrent")
        assert isinstance(out, State) and out.items == ["a"]

    def test_run_returns_run_result(self) -> None:
        """run is the synchronous arun."""
        r = one_node_app().run({}, mode="parallel")
        assert isinstance(r, engine.RunResult) and r.state.items == ["a"] and r.mode == "parallel"

    def test_input_is_not_mutated(self) -> None:
        """The caller's input state is copied, never changed by the run."""
        given = State(items=["x"])
        out = one_node_app().invoke(given)
        assert given.items == ["x"] and out.items == ["x", "a"]

    def test_runs_are_independent(self) -> None:
        """One compiled graph runs any number of times, each run from its own input."""
        app = one_node_app()
        first, second = app.run({}), app.run({})
        assert first.state.items == second.state.items == ["a"]
        assert first.run_id != second.run_id


class TestArguments:
    @pytest.mark.parametrize(
        ("kwargs", "pattern"),
        [
            ({"mode": "turbo"}, "unknown mode 'turbo'"),
            ({"recursion_limit": 0}, "recursion_limit must be >= 1"),
            ({"thread_id": "t"}, "needs a checkpointer"),
        ],
    )
    async def test_bad_arguments(self, kwargs: dict[str, object], pattern: str) -> None:
        """Misused arun arguments are a ValueError saying what to do."""
        with pytest.raises(ValueError, match=pattern):
            await one_node_app().arun({}, **kwargs)  # type: ignore[arg-type]

    async def test_an_options_object_and_keywords_combine(self) -> None:
        """RunOptions gives the run's options; keywords given too replace its values."""
        options = engine.RunOptions(mode="sequential", recursion_limit=5)
        r = await one_node_app().arun({}, options, mode="concurrent")
        assert r.mode == "concurrent" and options.mode == "sequential"
        with pytest.raises(ValueError, match="unknown mode 'turbo'"):
            engine.RunOptions(mode="turbo")  # type: ignore[arg-type]

    async def test_run_finished_says_how_with_a_status_enum(self) -> None:
        """RunFinished.status is a RunStatus (equal to its string value too)."""
        events: list[engine.Event] = []
        await one_node_app().arun({}, on_event=events.append)
        (done,) = [e for e in events if isinstance(e, engine.RunFinished)]
        assert done.status is engine.RunStatus.DONE and done.status == "done"

    async def test_none_input_needs_a_thread(self) -> None:
        """arun(None) means resume, which needs a thread_id."""
        with pytest.raises(ValueError, match="pass thread_id"):
            await one_node_app().arun(None)

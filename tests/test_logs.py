"""The engine's logs: the run's lifecycle, through structlog, never configured by the library."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from engine import START, Graph
from engine.logs import get_logger
from tests.support import State, append, fail


def two_steps() -> Any:
    g = Graph(State)
    g.add_node("a", functools.partial(append, "items", "a"), lane="inline")
    g.add_node("b", functools.partial(append, "items", "b"), lane="thread")
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    return g.compile()


@pytest.fixture
def unconfigured() -> Iterator[None]:
    """structlog as an application that never configured it (restored afterwards)."""
    saved = structlog.get_config()
    was = structlog.is_configured()
    structlog.reset_defaults()
    try:
        yield
    finally:
        if was:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()


class TestLifecycle:
    async def test_every_step_and_node_is_logged_with_its_run(self, mode: str) -> None:
        """run, step and node events carry the run id, and the step and node where there is one."""
        with capture_logs() as logs:
            r = await two_steps().arun({}, mode=mode)
        events = [(e["event"], e.get("step"), e.get("node")) for e in logs]
        assert events == [
            ("run_started", 0, None),
            ("step_started", 0, None),
            ("node_started", 0, "a"),
            ("node_finished", 0, "a"),
            ("step_finished", 0, None),
            ("step_started", 1, None),
            ("node_started", 1, "b"),
            ("node_finished", 1, "b"),
            ("step_finished", 1, None),
            ("run_finished", None, None),
        ]
        assert all(e["run_id"] == r.run_id and e["mode"] == mode for e in logs)
        assert [e["log_level"] for e in logs if e["event"].startswith("node_")] == ["debug"] * 4

    async def test_a_failure_is_a_warning_naming_node_step_and_error(self) -> None:
        """node_failed is a warning with the node, step, attempt, error type and message:
        the NodeFailed event's own fields."""
        g = Graph(State)
        g.add_node("boom", functools.partial(fail, "no"), lane="inline")
        g.add_edge(START, "boom")
        with capture_logs() as logs, pytest.raises(Exception, match="no"):
            await g.compile().arun({})
        (failed,) = [e for e in logs if e["event"] == "node_failed"]
        assert failed["log_level"] == "warning" and failed["node"] == "boom"
        assert failed["step"] == 0 and failed["attempt"] == 1
        assert failed["error_type"] == "RuntimeError"
        assert failed["error"].endswith("raised RuntimeError: no")


class TestUnconfigured:
    async def test_events_go_to_stdlib_logging_at_their_levels(
        self, unconfigured: None, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Without structlog configured, events reach logging.getLogger('engine') as text."""
        with caplog.at_level(logging.DEBUG, logger="engine"):
            r = await two_steps().arun({}, mode="parallel")
        texts = [(rec.levelno, rec.getMessage()) for rec in caplog.records if rec.name == "engine"]
        assert any(lvl == logging.INFO and "event='run_started'" in t for lvl, t in texts)
        started = [t for lvl, t in texts if "event='node_started'" in t]
        assert len(started) == 2 and all(f"run_id='{r.run_id}'" in t for t in started)
        assert all(lvl == logging.DEBUG for lvl, t in texts if "node_" in t)

    async def test_a_quiet_run_prints_nothing(
        self, unconfigured: None, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An app that configured nothing sees no info or debug chatter on stdout or stderr."""
        await two_steps().arun({}, mode="parallel")
        out, err = capsys.readouterr()
        assert out == "" and err == ""

    def test_debug_off_costs_only_the_level_check(
        self, unconfigured: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A disabled level renders nothing: structlog is not even asked for a logger."""
        calls: list[Any] = []
        monkeypatch.setattr(structlog, "wrap_logger", lambda *a, **k: calls.append(a))
        logging.getLogger("engine").setLevel(logging.INFO)
        try:
            get_logger().bind(run_id="r").debug("node_started", node="a")
        finally:
            logging.getLogger("engine").setLevel(logging.NOTSET)
        assert calls == []


@pytest.fixture
def restored() -> Iterator[None]:
    """Whatever structlog and the 'engine' logger were configured to, restored afterwards."""
    saved = structlog.get_config()
    was = structlog.is_configured()
    level = logging.getLogger("engine").level
    try:
        yield
    finally:
        logging.getLogger("engine").setLevel(level)
        if was:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()


class TestConfiguredLevels:
    def test_a_configured_structlog_level_turns_the_per_call_events_off(
        self, restored: None
    ) -> None:
        """structlog filtering at INFO (``make_filtering_bound_logger``): a run builds no
        per-call events (nobody would see them); at DEBUG it does. structlog's stdlib
        bound logger follows the stdlib logger's level; a class that cannot say, always."""
        from engine.recorder import Nobody, Recorder
        from engine.resources import SystemClock

        def tells() -> bool:
            rec = Recorder("r", thread_id=None, mode="parallel", sink=Nobody(), clock=SystemClock())
            return rec.tells_calls

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
        assert not get_logger().enabled("debug") and get_logger().enabled("info")
        assert not tells()
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
        assert get_logger().enabled("debug") and tells()
        structlog.configure(wrapper_class=structlog.stdlib.BoundLogger)
        logging.getLogger("engine").setLevel(logging.WARNING)
        assert not get_logger().enabled("info") and get_logger().enabled("warning")
        logging.getLogger("engine").setLevel(logging.DEBUG)
        assert get_logger().enabled("debug")
        structlog.configure(wrapper_class=structlog.BoundLogger)
        assert get_logger().enabled("debug")

    async def test_events_at_an_enabled_level_still_arrive(self, restored: None) -> None:
        """Filtering at INFO, the run's info events reach structlog; its debug ones do not."""
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
        with capture_logs() as logs:
            await two_steps().arun({}, mode="concurrent")
        events = {e["event"] for e in logs}
        assert {"run_started", "run_finished"} <= events
        assert "node_started" not in events and "node_finished" not in events


class TestNeverConfigures:
    async def test_the_library_never_configures_logging(
        self, mode: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Running a graph never calls structlog.configure or logging.basicConfig."""

        def refuse(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("the library configured logging")

        monkeypatch.setattr(structlog, "configure", refuse)
        monkeypatch.setattr(logging, "basicConfig", refuse)
        r = await two_steps().arun({}, mode=mode)
        assert r.state.items == ["a", "b"]


class TestFailureFlood:
    async def test_a_failing_fan_out_warns_a_few_times_then_summarises(self) -> None:
        """40 failing calls in one step: 10 node_failed warnings, the rest at debug,
        then one warning that says how many there were."""
        from engine import Send

        g = Graph(State)
        g.add_node("start", functools.partial(append, "items", "s"), lane="inline")
        g.add_node("boom", functools.partial(fail, "no"), lane="inline")
        g.add_edge(START, "start")
        g.add_conditional_edges("start", lambda s: [Send("boom", i) for i in range(40)])
        with capture_logs() as logs, pytest.raises(Exception, match="no"):
            await g.compile().arun({})
        failed = [e for e in logs if e["event"] == "node_failed"]
        assert len(failed) == 40
        assert [e["log_level"] for e in failed] == ["warning"] * 10 + ["debug"] * 30
        (summary,) = [e for e in logs if e["event"] == "node_failures_summarised"]
        assert summary["log_level"] == "warning" and summary["failed_attempts"] == 40

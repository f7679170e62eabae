"""memory_per_worker is enforced: a worker that outgrows it is ended, only its call charged.

A node really allocates (zero-filled bytearrays, 10 MB at a time) past a
small limit, beside an innocent sibling in the same step, as Dask's nanny
would see it: the worker's RSS, read from the driver.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from structlog.testing import capture_logs

import tests.crashers as crashers
from engine import START, Graph, Send, WorkerCrashedError
from engine.events import NodeFailed, NodeFinished
from engine.lanes import Lanes
from tests.crashers import FaultState, lines

cloudpickle.register_pickle_by_value(crashers)

pytestmark = pytest.mark.timeout(90)

LIMIT_MB = 300
#: The node grows to 4x the limit, 10 MB a step: the limit must stop it long before.
STEP_MB, STEPS = 10, 4 * LIMIT_MB // 10


def greedy_beside_sibling(side: Path, limit: str | None) -> Graph:
    g = Graph(FaultState)
    g.add_node(
        "greedy",
        functools.partial(crashers.grow, STEP_MB, STEPS, str(side)),
        lane="cpu",
        memory_per_worker=limit,
    )
    g.add_node("sib", functools.partial(crashers.sibling, str(side), "sib", 1.0), lane="cpu")

    def route(state: FaultState) -> list[Any]:
        return [Send("greedy", None), "sib"]

    g.add_conditional_edges(START, route)
    return g


class TestMemoryLimit:
    async def test_worker_past_memory_per_worker_is_ended_and_only_its_call_charged(
        self, tmp_path: Path
    ) -> None:
        """Past the limit its worker dies (WorkerCrashedError names the limit); the sibling ends."""
        side = tmp_path / "side"
        events: list[Any] = []
        app = greedy_beside_sibling(side, f"{LIMIT_MB}MB").compile()
        with capture_logs() as logs, pytest.raises(WorkerCrashedError) as caught:
            await app.arun({}, on_event=events.append)
        err = caught.value
        assert err.node == "greedy" and err.lane == "cpu" and err.step == 0
        assert "memory_per_worker=300 MB" in str(err) and "raise memory_per_worker" in str(err)
        assert err.exitcode == -9 and err.pid is not None
        assert "poison" in "".join(getattr(err, "__notes__", []))  # its 3rd such death
        # Never grew to the end; the sibling ran once, on its first attempt, uncharged.
        assert lines(side) == ["sib"]
        finished = [e for e in events if isinstance(e, NodeFinished) and e.node == "sib"]
        failed = [e for e in events if isinstance(e, NodeFailed) and e.node == "sib"]
        assert [e.attempt for e in finished] == [1] and failed == []
        # Each time it was stopped close to the limit: the machine never held 4x of it.
        over = [e for e in logs if e["event"] == "cpu_worker_over_memory_limit"]
        assert len(over) == 3
        assert all(LIMIT_MB < e["rss_mb"] < 2 * LIMIT_MB for e in over), over

    async def test_the_runs_memory_per_worker_is_enforced_too(self, tmp_path: Path) -> None:
        """``arun(memory_per_worker=...)`` alone (no node hint) ends the greedy worker too."""
        side = tmp_path / "side"
        app = greedy_beside_sibling(side, None).compile()
        with pytest.raises(WorkerCrashedError) as caught:
            await app.arun({}, memory_per_worker=f"{LIMIT_MB}MB")
        assert caught.value.node == "greedy"
        assert "memory_per_worker=300 MB" in str(caught.value)
        assert lines(side) == ["sib"]

    async def test_without_a_limit_the_same_node_grows_to_the_end(self, tmp_path: Path) -> None:
        """The control: no memory_per_worker, no kill; the node holds its 4x and finishes."""
        side = tmp_path / "side"
        result = await greedy_beside_sibling(side, None).compile().arun({})
        assert sorted(lines(side)) == sorted(["sib", f"grew to {STEP_MB * STEPS} MB"])
        assert f"held {STEP_MB * STEPS} MB" in result.state.items


class TestRunnerLimit:
    def test_a_call_may_use_its_nodes_limit_or_the_runs_whichever_is_larger(self) -> None:
        """memory_limit (the run's) is the floor; a node's own larger hint wins."""
        cpu = Lanes("parallel", memory_limit=500).cpu
        assert cpu.limit(None) == 500
        assert cpu.limit(300) == 500 and cpu.limit(800) == 800
        assert Lanes("parallel").cpu.limit(None) is None

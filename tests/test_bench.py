"""The benchmark harness and CLI: JSON schema, the speedup gate, workloads, charts."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.bench import check as gate
from engine.bench.cpushare import Snapshot, free_cores
from engine.bench.harness import BenchConfig, Sample, summarise
from engine.cli import main

pytest.importorskip("httpx")
pytest.importorskip("aiohttp")

# Sizes small enough for the test run: every duration x 0.05.
TINY = "0.05"


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """The CLI configures structlog for itself; give other tests theirs back."""
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def _call(ms: float, *, step: int, lane: str = "cpu", cpu: float | None = None) -> engine.NodeCall:
    s = ms / 1000
    return engine.NodeCall(
        node=f"n{step}{lane}{ms}",
        step=step,
        lane=lane,
        attempt=1,
        pid=1,
        thread=1,
        host="h",
        start=0.0,
        end=s,
        cpu_s=s if cpu is None and lane == "cpu" else (cpu or 0.0),
    )


def _sample(mode: str, wall: float, repeat: int = 0, **kw: Any) -> Sample:
    return Sample(
        workload=kw.pop("workload", "w"),
        mode=mode,
        repeat=repeat,
        wall_s=wall,
        lower_bound_s=kw.pop("lower", 1.0),
        efficiency=kw.pop("efficiency", min(1.0, 1.0 / wall)),
        parallelism=1.0,
        by_lane={"cpu": wall},
        calls=tuple(kw.pop("calls", ())),
        barriers=(),
        t0=None,
        driver_pid=0,
        final={},
        free_cores=kw.pop("free", None),
    )


class TestIdeal:
    def test_cpu_fanout_shape(self) -> None:
        """4 x 0.5 s of CPU then 0.2 s: 2.2 s in a row, 1.2 s on 2 cores, 0.7 s on 4."""
        calls = [_call(500, step=0) for _ in range(4)] + [_call(200, step=1)]
        assert gate.ideal_wall(calls, "sequential", 2) == pytest.approx(2.2)
        assert gate.ideal_wall(calls, "concurrent", 2) == pytest.approx(2.2)
        assert gate.ideal_wall(calls, "parallel", 2) == pytest.approx(1.2)
        assert gate.ideal_wall(calls, "parallel", 4) == pytest.approx(0.7)
        assert gate.ideal_wall(calls, "parallel", 1) == pytest.approx(2.2)

    def test_free_cores_may_be_fractional(self) -> None:
        """With 1.5 cores free the work spreads over 1.5, never better than packing on 2."""
        calls = [_call(500, step=0) for _ in range(4)]
        assert gate.ideal_wall(calls, "parallel", 1.5) == pytest.approx(2.0 / 1.5)

    def test_io_overlaps_in_concurrent_and_parallel(self) -> None:
        """Waiting calls overlap; only cpu-lane work is serialised by the GIL."""
        calls = [_call(1000, step=0, lane="io") for _ in range(4)] + [
            _call(300, step=0),
            _call(300, step=0),
        ]
        assert gate.ideal_wall(calls, "concurrent", 2) == pytest.approx(1.0)
        assert gate.ideal_wall(calls, "sequential", 2) == pytest.approx(4.6)


class TestFloors:
    def test_loads_the_repository_floors(self) -> None:
        """benchmarks/floors.toml parses and covers the three gated workloads."""
        floors = gate.load_floors(Path(__file__).parents[1] / "benchmarks" / "floors.toml")
        assert {f.workload for f in floors} >= {"cpu_fanout", "io_fanout", "ceo_delegation"}

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ('[[floor]]\nworkload="w"\nratio="speed"\nmin=1', "ratio must be one of"),
            ('[[floor]]\nworkload="w"\nratio="speedup"\nmin=1', "needs baseline"),
            ('[[floor]]\nworkload="w"\nratio="efficiency"', "exactly one of"),
            ('[[floor]]\nworkload="w"\nratio="efficiency"\nmin=-1', "positive number"),
            ('[[floor]]\nworkload="w"\nratio="efficiency"\nmin=1\ntypo=1', "unknown keys"),
            ("x = 1", "no [[floor]] entries"),
        ],
    )
    def test_bad_entries_name_the_problem(self, tmp_path: Path, body: str, message: str) -> None:
        """A malformed floors file is a ValueError saying which entry and why."""
        path = tmp_path / "floors.toml"
        path.write_text(body)
        with pytest.raises(ValueError, match=message.replace("[", r"\[")):
            gate.load_floors(path)

    def test_relative_floor_follows_free_cores(self) -> None:
        """A repeat with a neighbour on one core is held to the ideal on the core left."""
        floor = gate.Floor("w", "speedup", "parallel", "sequential", min_of_ideal=0.8)
        calls = [_call(500, step=0) for _ in range(4)]
        quiet = {
            ("w", "sequential"): _sample("sequential", 2.0),
            ("w", "parallel"): _sample("parallel", 1.9, calls=calls, free=2.0),
        }
        busy = {
            ("w", "sequential"): _sample("sequential", 2.0),
            ("w", "parallel"): _sample("parallel", 1.9, calls=calls, free=1.0),
        }
        [v] = gate.check([floor], [quiet], cores=2)
        assert not v.ok and v.best is not None and v.best.threshold == pytest.approx(1.6)
        [v] = gate.check([floor], [busy], cores=2)
        assert v.ok and not v.conclusive  # passes, but says it could not tell

    def test_a_busy_repeat_never_outvotes_a_quiet_one(self) -> None:
        """Lost parallelism on a quiet repeat fails, whatever a busy repeat showed."""
        floor = gate.Floor("w", "speedup", "parallel", "sequential", min_of_ideal=0.8)
        calls = [_call(500, step=0) for _ in range(4)]

        def rep(par_wall: float, free: float) -> dict[tuple[str, str], Sample]:
            return {
                ("w", "sequential"): _sample("sequential", 2.0),
                ("w", "parallel"): _sample("parallel", par_wall, calls=calls, free=free),
            }

        [v] = gate.check([floor], [rep(1.9, 1.0), rep(1.9, 2.0)], cores=2)
        assert not v.ok and v.conclusive
        [v] = gate.check([floor], [rep(1.9, 1.0), rep(1.1, 2.0)], cores=2)
        assert v.ok and v.conclusive and v.best is not None and v.best.free_cores == 2.0

    def test_free_cores_subtracts_only_others(self) -> None:
        """Busy ticks of our own processes never count as a neighbour's."""
        hz = os.sysconf("SC_CLK_TCK")  # ticks per second
        before = Snapshot(busy_ticks=0, ours={1: 0, 2: 0})
        ours_only = Snapshot(busy_ticks=2 * hz, ours={1: hz, 2: hz})
        neighbour = Snapshot(busy_ticks=2 * hz + hz // 2, ours={1: hz, 2: hz})
        assert free_cores(before, ours_only, 1.0, 2) == pytest.approx(2.0)
        assert free_cores(before, neighbour, 1.0, 2) == pytest.approx(1.5)
        assert free_cores(None, neighbour, 1.0, 2) is None


class TestSummary:
    def test_median_min_and_speedup(self) -> None:
        """wall_s is the median, wall_min_s the fastest, speedup vs the sequential median."""
        samples = [_sample("sequential", w, r) for r, w in enumerate((4.0, 4.2, 3.9))]
        samples += [_sample("parallel", w, r) for r, w in enumerate((2.0, 2.2, 1.9))]
        seq, par = summarise(samples)
        assert (seq.wall_s, seq.wall_min_s, seq.speedup) == (4.0, 3.9, 1.0)
        assert (par.wall_s, par.wall_min_s, par.runs) == (2.0, 1.9, 3)
        assert par.speedup == pytest.approx(2.0)

    def test_config_rejects_nonsense(self) -> None:
        """Unknown modes, zero repeats and a scheduler without Dask are refused up front."""
        with pytest.raises(ValueError, match="unknown modes"):
            BenchConfig(workloads=("io_fanout",), modes=("fast",))
        with pytest.raises(ValueError, match="repeat"):
            BenchConfig(workloads=("io_fanout",), repeat=0)
        with pytest.raises(ValueError, match="--executor dask"):
            BenchConfig(workloads=("io_fanout",), scheduler="tcp://x:8786")


# -- end to end through the CLI ---------------------------------------------------------


def _bench(*args: str) -> int:
    return main(["bench", "--scale", TINY, "--repeat", "1", *args])


def test_json_has_the_documented_schema(tmp_path: Path) -> None:
    """--json writes {"machine": {...}, "results": [...]} with exactly the documented keys."""
    out = tmp_path / "bench.json"
    assert _bench("--workload", "io_fanout", "cpu_fanout", "--json", str(out)) == 0
    doc = json.loads(out.read_text())
    assert set(doc) == {"machine", "results"}
    machine = doc["machine"]
    assert machine["cores"] >= 1 and machine["python"] and machine["ms_per_unit"] > 0
    assert machine["versions"]["engine"] == engine.__version__
    keys = {
        "workload",
        "mode",
        "wall_s",
        "wall_min_s",
        "speedup",
        "parallelism",
        "lower_bound_s",
        "efficiency",
        "by_lane",
    }
    rows = doc["results"]
    assert {(r["workload"], r["mode"]) for r in rows} == {
        (w, m)
        for w in ("io_fanout", "cpu_fanout")
        for m in ("sequential", "concurrent", "parallel")
    }
    for r in rows:
        assert set(r) == keys
        assert r["wall_min_s"] <= r["wall_s"] and r["lower_bound_s"] > 0
        assert 0 < r["efficiency"] <= 1 and r["by_lane"]
    seq = [r for r in rows if r["mode"] == "sequential"]
    assert all(r["speedup"] == 1.0 for r in seq)


def _floors(tmp_path: Path, minimum: float) -> str:
    path = tmp_path / "floors.toml"
    path.write_text(
        f'[[floor]]\nworkload = "io_fanout"\nratio = "efficiency"\nmode = "parallel"\n'
        f"min = {minimum}\n"
    )
    return str(path)


def test_check_fails_on_a_floor_too_high(tmp_path: Path, capsys: Any) -> None:
    """--check exits 1 and names the ratio when a floor cannot be met."""
    assert _bench("--check", "--floors", _floors(tmp_path, 5.0)) == 1
    out = capsys.readouterr().out
    assert "speedup gate failed" in out and "io_fanout parallel efficiency" in out


def test_check_passes_on_a_met_floor(tmp_path: Path, capsys: Any) -> None:
    """--check exits 0 when every floor is met, and prints each measured ratio."""
    assert _bench("--check", "--floors", _floors(tmp_path, 0.3)) == 0
    out = capsys.readouterr().out
    assert "speedup gate passed" in out and "io_fanout parallel efficiency" in out


def test_plots_are_pngs(tmp_path: Path) -> None:
    """--plot writes the wall chart and a Gantt chart per mode, all PNG files."""
    assert _bench("--workload", "ceo_delegation", "--plot", str(tmp_path / "charts")) == 0
    names = sorted(p.name for p in (tmp_path / "charts").iterdir())
    assert names == [
        "ceo_delegation-concurrent.png",
        "ceo_delegation-parallel.png",
        "ceo_delegation-sequential.png",
        "walls.png",
    ]
    for name in names:
        assert (tmp_path / "charts" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_writes_a_chrome_trace(tmp_path: Path, capsys: Any) -> None:
    """`run` prints the metrics and writes a Chrome trace with the step barriers marked."""
    trace = tmp_path / "trace.json"
    assert main(["run", "cpu_fanout", "--mode", "parallel", "--quick", "--trace", str(trace)]) == 0
    assert "efficiency" in capsys.readouterr().out
    events = json.loads(trace.read_text())["traceEvents"]
    assert {e["name"] for e in events if e["ph"] == "X"} >= {"ceo", "compile"}
    assert [e["name"] for e in events if e["ph"] == "i"] == ["end of step 0", "end of step 1"]


def test_unknown_workload_is_a_usage_error(capsys: Any) -> None:
    """A typo in a workload name exits 2 with the known names, no traceback."""
    assert main(["bench", "--workload", "nope"]) == 2
    assert "known: io_fanout" in capsys.readouterr().err


# -- the workloads themselves ------------------------------------------------------------


@pytest.fixture
async def llm_url() -> Any:
    from workloads.llm import LLMServer

    async with LLMServer(latency_s=0.0) as server:
        yield server.base_url


async def test_every_graph_ends_in_the_same_state_in_every_mode(llm_url: str) -> None:
    """Each benchmark graph's final state is identical in the three modes."""
    from workloads import genai
    from workloads.graphs import WORKLOADS, Setup

    setup = Setup(base_url=llm_url, cal=genai.calibrate(), scale=0.02)
    for name, spec in WORKLOADS.items():
        app, state = spec.build(setup)
        finals = [
            (await app.arun(state, mode=mode)).state
            for mode in ("sequential", "concurrent", "parallel")
        ]
        assert finals[0] == finals[1] == finals[2], name


async def test_langgraph_peers_end_in_engines_state(llm_url: str) -> None:
    """The LangGraph versions do the same work: their final state equals engine's."""
    pytest.importorskip("langgraph")
    from workloads import genai
    from workloads.graphs import WORKLOADS, Setup
    from workloads.peers import PEERS

    setup = Setup(base_url=llm_url, cal=genai.calibrate(), scale=0.02)
    for name, spec in PEERS.items():
        app, state = WORKLOADS[name].build(setup)
        mine = (await app.arun(state, mode="parallel")).state.model_dump(mode="json")
        peer = spec.build(setup)
        theirs = peer.final(await peer.graph.ainvoke(peer.input))
        assert theirs == mine, name
        assert {c.node for c in peer.recorder.calls} == set(app.plan.nodes), name

"""engine.testing, the pytest plugin: speedup and parallelism checks on a user's graph.

Each test writes a graph module and a test module into a temporary directory
and runs pytest on them in a fresh process, where the plugin is loaded from
its entry point (nothing in the test module registers it) and the process
pool imports the graph module from there.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

GRAPH = '''
import operator
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

from pydantic import BaseModel

from engine import END, START, Graph


class S(BaseModel):
    n: int = 1_000_000
    out: Annotated[list[int], operator.add] = []


def crunch(state: S) -> dict:
    """Pure-Python CPU work: holds the GIL."""
    return {"out": [sum(i * i % 7 for i in range(state.n))]}


def build(lane: str = "cpu"):
    g = Graph(S)
    for k in ("a", "b", "c", "d"):
        g.add_node(k, crunch, lane=lane)
        g.add_edge(START, k)
        g.add_edge(k, END)
    return g.compile(), S()
'''

TESTS = """
from concurrent.futures import ThreadPoolExecutor

from engine.testing import assert_parallel, assert_speedup

from mygraph import build

QUICK = dict(repeats=3, max_repeats=6, deadline_s=25.0, wait_s=2.0)


def test_speedup_healthy():
    app, state = build()
    assert_speedup(app, state, **QUICK)


def test_speedup_cpu_lane_on_threads():
    app, state = build()
    with ThreadPoolExecutor(4) as pool:
        assert_speedup(app, state, executor=pool, **QUICK)


def test_speedup_nodes_on_the_thread_lane():
    app, state = build(lane="thread")
    assert_speedup(app, state, **QUICK)


def test_parallel_healthy(engine_check):
    app, state = build()
    engine_check.parallel(app, state)


def test_speedup_into_pytest_benchmark(engine_check, benchmark):
    app, state = build()
    engine_check.speedup(app, state, max_repeats=6, wait_s=2.0, rounds=2)


def test_parallel_cpu_lane_on_threads():
    app, state = build()
    with ThreadPoolExecutor(4) as pool:
        assert_parallel(app, state, executor=pool)


def test_parallel_nodes_on_the_thread_lane():
    app, state = build(lane="thread")
    assert_parallel(app, state)
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """Run the test module once: test name -> (outcome, message)."""
    where = tmp_path_factory.mktemp("user_project")
    (where / "mygraph.py").write_text(GRAPH)
    (where / "test_mygraph.py").write_text(TESTS)
    report = where / "report.xml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--junitxml",
            str(report),
            "--benchmark-json",
            str(where / "benchmark.json"),
            "--engine-deadline",
            "25",
            "test_mygraph.py",
        ],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert report.exists(), proc.stdout + proc.stderr
    found = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                outcome, message = kind, (node.get("message") or "") + (node.text or "")
        found[case.get("name", "")] = (outcome, message)
    bench = where / "benchmark.json"
    found["benchmark.json"] = ("written", bench.read_text() if bench.exists() else "")
    return found


def test_the_plugin_is_loaded_from_its_entry_point(outcomes: dict[str, tuple[str, str]]) -> None:
    """The engine_check fixture exists in a project that never registered the plugin."""
    outcome, message = outcomes["test_parallel_healthy"]
    assert "fixture 'engine_check' not found" not in message
    assert outcome == "passed", message


def test_a_healthy_graph_passes_or_is_too_busy_to_measure(
    outcomes: dict[str, tuple[str, str]],
) -> None:
    """Four CPU-bound nodes on the cpu lane: the speedup holds, or the machine was too
    busy to time it, which is a skip saying so, never a pass and never a failure."""
    outcome, message = outcomes["test_speedup_healthy"]
    assert outcome in ("passed", "skipped"), message
    if outcome == "skipped":
        assert "too busy to measure a speedup" in message


@pytest.mark.parametrize("check", ["speedup", "parallel"])
def test_a_cpu_lane_forced_onto_threads_fails(
    outcomes: dict[str, tuple[str, str]], check: str
) -> None:
    """executor=ThreadPoolExecutor: the traces show the cpu calls in the driver."""
    outcome, message = outcomes[f"test_{check}_cpu_lane_on_threads"]
    assert outcome == "failure", message
    assert "ParallelismError" in message
    if check == "parallel":
        assert "ran in the driver process (the executor is a thread pool)" in message
    else:
        assert "parallelism lost" in message or "below" in message or "<" in message


@pytest.mark.parametrize("check", ["speedup", "parallel"])
def test_cpu_bound_nodes_on_the_thread_lane_fail(
    outcomes: dict[str, tuple[str, str]], check: str
) -> None:
    """lane='thread' for pure-Python work: named, with the fix, whatever the load."""
    outcome, message = outcomes[f"test_{check}_nodes_on_the_thread_lane"]
    assert outcome == "failure", message
    assert "CPU-bound node(s) a, b, c, d ran on the thread lane" in message
    assert "lane='cpu'" in message


def test_the_speedup_goes_into_pytest_benchmark(outcomes: dict[str, tuple[str, str]]) -> None:
    """With pytest-benchmark's fixture, the mode's runs are its rounds and the verdict is
    in extra_info (the benchmark JSON keeps both, for --benchmark-compare)."""
    import json

    outcome, message = outcomes["test_speedup_into_pytest_benchmark"]
    assert outcome in ("passed", "skipped"), message
    doc = json.loads(outcomes["benchmark.json"][1])
    (entry,) = [b for b in doc["benchmarks"] if b["name"] == "test_speedup_into_pytest_benchmark"]
    assert entry["stats"]["rounds"] == 2
    info = entry["extra_info"]
    assert info["engine_ratio"] == "graph parallel vs sequential"
    assert info["engine_status"] == ("ok" if outcome == "passed" else "unmeasured")

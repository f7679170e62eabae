"""The benchmark harness behind ``python -m engine bench``, ``run`` and ``predict``.

- :mod:`engine.bench.targets`: what runs: a ``Workload``, from ``module:attr``
  (a user's graph) or a built-in name (``workloads.suite`` of a clone).
- :mod:`engine.bench.harness`: run workloads in several modes, repeatedly
  (``run_bench``), and the gate's repeat-until-decided loop (``gate_runs``).
- :mod:`engine.bench.samples`: ``Sample`` (one timed run), ``Result`` (a row).
- :mod:`engine.bench.check`: floors (``benchmarks/floors.toml``) and the CI
  speedup gate's logic, shared with ``engine.testing``.
- :mod:`engine.bench.cpushare`: how many cores other processes left us.
- :mod:`engine.bench.machine`: the machine, and the cpu-lane executor.
- :mod:`engine.bench.peers`: LangGraph versions of a workload, traced.
- :mod:`engine.bench.report`, :mod:`engine.bench.plots`: tables, notes, charts.
- :mod:`engine.bench.commands`: the commands, once ``engine.cli`` parsed them.

This package uses only the engine's public API (``import engine``).
"""

from .check import Floor as Floor
from .check import GatePolicy as GatePolicy
from .check import Verdict as Verdict
from .check import ideal_wall as ideal_wall
from .check import load_floors as load_floors
from .harness import BenchConfig as BenchConfig
from .harness import Report as Report
from .harness import run_bench as run_bench
from .samples import Result as Result
from .samples import Sample as Sample
from .targets import Variant as Variant
from .targets import Workload as Workload

__all__ = [
    "BenchConfig",
    "Floor",
    "GatePolicy",
    "Report",
    "Result",
    "Sample",
    "Variant",
    "Verdict",
    "Workload",
    "ideal_wall",
    "load_floors",
    "run_bench",
]

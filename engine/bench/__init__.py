"""The benchmark harness behind ``python -m engine bench``.

- :mod:`engine.bench.harness`: run workloads in several modes, repeatedly; ``Sample``,
  ``Result``, ``Report`` and the JSON they serialise to.
- :mod:`engine.bench.check`: floors (``benchmarks/floors.toml``) and the CI speedup gate.
- :mod:`engine.bench.cpushare`: how many cores other processes left us during a run.
- :mod:`engine.bench.report`: rich tables and progress.
- :mod:`engine.bench.plots`: matplotlib charts (wall times, Gantt timelines).

The workloads themselves live in the ``workloads`` package, next to ``engine``;
this package imports them only when a benchmark runs.
"""

from .check import Floor as Floor
from .check import GatePolicy as GatePolicy
from .check import Verdict as Verdict
from .check import ideal_wall as ideal_wall
from .check import load_floors as load_floors
from .harness import BenchConfig as BenchConfig
from .harness import Report as Report
from .harness import Result as Result
from .harness import Sample as Sample
from .harness import run_bench as run_bench

__all__ = [
    "BenchConfig",
    "Floor",
    "GatePolicy",
    "Report",
    "Result",
    "Sample",
    "Verdict",
    "ideal_wall",
    "load_floors",
    "run_bench",
]

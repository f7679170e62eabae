"""The chaos run, short: the seed workload on SQLite and PostgreSQL under every kind of fault.

``benchmarks/chaos.py`` (its docstring says what it checks) with 12 runs at small
sizes: worker SIGKILLs, driver SIGKILLs with a resume in a new driver process,
cancels with a resume, and dropped PostgreSQL connections, each caused for real
and fired at random but reproducibly from the seed. The full run's figures are
in docs/faults.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.chaos import run_chaos
from benchmarks.chaos_plan import KINDS, ChaosConfig, make_plan
from tests.conftest import postgres_dsn

BACKENDS = ("sqlite", "postgres")


class TestPlan:
    def test_the_plan_is_a_function_of_the_seed(self) -> None:
        """The same seed plans the same runs and faults; another seed plans others."""
        assert make_plan(40, 5, BACKENDS, 16) == make_plan(40, 5, BACKENDS, 16)
        assert make_plan(40, 5, BACKENDS, 16) != make_plan(40, 6, BACKENDS, 16)

    @pytest.mark.parametrize("seed", range(20))
    def test_a_short_plan_opens_a_run_with_each_kind(self, seed: int) -> None:
        """Each kind of fault is the first of some run (the one sure to fire), with a drop
        only on a PostgreSQL run; backends alternate."""
        plan = make_plan(12, seed, BACKENDS, 16)
        firsts = {run.faults[0].kind for run in plan if run.faults}
        assert firsts == set(KINDS)
        for run in plan:
            assert run.backend == BACKENDS[run.index % 2]
            kinds = [f.kind for f in run.faults]
            assert len(kinds) == len(set(kinds))
            assert "pg_drop" not in kinds or run.backend == "postgres"

    def test_without_postgres_no_drop_is_planned(self) -> None:
        plan = make_plan(12, 1, ("sqlite",), 16)
        assert all(f.kind != "pg_drop" for run in plan for f in run.faults)
        assert {run.faults[0].kind for run in plan if run.faults} == set(KINDS) - {"pg_drop"}


@pytest.mark.postgres
@pytest.mark.timeout(170)
async def test_short_chaos_run(tmp_path: Path) -> None:
    """12 runs, 2 at a time, every kind of fault: no thread lost (each ends with the
    uninterrupted run's state, in its driver and in its store), no side effect repeated
    beyond what docs/faults.md allows, no process left behind, drivers bounded."""
    cfg = ChaosConfig(
        runs=12,
        seed=3,
        concurrency=2,
        api_s=0.05,
        cpu_s=0.03,
        dsn=postgres_dsn(),
        workdir=tmp_path / "chaos",
    )
    fig = await run_chaos(cfg)
    print("\n".join(fig.lines()))
    assert fig.problems() == []
    assert {k: fig.fired[k] >= 1 for k in KINDS} == dict.fromkeys(KINDS, True), fig.fired
    assert fig.resumes["cancel"] >= 1 and fig.resumes["driver_kill"] >= 1
    assert fig.backends_terminated >= 1
    # Every node of every run finished at least once (9 per run), repeats within the promise.
    assert fig.finished_calls == 12 * 9 + fig.repeated_within

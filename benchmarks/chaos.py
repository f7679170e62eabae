"""Chaos: the seed workload under random faults; nothing lost, nothing repeated, nothing left.

N runs (threads) of the seed workload's graph (``benchmarks/chaos_driver.py``:
four agents, each an HTTP call to the local OpenAI-compatible server then
real CPU work, then a join), half on a ``SqliteCheckpointer`` and half on a
``PostgresCheckpointer``, run by long-lived driver subprocesses while this
controller injects, at random but reproducibly from ``--seed``:

- **worker SIGKILL**: a pool worker running one of the thread's cpu calls is
  killed (its pid is on the call's ``start`` line);
- **driver SIGKILL**: the driver process is killed mid-run; a new driver
  resumes every thread it was running (``arun(None, thread_id=...)``);
- **cancel**: the thread's ``arun`` task is cancelled mid-step in its driver,
  which then resumes it;
- **dropped PostgreSQL connections**: ``pg_terminate_backend`` of every
  engine connection to the run's database.

Each fault of a thread's plan fires at a side-effect line of that thread
(the plan says which, counted from the previous fault, and how long after),
so the plan is a function of the seed; where a fault lands in the code then
depends on timing, as a real one's does.

At the end it checks, and prints:

- **lost: 0**: every thread finished (its store's latest checkpoint is step 3,
  ``done``) with exactly the final state of an uninterrupted run of the same
  input (run here in ``sequential`` mode, with no checkpointer and no fault),
  as the driver returned it and as its store reads back;
- **repeated beyond the promise: 0**: each node finished (wrote its ``done``
  line) once per (thread, node, step, index), plus at most once more per
  interruption that docs/faults.md allows to run it again: a driver SIGKILL or
  a cancel during its step, unless its write had been saved as a pending
  write (the resume's latest checkpoint says which); and, for cpu nodes
  only, a break of the driver's pool while their thread was in its cpu step
  (a worker SIGKILL, or a cancel that killed another thread's busy workers:
  every call then in the pool may run again). A PostgreSQL drop allows
  nothing to run again;
- **leftover processes: 0**: a killed worker and what its node started (the
  ``sleep`` each cpu call keeps running while it computes), and every process
  of a killed driver (workers, their ``sleep``s, loky's helpers), are gone 2 s
  after the kill; at the end no process carrying this run's environment tag is
  alive anywhere (an orphan re-parented to init included), and the controller
  has no child left;
- **bounded**: each long-lived driver's RSS and open descriptors, sampled after
  every run it finishes, grow by less than ``MAX_RSS_GROWTH_MB`` and
  ``MAX_FD_GROWTH`` from its third run to its last.

Exit status 1 when any check fails. ::

    python benchmarks/chaos.py                      # 200 runs, seed 1
    python benchmarks/chaos.py --runs 20 --seed 7 --workdir /tmp/chaos --verbose

PostgreSQL comes from ``--dsn`` or ``ENGINE_TEST_PG_DSN`` (``scripts/postgres.sh``);
the run creates a database of its own there and drops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the benchmarks package is imported below
    sys.path.insert(0, str(ROOT))

from benchmarks.chaos_controller import Controller, describe, tagged  # noqa: E402
from benchmarks.chaos_driver import LAST_STEP, STEP, ChaosState, build  # noqa: E402
from benchmarks.chaos_plan import (  # noqa: E402
    GONE_WITHIN_S,
    JUDGED_AFTER_RUNS,
    MAX_FD_GROWTH,
    MAX_RSS_GROWTH_MB,
    ChaosConfig,
    Figures,
    make_plan,
)
from engine.procs import descendants  # noqa: E402

# -- checks --------------------------------------------------------------------------------------


async def reference_states(cfg: ChaosConfig, base_url: str, units: int) -> dict[str, Any]:
    """The final state of an uninterrupted run per topic: sequential mode, no checkpointer."""
    app = build(base_url, os.devnull).compile()
    out = {}
    for topic in sorted({f"plan {i % cfg.topics}" for i in range(cfg.runs)}):
        state = ChaosState(thread="", topic=topic, api_s=cfg.api_s, units=units)
        result = await app.arun(state, mode="sequential")
        out[topic] = result.state.model_dump(mode="json")
    return out


async def check_stores(ctl: Controller, refs: dict[str, Any]) -> None:
    """Every thread's store: steps 0..3, the last done, each step's tasks where ``STEP`` says,
    and a resume of the finished thread returns the reference state without calling a node."""
    from engine.checkpoint import Checkpointer, PostgresCheckpointer, SqliteCheckpointer

    cps: dict[str, Checkpointer] = {"sqlite": SqliteCheckpointer(ctl.db)}
    if ctl.dsn:
        cps["postgres"] = PostgresCheckpointer(ctl.dsn, pool_size=1)
    graph = build(ctl.base_url, str(ctl.side))
    apps = {name: graph.compile(checkpointer=cp) for name, cp in cps.items()}
    before = len(ctl.side.read_bytes())
    try:
        for tr in ctl.threads.values():
            cp, app = cps[tr.plan.backend], apps[tr.plan.backend]
            expected = {**refs[tr.plan.topic], "thread": tr.thread}
            if tr.status != "done" or tr.final != expected:
                ctl.fig.lost.append(f"{tr.thread}: {tr.status}, final state differs or missing")
                continue
            saved = await cp.list(tr.thread)
            steps = [c.step for c in saved]
            wrong = [t.node for c in saved for t in c.next_tasks if STEP[t.node] != c.step]
            if steps != list(range(LAST_STEP + 1)) or saved[-1].status != "done" or wrong:
                ctl.fig.lost.append(f"{tr.thread}: stored steps {steps}, tasks off-step {wrong}")
                continue
            state = (await app.arun(None, thread_id=tr.thread)).state.model_dump(mode="json")
            if state != expected:
                ctl.fig.lost.append(f"{tr.thread}: the store reads back another state")
    finally:
        for cp in cps.values():
            await cp.aclose()
    if len(ctl.side.read_bytes()) != before:
        ctl.fig.lost.append("resuming finished threads called nodes")


def check_side_effects(ctl: Controller) -> None:
    """Count each (thread, node, step, index)'s finishes against what the docs allow."""
    ctl.read_side()
    fig = ctl.fig
    for tr in ctl.threads.values():
        done = Counter(x.key for x in tr.lines if x.phase == "done")
        fig.finished_calls += sum(done.values())
        for node, step in STEP.items():
            key = (node, step, -1)
            n = done.get(key, 0)
            if n == 0 and tr.status == "done":
                fig.missing.append(f"{tr.thread} {node}")
            allowed = 1 + tr.excuses[key]
            fig.repeated_within += max(0, min(n, allowed) - 1)
            if n > allowed:
                fig.repeated_beyond.append(
                    f"{tr.thread} {node} step {step}: finished {n} times, "
                    f"{tr.excuses[key]} interruption(s) allowed a re-run"
                )


def check_resources(ctl: Controller) -> None:
    fig = ctl.fig
    for d in ctl.drivers:
        for s in d.samples:
            fig.peak_rss_mb = max(fig.peak_rss_mb, s["rss_mb"])
            fig.peak_fds = max(fig.peak_fds, s["fds"])
        runs = len(d.samples) - 1  # the first sample is taken when it is ready
        if runs < JUDGED_AFTER_RUNS:
            continue
        first, last = d.samples[3], d.samples[-1]
        if fig.longest is None or runs > fig.longest[0]:
            fig.longest = (runs, first["rss_mb"], last["rss_mb"], first["fds"], last["fds"])
        if last["rss_mb"] - first["rss_mb"] > MAX_RSS_GROWTH_MB:
            fig.unbounded.append(
                f"driver {d.number}: RSS {first['rss_mb']} -> {last['rss_mb']} MB over {runs} runs"
            )
        if last["fds"] - first["fds"] > MAX_FD_GROWTH:
            fig.unbounded.append(
                f"driver {d.number}: fds {first['fds']} -> {last['fds']} over {runs} runs"
            )


async def leftovers_at_end(ctl: Controller, before: set[int]) -> None:
    """Tagged processes still alive, and children of this process the run started
    (``before``: the ones it already had, such as a test session's default pool)."""
    deadline = time.monotonic() + GONE_WITHIN_S
    while time.monotonic() < deadline and tagged(ctl.tag):
        await asyncio.sleep(0.05)
    for pid in tagged(ctl.tag):
        ctl.fig.leftover_at_end.append(describe(pid))
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for pid in sorted(set(descendants(os.getpid())) - before):
        ctl.fig.leftover_at_end.append(f"the controller's own: {describe(pid)}")


# -- entry --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def chaos_database(dsn: str, seed: int) -> Any:
    """A database of the run's own on the server of ``dsn`` (its DSN), dropped afterwards."""
    import psycopg

    name = f"engine_chaos_{os.getpid()}_{seed}"
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(f"DROP DATABASE IF EXISTS {name}")
        await conn.execute(f"CREATE DATABASE {name}")
    try:
        yield psycopg.conninfo.make_conninfo(dsn, dbname=name)
    finally:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def run_chaos(cfg: ChaosConfig) -> Figures:
    """The whole chaos run; its figures (``Figures.problems()`` lists what failed)."""
    from workloads.genai import calibrate, units_for
    from workloads.llm import LLMServer

    work = cfg.workdir or Path(tempfile.mkdtemp(prefix="engine-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    units = units_for(cfg.cpu_s, calibrate())
    before = set(descendants(os.getpid()))
    server = LLMServer.start_in_thread(latency_s=cfg.api_s)
    t0 = time.perf_counter()
    try:
        async with contextlib.AsyncExitStack() as stack:
            dsn = None
            if cfg.dsn:
                dsn = await stack.enter_async_context(chaos_database(cfg.dsn, cfg.seed))
            backends = ("sqlite", "postgres") if dsn else ("sqlite",)
            refs = await reference_states(cfg, server.base_url, units)
            ctl = Controller(cfg, work, server.base_url, dsn, units)
            try:
                await ctl.run(make_plan(cfg.runs, cfg.seed, backends, cfg.topics))
            except BaseException:
                await ctl.abort()
                raise
            finally:
                ctl.journal.close()
            ctl.fig.wall_s = time.perf_counter() - t0
            await leftovers_at_end(ctl, before)
            check_side_effects(ctl)
            check_resources(ctl)
            await check_stores(ctl, refs)
    finally:
        server.stop()
    if not ctl.fig.problems() and cfg.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"chaos: files kept in {work}")
    return ctl.fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=2, help="threads at once per driver")
    parser.add_argument("--api-s", type=float, default=0.2, help="seconds per API call")
    parser.add_argument("--cpu-s", type=float, default=0.1, help="CPU seconds per agent")
    parser.add_argument("--dsn", default=os.environ.get("ENGINE_TEST_PG_DSN"))
    parser.add_argument("--workdir", type=Path, help="keep the files here")
    parser.add_argument("--verbose", action="store_true", help="print each fault as it fires")
    parser.add_argument("--thread-timeout", type=float, default=120.0, help="a thread stuck")
    args = parser.parse_args(argv)
    if not args.dsn:
        print("chaos: no PostgreSQL (--dsn or ENGINE_TEST_PG_DSN): SQLite threads only")
    cfg = ChaosConfig(
        runs=args.runs,
        seed=args.seed,
        concurrency=args.concurrency,
        api_s=args.api_s,
        cpu_s=args.cpu_s,
        dsn=args.dsn or None,
        workdir=args.workdir,
        verbose=args.verbose,
        thread_timeout_s=args.thread_timeout,
    )
    print(
        f"chaos: seed {cfg.seed}, {cfg.runs} runs, {cfg.concurrency} at a time per driver, "
        f"api {cfg.api_s} s, cpu {cfg.cpu_s} s per agent; python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs"
    )
    fig = asyncio.run(run_chaos(cfg))
    for line in fig.lines():
        print(line)
    problems = fig.problems()
    for p in problems:
        print(f"FAILED: {p}")
    print("chaos: passed" if not problems else f"chaos: {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

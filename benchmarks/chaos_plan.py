"""The chaos run's plan (which faults, where, reproducible from a seed), its settings and
the figures it reports (``benchmarks/chaos.py`` runs it)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("worker_kill", "driver_kill", "cancel", "pg_drop")
LABELS = {
    "worker_kill": "worker SIGKILL",
    "driver_kill": "driver SIGKILL",
    "cancel": "cancel",
    "pg_drop": "PostgreSQL drop",
}
#: Per thread, the chance that its plan holds a fault of each kind.
RATES = {"worker_kill": 0.35, "driver_kill": 0.08, "cancel": 0.3, "pg_drop": 0.5}
#: A fault fires at the thread's 1st..MAX_AFTER-th side-effect line after the last one.
MAX_AFTER = 12
#: ...and up to this many seconds after that line.
MAX_DELAY_S = 0.025
#: The environment variable every driver (and so each of its descendants) carries.
TAG_ENV = "ENGINE_CHAOS_TAG"
#: How long what a killed driver had may take to be gone.
GONE_WITHIN_S = 2.0
#: Growth bounds of a driver's RSS and open descriptors from its third run to its last.
MAX_RSS_GROWTH_MB = 40.0
MAX_FD_GROWTH = 16
#: Runs a driver must finish before its growth is judged.
JUDGED_AFTER_RUNS = 6
#: Resumes after errors before a thread counts as lost.
MAX_ERROR_RESUMES = 3


# -- the plan --------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    kind: str
    after: int  # fire at the thread's after-th side-effect line since the previous fault
    delay_s: float  # ...this long after seeing it


@dataclass(frozen=True)
class PlannedRun:
    index: int
    thread: str
    backend: str
    topic: str
    faults: tuple[Fault, ...]


def make_plan(runs: int, seed: int, backends: tuple[str, ...], topics: int) -> list[PlannedRun]:
    """The runs and their faults: a function of its arguments only.

    Each kind available is the first fault of at least one run (when there
    are enough runs), so that a short run still injects every kind.
    """
    rng = random.Random(seed)
    plan: list[list[Fault]] = []
    for i in range(runs):
        backend = backends[i % len(backends)]
        kinds = [
            k
            for k in KINDS
            if rng.random() < RATES[k] and (k != "pg_drop" or backend == "postgres")
        ]
        rng.shuffle(kinds)
        plan.append([Fault(k, rng.randint(1, MAX_AFTER), _delay(rng)) for k in kinds])
    for kind in KINDS:
        if kind == "pg_drop" and "postgres" not in backends:
            continue
        firsts = Counter(f[0].kind for f in plan if f)
        if firsts[kind]:
            continue
        # A run whose first fault is the only one of its kind keeps it.
        free = [
            i
            for i in range(runs)
            if (not plan[i] or firsts[plan[i][0].kind] > 1)
            and (kind != "pg_drop" or backends[i % len(backends)] == "postgres")
        ]
        if not free:
            continue
        i = rng.choice(free)
        rest = [f for f in plan[i] if f.kind != kind]
        plan[i] = [Fault(kind, rng.randint(1, MAX_AFTER), _delay(rng)), *rest]
    return [
        PlannedRun(
            index=i,
            thread=f"chaos-{seed}-{i:04d}",
            backend=backends[i % len(backends)],
            topic=f"plan {i % topics}",
            faults=tuple(plan[i]),
        )
        for i in range(runs)
    ]


def _delay(rng: random.Random) -> float:
    return round(rng.uniform(0.0, MAX_DELAY_S), 4)


@dataclass(frozen=True)
class ChaosConfig:
    runs: int = 200
    seed: int = 1
    concurrency: int = 2
    api_s: float = 0.2
    cpu_s: float = 0.1
    dsn: str | None = None  # None: SQLite only
    topics: int = 16
    thread_timeout_s: float = 120.0
    workdir: Path | None = None  # None: a temporary directory, removed when all passed
    verbose: bool = False


# -- the figures ----------------------------------------------------------------------------


@dataclass
class Figures:
    runs: int = 0
    backends: Counter[str] = field(default_factory=Counter)
    planned: Counter[str] = field(default_factory=Counter)
    fired: Counter[str] = field(default_factory=Counter)
    worker_kills_mid_call: int = 0
    cancels_late: int = 0  # the run had finished when the cancel arrived
    backends_terminated: int = 0
    resumes: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    finished_calls: int = 0
    repeated_within: int = 0
    repeated_beyond: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    leftover_after_kills: list[str] = field(default_factory=list)
    leftover_at_end: list[str] = field(default_factory=list)
    drivers: int = 0
    peak_rss_mb: float = 0.0
    peak_fds: int = 0
    longest: tuple[int, float, float, int, int] | None = None  # runs, rss first/last, fds
    unbounded: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def problems(self) -> list[str]:
        found = [f"lost: {t}" for t in self.lost]
        found += [f"repeated beyond the promise: {r}" for r in self.repeated_beyond]
        found += [f"missing side effect: {m}" for m in self.missing]
        found += [f"error: {e}" for e in self.errors]
        found += [f"left after a SIGKILL: {p}" for p in self.leftover_after_kills]
        found += [f"left at the end: {p}" for p in self.leftover_at_end]
        found += [f"unbounded: {u}" for u in self.unbounded]
        return found

    def lines(self) -> Iterator[str]:
        sqlite, pg = self.backends["sqlite"], self.backends["postgres"]
        yield f"runs: {self.runs} ({sqlite} SQLite, {pg} PostgreSQL), wall {self.wall_s:.0f} s"
        fired = ", ".join(
            f"{LABELS[k]} {self.fired[k]} of {self.planned[k]}"
            for k in KINDS
            if self.planned[k] or self.fired[k]
        )
        yield f"faults fired (of planned): {fired} ({sum(self.fired.values())} in all)"
        yield (
            f"  worker SIGKILLs mid-call: {self.worker_kills_mid_call}; cancels that came "
            f"after the run ended: {self.cancels_late}; PostgreSQL backends terminated: "
            f"{self.backends_terminated}"
        )
        by = ", ".join(f"after a {LABELS.get(k, k)} {n}" for k, n in sorted(self.resumes.items()))
        yield f"resumes: {sum(self.resumes.values())} ({by or 'none'})"
        yield f"lost: {len(self.lost)}"
        yield (
            f"side effects: {self.finished_calls} node calls finished; repeated within the "
            f"promise: {self.repeated_within}; repeated beyond the promise: "
            f"{len(self.repeated_beyond)}; missing: {len(self.missing)}"
        )
        yield f"errors: {len(self.errors)}"
        left = len(self.leftover_after_kills) + len(self.leftover_at_end)
        yield (
            f"leftover processes: {left} ({len(self.leftover_after_kills)} of killed workers "
            f"and drivers {GONE_WITHIN_S:.0f} s later, {len(self.leftover_at_end)} at the end)"
        )
        longest = "none judged"
        if self.longest is not None:
            n, r0, r1, f0, f1 = self.longest
            longest = f"{n} runs, RSS {r0:.1f} -> {r1:.1f} MB, fds {f0} -> {f1}"
        yield (
            f"drivers: {self.drivers}; peak RSS {self.peak_rss_mb:.1f} MB, peak fds "
            f"{self.peak_fds}; longest-lived driver: {longest}"
        )

"""Trace marks: records that are not node calls, and their Chrome trace events.

A run leaves more than calls: the loop-lag counter (``engine.watchdog``),
waits for budgets (``engine.resources``), per-worker resource loads
(``engine.warm``). Each is a frozen ``Mark`` timed with ``time.time()`` where
it happened, so marks line up with the calls of ``engine.trace``.

``chrome_events`` renders marks the way ``Trace.to_chrome`` renders calls:
``counter`` as a counter track (``ph: C``) of its process, ``span`` as a
slice on its thread's row (``ph: X``) or, without a thread, as an async
slice (``ph: b/e``) so overlapping spans stack instead of nesting, and
``instant`` as a process-wide instant (``ph: i``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

MarkKind = Literal["counter", "span", "instant"]
PidOf = Callable[[str, int], int]  # (host, os pid) -> the Chrome process id


@dataclass(frozen=True)
class Mark:
    """One non-call trace record.

    ``pid``/``host`` say which process it belongs to (the driver for lag and
    budget waits, a worker for loads); ``thread`` 0 means "no thread row".
    A counter's ``value`` holds from ``start`` until the next point of the
    same ``name``.
    """

    kind: MarkKind
    name: str
    start: float
    pid: int
    host: str
    end: float = 0.0
    value: float = 0.0
    thread: int = 0
    cat: str = ""
    args: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def duration_s(self) -> float:
        return max(0.0, self.end - self.start)


def chrome_events(marks: Iterable[Mark], *, t0: float, pid_of: PidOf) -> list[dict[str, Any]]:
    """Chrome trace-event dicts for ``marks``, on the clock origin ``t0`` (seconds)."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(marks):
        pid = pid_of(m.host, m.pid)
        ts = (m.start - t0) * 1e6
        if m.kind == "counter":
            out.append(
                {
                    "name": m.name,
                    "ph": "C",
                    "ts": ts,
                    "pid": pid,
                    "args": {m.cat or "value": m.value},
                }
            )
        elif m.kind == "instant":
            out.append(
                {
                    "name": m.name,
                    "cat": m.cat,
                    "ph": "i",
                    "s": "p",
                    "ts": ts,
                    "pid": pid,
                    "tid": m.thread,
                    "args": dict(m.args),
                }
            )
        elif m.thread:
            out.append(
                {
                    "name": m.name,
                    "cat": m.cat,
                    "ph": "X",
                    "ts": ts,
                    "dur": m.duration_s * 1e6,
                    "pid": pid,
                    "tid": m.thread,
                    "args": dict(m.args),
                }
            )
        else:
            common = {"name": m.name, "cat": m.cat, "id": i + 1, "pid": pid, "tid": 0}
            out.append({**common, "ph": "b", "ts": ts, "args": dict(m.args)})
            out.append({**common, "ph": "e", "ts": (m.end - t0) * 1e6})
    return out


def simple_pid_of() -> PidOf:
    """A ``pid_of`` that numbers processes in order of first appearance (for tests/tools)."""
    ids: dict[tuple[str, int], int] = {}

    def pid_of(host: str, pid: int) -> int:
        return ids.setdefault((host, pid), len(ids) + 1)

    return pid_of


__all__ = ["Mark", "MarkKind", "PidOf", "chrome_events", "simple_pid_of"]

"""Module-level node functions for the core tests, parametrised with functools.partial.

cpu-lane nodes travel to worker processes, so they must be picklable: this
module registers itself with cloudpickle to travel by value (as a user's
``__main__`` code would), like ``tests.support`` does through the root
conftest. State-independent helpers take the state (or ``Send`` payload) last.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle

from tests.support import cpu_probe

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def returns(value: Any, state: Any) -> Any:
    """Returns ``value`` as it is, whatever it is (a bad update, None, ...)."""
    return value


def sleep_append(field: str, value: Any, delay: float, state: Any) -> dict[str, Any]:
    """Waits ``delay`` seconds without holding the GIL, then appends ``value``."""
    time.sleep(delay)
    return {field: [value]}


async def send_worker(payload: dict[str, Any]) -> dict[str, Any]:
    """A ``Send`` target: waits the payload's delay, then appends its doc."""
    await asyncio.sleep(payload.get("delay", 0.0))
    return {"items": [payload["doc"]]}


def sync_send_worker(payload: dict[str, Any]) -> dict[str, Any]:
    """The sync twin of ``send_worker``, for the cpu and thread lanes."""
    time.sleep(payload.get("delay", 0.0))
    return {"items": [payload["doc"]], "probes": {payload["doc"]: {"pid": os.getpid()}}}


def burn_and_mark(name: str, seconds: float, done_dir: str, state: Any) -> dict[str, Any]:
    """``cpu_probe``, then a file named ``name`` in ``done_dir`` once its report is final."""
    update = cpu_probe(name, seconds, state)
    Path(done_dir, name).touch()
    return update


def flaky(counter: str, failures: int, state: Any) -> dict[str, Any]:
    """Raises ConnectionError on its first ``failures`` calls, counted in a file.

    A file, not a variable, so the count survives the call running in
    another process (the cpu lane in parallel mode).
    """
    path = Path(counter)
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    if n <= failures:
        raise ConnectionError(f"reset on call {n}")
    return {"report": f"ok after {n}"}


def mutate_items(state: Any) -> dict[str, Any]:
    """Mutates its own input, then reports what it saw."""
    state.items.append("mutated")
    return {"report": ",".join(state.items)}


def read_items(state: Any) -> dict[str, Any]:
    """Reports the items it was given."""
    return {"topic": ",".join(state.items)}


def bump(state: Any) -> dict[str, Any]:
    """One turn of a counting loop."""
    return {"count": state.count + 1, "items": [f"n{state.count}"]}


def route_on_count(limit: int, target: str, state: Any) -> str:
    """Loops back to ``target`` until ``count`` reaches ``limit``."""
    from engine import END

    return target if state.count < limit else END


def mutate_and_log(state: Any) -> dict[str, Any]:
    """Mutates its own input, then appends what it saw to ``items``."""
    state.items.append("mutated")
    return {"items": [",".join(state.items)]}

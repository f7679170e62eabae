"""Shared test support: the state model and module-level node functions.

Worker processes cannot import the tests package, so the root conftest.py
registers this module with cloudpickle to travel by value, as a user's
``__main__`` code would.
"""

from __future__ import annotations

import asyncio
import operator
import os
import threading
import time
from typing import Annotated, Any

from pydantic import BaseModel


def burn(seconds: float) -> int:
    """Real pure-Python CPU work for about ``seconds`` of CPU time."""
    end = time.thread_time() + seconds
    x = 0
    while time.thread_time() < end:
        for i in range(2000):
            x = (x + i * i) % 1_000_003
    return x


def whoami() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "thread": threading.get_ident(),
        "main_thread": threading.current_thread() is threading.main_thread(),
        "start": time.time(),
    }


def cpu_probe(name: str, seconds: float, state: Any) -> dict[str, Any]:
    """Burns CPU and reports where and when it ran, in its own words."""
    me = whoami()
    burn(seconds)
    me["end"] = time.time()
    return {"probes": {name: me}}


async def io_probe(name: str, seconds: float, state: Any) -> dict[str, Any]:
    me = whoami()
    me["loop"] = type(asyncio.get_running_loop()).__module__
    await asyncio.sleep(seconds)
    me["end"] = time.time()
    return {"probes": {name: me}}


def thread_probe(name: str, state: Any) -> dict[str, Any]:
    me = whoami()
    me["end"] = time.time()
    return {"probes": {name: me}}


def append(field: str, value: Any, state: Any) -> dict[str, Any]:
    return {field: [value]}


async def async_append(field: str, value: Any, delay: float, state: Any) -> dict[str, Any]:
    await asyncio.sleep(delay)
    return {field: [value]}


def fail(message: str, state: Any) -> dict[str, Any]:
    raise RuntimeError(message)


def merge_dicts(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    return {**left, **right}


class State(BaseModel):
    topic: str = ""
    items: Annotated[list[str], operator.add] = []
    probes: Annotated[dict[str, Any], merge_dicts] = {}
    report: str = ""
    count: int = 0


# -- generated-graph nodes (tests/test_modes_property.py) ------------------


def gen_update(name: str, weight: int, writes_last: bool, arg: Any) -> dict[str, Any]:
    """A generated node's update: deterministic in its name, weight and input."""
    tag = f"{name}:{arg['v']}" if isinstance(arg, dict) and "v" in arg else name
    update: dict[str, Any] = {"log": [tag], "total": weight}
    if writes_last:
        update["last"] = tag
    return update


def gen_sync(name: str, weight: int, writes_last: bool, arg: Any) -> dict[str, Any]:
    return gen_update(name, weight, writes_last, arg)


async def gen_async(name: str, weight: int, writes_last: bool, arg: Any) -> dict[str, Any]:
    await asyncio.sleep(0)
    return gen_update(name, weight, writes_last, arg)


def _total(state: Any) -> int:
    """``total`` of a generated graph's state: a model instance, or a TypedDict's dict."""
    return int(state["total"] if isinstance(state, dict) else state.total)


def route_parity(even: list[str], odd: list[str], state: Any) -> list[str]:
    return list(even if _total(state) % 2 == 0 else odd)


def route_sends(target: str, n: int, state: Any) -> list[Any]:
    from engine import Send

    return [Send(target, {"v": _total(state) * 10 + i}) for i in range(n)]


def route_loop(target: str, limit: int, state: Any) -> str:
    from engine import END

    return target if _total(state) < limit else END


def stagger_start(folder: str) -> None:
    """A pool initializer: the first worker to start is ready at once, the others 1.5 s
    later (a busy machine's uneven process start, made certain)."""
    try:
        os.close(os.open(os.path.join(folder, "first"), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        time.sleep(1.5)

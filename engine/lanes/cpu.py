"""The cpu lane in ``parallel`` mode for one run: what crosses to a worker and back.

::

    dispatcher: run(call, fn, arg) / run_chunk(calls, blobs)
      |  fn pickled once per node (kept per app); each argument on its own,
      |  in the driver, before anything is submitted (a bad one: PayloadError)
      v
    ProcessLane.run(frames.request(...))   the pool, its faults, timeouts, memory
      |
      v  frame bytes
    frames.decode: small on the loop (microseconds); large in a thread, the
      call's node registered with the loop guard meanwhile (building the value
      holds the GIL: the lag is the node's, not "no registered node")
      -> one Outcome per call (lanes.calls)

What goes wrong before a worker runs anything raises: ``PayloadError`` (an
argument or function that cannot be pickled), ``ExecutorUnusable``,
``WorkerDied``, ``TimeoutError``; the dispatcher turns each into the call's
typed failure in one place. What goes wrong in a worker comes back inside
the frame, per call.
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Protocol

import cloudpickle

from .calls import Call, Outcome, decoded, decoded_columns
from .channel import StreamInfo
from .failures import PayloadError
from .frames import (
    Columns,
    Decoded,
    decode,
    decode_chunk,
    dumps_by_value,
    dumps_for_worker,
    is_plain,
    request,
)
from .process import ProcessLane
from .results import is_large, opened

if TYPE_CHECKING:
    from ..warm import WorkerInit


class Guard(Protocol):
    """The loop guard, as far as lanes use it: a registration of a node's work on the loop."""

    def running(
        self, node: str, *, index: int = -1, fn: Callable[..., Any] | None = None
    ) -> AbstractContextManager[Any]: ...


class CpuLane:
    """Sends one run's cpu calls to its process pool and rebuilds what comes back.

    Invariant: ``_fns`` maps a node to its function pickled once (shared
    with the app's later runs: a node's function never changes); the pool
    front (``process``) is this run's and closed with it.
    """

    def __init__(
        self,
        process: ProcessLane,
        fns: MutableMapping[str, bytes],
        *,
        memory_limit: int | None = None,
        guard: Guard | None = None,
    ) -> None:
        self.process = process
        self._fns = fns
        self._memory_limit = memory_limit
        self._guard = guard

    def __repr__(self) -> str:
        return f"<CpuLane {self.process!r}>"

    def fn_bytes(self, node: str, fn: Callable[..., Any]) -> bytes:
        """The node's function pickled once and reused for every call; PayloadError if it cannot."""
        data = self._fns.get(node)
        if data is None:
            try:
                data = dumps_by_value(fn)
            except Exception as exc:
                raise PayloadError(
                    f"its function {fn!r} cannot be pickled for a worker process: "
                    f"{type(exc).__name__}: {exc}; define it at module level"
                ) from exc
            self._fns[node] = data
        return data

    def limit(self, memory: int | None) -> int | None:
        """The memory a cpu call may use: its node's hint or the run's, the larger."""
        if memory is None:
            return self._memory_limit
        return max(memory, self._memory_limit or 0)

    async def run(
        self,
        call: Call,
        fn: Callable[..., Any],
        arg: Any,
        *,
        timeout: float | None = None,
        init: WorkerInit | None = None,
        memory: int | None = None,
        stream: StreamInfo | None = None,
    ) -> Outcome:
        """One call in a worker. In a worker process the call may use ``memory`` bytes
        (its node's ``memory_per_worker``; the run's, if that is larger), its worker and
        what it starts together: past that, the worker is ended (``WorkerDied``).
        ``stream``: the run's chunk channel, when the run streams."""
        fn_bytes = self.fn_bytes(call.task.node, fn)
        payload = request(fn_bytes, init, [pickled(arg)], stream)
        data = await self.process.run(
            payload, timeout=timeout, what=call.task.node, memory_limit=self.limit(memory)
        )
        (one,) = await self._decode(data, call.task.node, call.task.index, fn)
        head, obj, _, bytes_out, queued, unloadable = one  # (its bytes in: the whole request)
        return decoded(call, "cpu", Decoded(head, obj, len(payload), bytes_out, queued, unloadable))

    async def run_chunk(
        self,
        calls: list[Call],
        blobs: list[bytes] | bytes,
        fn: Callable[..., Any],
        *,
        init: WorkerInit | None = None,
        memory: int | None = None,
        stream: StreamInfo | None = None,
    ) -> list[Outcome]:
        """Calls of one node sent as one submission, run one after another in one worker;
        each comes back with its own outcome. ``blobs``: each call's argument ``pickled``,
        or all of them in one pickle (``pickled_together``)."""
        node = calls[0].task.node
        payload = request(self.fn_bytes(node, fn), init, blobs, stream)
        what = f"{node} (a chunk of {len(calls)} calls)"
        data = await self.process.run(payload, what=what, memory_limit=self.limit(memory))
        if is_large(data):
            results = await self._decode(data, node, -1, fn)
        else:
            chunk = decode_chunk(data)
            if not isinstance(chunk, Columns):
                results = chunk
            elif chunk.problem is None and len(chunk.starts) == len(calls):
                return decoded_columns(calls, "cpu", chunk)  # all plain data: the short way
            else:
                results = decode(data)
        if len(results) != len(calls):
            raise RuntimeError(
                f"a chunk of {len(calls)} calls of {node!r} came back with {len(results)} results"
            )
        return [decoded(c, "cpu", d) for c, d in zip(calls, results, strict=True)]

    async def _decode(
        self, data: bytes, node: str, index: int, fn: Callable[..., Any]
    ) -> list[Decoded]:
        if not is_large(data):
            return decode(data)
        held: AbstractContextManager[Any] = (
            self._guard.running(node, index=index, fn=fn)
            if self._guard is not None
            else nullcontext()
        )
        with held:
            return await asyncio.to_thread(_decode_large, data)

    async def aclose(self) -> None:
        await self.process.aclose()


#: Payloads that pickle the same way whatever registry says what travels by value.
_ATOMS = frozenset({int, float, str, bytes, bool, type(None)})


def pickled(arg: Any) -> bytes:
    """A call's argument pickled for a worker; ``PayloadError`` naming what cannot be."""
    if type(arg) in _ATOMS:  # a Send payload is often one: no module names to look for
        return pickle.dumps(arg, protocol=pickle.HIGHEST_PROTOCOL)
    try:
        return dumps_for_worker(arg)
    except Exception as exc:
        error = PayloadError(
            f"its input {_unpicklable_part(arg)} cannot be pickled for a worker process: "
            f"{type(exc).__name__}: {exc}; keep state fields and Send payloads plain data"
        )
        error.__cause__ = exc
        raise error from exc


def pickled_together(args: list[Any]) -> bytes | None:
    """The arguments of a chunk's calls in one pickle, when every one is plain data (a str,
    a number, None, or a dict of those by str keys: nothing that can fail to cross, in
    either direction), each dict a distinct object (a pickle shares what it holds twice, and
    every call gets its own copy); else None (each is ``pickled`` on its own)."""
    dicts: set[int] = set()
    for arg in args:
        if not is_plain(arg):
            return None
        if type(arg) is dict:
            if id(arg) in dicts:  # one payload sent twice: each call must get its own copy
                return None
            dicts.add(id(arg))
    return pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)


def _decode_large(data: bytes) -> list[Decoded]:
    with opened(data) as buf:
        return decode(buf)


def _unpicklable_part(arg: Any) -> str:
    """Which part of an input fails to pickle: a field's name and type where one does."""
    from pydantic import BaseModel

    fields: dict[str, Any] = {}
    if isinstance(arg, BaseModel):
        fields = {name: getattr(arg, name, None) for name in type(arg).model_fields}
    elif isinstance(arg, dict):
        fields = {str(k): v for k, v in arg.items()}
    for name, value in fields.items():
        try:
            cloudpickle.dumps(value)
        except Exception:
            return f"(field {name!r}, type {type(value).__name__})"
    return f"(type {type(arg).__name__})"


__all__ = ["CpuLane", "Guard", "pickled", "pickled_together"]

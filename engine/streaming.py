"""Stream modes: what a run yields besides its events, chunk by chunk as it goes.

::

    scheduler, run start          -> ("values", state)            the input written
    scheduler, each barrier       -> ("updates", (node, update))  each write, (node, Send) order
                                  -> ("values", state)            the state after the merge
    a node: get_stream_writer()(x) -> ("custom", x)                while it runs (driver lanes)

``app.astream(input, stream_mode="values")`` (or ``"updates"``, ``"custom"``,
or a list of them, which yields ``(mode, chunk)`` pairs) turns these into
LangGraph's chunk shapes: a ``values`` chunk is the state (a dict for a
TypedDict state), an ``updates`` chunk is ``{node: update}``.

A node's writer is a context variable set by the dispatcher around each call
that runs in this process (the io, thread and inline lanes). A cpu-lane node
in a worker process has no channel back to the driver while it runs: its
``get_stream_writer()`` returns a writer that drops what it is given, as
LangGraph's does outside a stream (documented in docs/migrating.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, Literal, TypeVar

T = TypeVar("T")

StreamMode = Literal["values", "updates", "custom"]
STREAM_MODES: tuple[StreamMode, ...] = ("values", "updates", "custom")

#: Where a run's chunks go: ``(mode, chunk)``.
ChunkSink = Callable[[str, Any], None]

_writer: contextvars.ContextVar[Callable[[Any], None] | None] = contextvars.ContextVar(
    "engine_stream_writer", default=None
)


def _drop(chunk: Any) -> None:
    """The writer outside a streamed call: what it is given goes nowhere."""


def get_stream_writer() -> Callable[[Any], None]:
    """The writer of the node call running now: ``writer(chunk)`` emits a ``custom``
    chunk to the run's stream. Outside a streamed run it drops what it is given."""
    writer = _writer.get()
    return _drop if writer is None else writer


def set_writer(writer: Callable[[Any], None] | None) -> contextvars.Token[Any]:
    """Set the writer for the current context (the dispatcher, around one call)."""
    return _writer.set(writer)


def reset_writer(token: contextvars.Token[Any]) -> None:
    _writer.reset(token)


def parse_modes(stream_mode: str | Sequence[str]) -> tuple[tuple[StreamMode, ...], bool]:
    """The modes asked for, and whether chunks are yielded as ``(mode, chunk)`` pairs."""
    single = isinstance(stream_mode, str)
    modes = [stream_mode] if isinstance(stream_mode, str) else list(stream_mode)
    unknown = [m for m in modes if m not in STREAM_MODES]
    if unknown or not modes:
        raise ValueError(
            f"unknown stream_mode {unknown or modes!r}; use one of {', '.join(STREAM_MODES)} "
            "or a list of them"
        )
    return tuple(dict.fromkeys(modes)), not single  # type: ignore[arg-type]


async def chunks_of(
    start: Callable[[ChunkSink], Awaitable[Any]], modes: tuple[StreamMode, ...], pairs: bool
) -> AsyncIterator[Any]:
    """Run ``start(sink)`` (a run with ``on_chunk=sink``) and yield its chunks of ``modes`` as
    they come: the chunk itself, or ``(mode, chunk)`` when ``pairs``; then raise the run's
    error, if any. Closing the iterator early cancels the run."""
    queue: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue()
    wanted = frozenset(modes)

    def sink(mode: str, chunk: Any) -> None:
        if mode in wanted:
            queue.put_nowait((mode, chunk))

    task = asyncio.ensure_future(start(sink))
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while True:
            item = await queue.get()
            if item is None:
                break
            yield item if pairs else item[1]
        task.result()  # the run's error, if any
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def iterate_sync(make: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
    """Iterate ``make()`` from synchronous code: its event loop runs in a thread of its own
    (so this works inside a running event loop too), items handed over as they come."""
    from .running import run_sync

    items: queue.Queue[tuple[str, Any]] = queue.Queue()
    running: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]] = []

    async def pump() -> None:
        task = asyncio.current_task()
        assert task is not None
        running.append((asyncio.get_running_loop(), task))
        agen = make()
        try:
            async for item in agen:
                items.put(("item", item))
        finally:
            await agen.aclose()  # type: ignore[attr-defined]

    def run() -> None:
        try:
            run_sync(pump())
        except BaseException as exc:  # handed to the consumer, raised there
            items.put(("error", exc))
        else:
            items.put(("end", None))

    thread = threading.Thread(target=run, name="engine-stream", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        if thread.is_alive() and running:  # the consumer stopped early: cancel the run
            loop, task = running[0]
            loop.call_soon_threadsafe(task.cancel)
        thread.join()


__all__ = [
    "STREAM_MODES",
    "ChunkSink",
    "StreamMode",
    "chunks_of",
    "get_stream_writer",
    "iterate_sync",
    "parse_modes",
    "reset_writer",
    "set_writer",
]

"""Stream modes: what a run yields besides its events, chunk by chunk as it goes.

::

    scheduler, run start           -> ("values", state)            the input written
    recorder, a task's first try   -> ("debug", {"type": "task", ...}), ("tasks", payload)
    a node: get_stream_writer()(x) -> ("custom", x)                while it runs, any lane
    a node: get_message_writer()(t)-> ("messages", (chunk, meta))  a token, as it comes
    recorder, a task settled       -> ("debug", {"type": "task_result", ...}), ("tasks", ...)
    scheduler, each barrier        -> ("updates", {node: update})  each write, (node, Send) order
                                   -> ("values", state)            the state after the merge

``app.astream(input, stream_mode="values")`` (or ``"updates"``, ``"custom"``,
``"messages"``, ``"debug"``, ``"tasks"``, or a list of them, which yields ``(mode, chunk)``
pairs) turns these into LangGraph's chunk shapes. Without ``stream_mode``
``astream`` yields the engine's typed events (``engine.events``).

A node finds its call's stream in a context variable: the dispatcher sets
it around each call that runs in this process (io, thread and inline lanes);
a cpu-lane worker sets it around the calls it runs, with a writer that sends
each chunk back to the driver over the run's chunk channel
(``engine.lanes.channel``) and returns once the driver has it. A run nobody
streams sets no writer: ``get_stream_writer()`` then returns one that drops
what it is given, as LangGraph's does outside a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import datetime
import functools
import queue
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar

T = TypeVar("T")

StreamMode = Literal["values", "updates", "custom", "messages", "debug", "tasks", "checkpoints"]
STREAM_MODES: tuple[StreamMode, ...] = (
    "values",
    "updates",
    "custom",
    "messages",
    "debug",
    "tasks",
    "checkpoints",
)

#: Where a run's chunks go: ``(mode, chunk)``. Callable from any thread of the driver.
ChunkSink = Callable[[str, Any], None]


class RunStream:
    """One run's chunk writer for its node calls: ``(mode, chunk)`` from any thread, and
    the message ids the ``messages`` mode has seen (a message is streamed once)."""

    def __init__(self, emit: ChunkSink) -> None:
        self._emit = emit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, mode: str, chunk: Any) -> None:
        self._emit(mode, chunk)

    def see(self, message_id: str) -> bool:
        """Mark a message id seen; True when it was not seen before."""
        with self._lock:
            fresh = message_id not in self._seen
            self._seen.add(message_id)
            return fresh


@dataclasses.dataclass(frozen=True)
class CallStream:
    """The stream of one node call: where its chunks go, and which call it is."""

    emit: ChunkSink
    node: str
    step: int
    index: int = -1

    def custom(self, chunk: Any) -> None:
        """A ``custom`` chunk (what ``get_stream_writer()`` returns)."""
        self.emit("custom", chunk)

    def metadata(self) -> dict[str, Any]:
        """LangGraph's ``messages`` metadata for this call (its step counts from 1)."""
        pushed = self.index >= 0
        path = ("__pregel_push", self.index, False) if pushed else ("__pregel_pull", self.node)
        return {
            "langgraph_step": self.step + 1,
            "langgraph_node": self.node,
            "langgraph_triggers": ("__pregel_push",) if pushed else (f"branch:to:{self.node}",),
            "langgraph_path": path,
        }


_stream: contextvars.ContextVar[CallStream | None] = contextvars.ContextVar(
    "engine_call_stream", default=None
)
#: The modes the run being streamed asked for (set by ``chunks_of`` for its run's task).
_modes: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "engine_stream_modes", default=frozenset()
)


def _drop(chunk: Any) -> None:
    """The writer outside a streamed call: what it is given goes nowhere."""


def drop_chunk(mode: str, chunk: Any) -> None:
    """Where the chunks of a call nobody streams go: nowhere (a call stream with this
    ``emit`` only says which call runs)."""


_drop_chunk = drop_chunk

#: The stream of a call in a run nobody streams (a cpu-lane worker sets it: "in a run").
UNSTREAMED = CallStream(_drop_chunk, "", -1)


def current_stream() -> CallStream | None:
    """The stream of the node call running now (``UNSTREAMED`` in a worker's call of a run
    nobody streams); None outside any call that set one."""
    return _stream.get()


def get_stream_writer() -> Callable[[Any], None]:
    """The writer of the node call running now: ``writer(chunk)`` emits a ``custom``
    chunk to the run's stream. Outside a streamed run it drops what it is given."""
    stream = _stream.get()
    return _drop if stream is None or stream.emit is _drop_chunk else stream.custom


def write_custom(chunk: Any) -> None:
    """``get_stream_writer()(chunk)``, the writer looked up at each call: a writer that
    can be held before the node runs (``runtime.stream_writer``)."""
    get_stream_writer()(chunk)


def get_message_writer() -> Callable[[Any], None]:
    """A writer of one message's tokens for the ``messages`` stream mode.

    ``write = get_message_writer(); write("hel"); write("lo")`` emits
    ``(chunk, metadata)`` pairs: ``chunk`` an ``AIMessageChunk`` (langchain-core's
    when it is installed, else :class:`MessageChunk`), the same message id on every
    token of one writer; ``metadata`` names the node (``langgraph_node``) and its
    step. A chunk that is a message object already is passed on as it is.
    Outside a streamed run it drops what it is given.
    """
    stream = _stream.get()
    if stream is None or stream.emit is _drop_chunk:
        return _drop
    message_id = f"run-{uuid.uuid4()}"
    metadata = stream.metadata()

    def write(token: Any) -> None:
        chunk = message_chunk(token, message_id) if isinstance(token, str) else token
        stream.emit("messages", (chunk, dict(metadata)))

    return write


@dataclasses.dataclass(frozen=True)
class MessageChunk:
    """One token of an AI message when langchain-core is not installed."""

    content: str
    id: str | None = None
    type: str = "AIMessageChunk"


def message_chunk(text: str, message_id: str) -> Any:
    """``text`` as an AI message chunk: langchain-core's class when importable."""
    try:
        from langchain_core.messages import AIMessageChunk
    except ImportError:
        return MessageChunk(content=text, id=message_id)
    return AIMessageChunk(content=text, id=message_id)


def set_stream(stream: CallStream | None) -> contextvars.Token[Any]:
    """Set the call stream for the current context (around one call)."""
    return _stream.set(stream)


def reset_stream(token: contextvars.Token[Any]) -> None:
    _stream.reset(token)


@functools.cache
def langchain_available() -> bool:
    """Whether langchain-core can be used here: imported now if it is installed. Asked only
    by runs streaming ``messages`` (``engine.lcmessages``): a node may import its chat
    model's package inside its body, after the call's handler must be in place."""
    if "langchain_core" in sys.modules:
        return True
    try:
        import langchain_core.runnables.config  # noqa: F401
    except ImportError:
        return False
    return True


def streaming_modes() -> frozenset[str]:
    """The stream modes of the run in this context (empty when nobody streams it)."""
    return _modes.get()


# -- debug chunks ------------------------------------------------------------------------


def task_id(run_id: str, step: int, node: str, index: int) -> str:
    """A task's id in ``debug`` chunks: the same for its ``task`` and ``task_result``."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{run_id}/{step}/{node}/{index}"))


def now() -> str:
    """A chunk's timestamp: now, ISO 8601, UTC."""
    return datetime.datetime.now(datetime.UTC).isoformat()


@dataclasses.dataclass(frozen=True)
class StateInput:
    """A debug ``task`` chunk's input that is the run's state, as held: shaped by the app."""

    state: Any


def debug_task(step: int, ident: str, node: str, index: int, input: Any) -> dict[str, Any]:
    """LangGraph's ``debug`` chunk for a task about to run (its step counts from 1)."""
    triggers = ("__pregel_push",) if index >= 0 else (f"branch:to:{node}",)
    return {
        "step": step + 1,
        "timestamp": now(),
        "type": "task",
        "payload": {"id": ident, "name": node, "input": input, "triggers": triggers},
    }


@dataclasses.dataclass(frozen=True, slots=True)
class Asking:
    """The value a ``task_result`` chunk shows for a task that asked a person: no writes,
    its questions (``interrupts.Interrupt``, each with its id) listed as LangGraph lists them."""

    interrupts: tuple[Any, ...]


def debug_result(
    step: int, ident: str, node: str, result: Any, error: BaseException | None
) -> dict[str, Any]:
    """LangGraph's ``debug`` chunk for a task that ended: its writes, or its error, or
    the questions it asked (``Asking``)."""
    asked: list[dict[str, Any]] = []
    if isinstance(result, Asking):
        asked = [
            {"value": q.value, "id": q.id, "response_schema": q.response_schema}
            for q in result.interrupts
        ]
        result = None
    if result is None:
        writes: Any = {}
    elif isinstance(result, Mapping):
        writes = dict(result)
    else:
        writes = result
    return {
        "step": step + 1,
        "timestamp": now(),
        "type": "task_result",
        "payload": {
            "id": ident,
            "name": node,
            "error": error,
            "result": writes,
            "interrupts": asked,
        },
    }


def shape_debug(chunk: dict[str, Any], shape: Callable[[Any], Any]) -> dict[str, Any]:
    """A ``debug`` chunk whose task input is the state, that state shaped by ``shape``."""
    payload = chunk["payload"]
    held = payload.get("input")
    if not isinstance(held, StateInput):
        return chunk
    return {**chunk, "payload": {**payload, "input": shape(held.state)}}


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


#: A chunk of a stream with ``subgraphs=True``: ``(namespace, mode, chunk)``.
NestedChunk = tuple[tuple[str, ...], str, Any]
#: Where a subgraph's chunks go: ``(namespace, mode, chunk)``.
NamespacedSink = Callable[[tuple[str, ...], str, Any], None]
#: The namespaced sink of a stream with ``subgraphs=True``, set by ``chunks_of`` for its
#: run's task: runs nested in that run's nodes send their chunks to it.
_nested_sink: contextvars.ContextVar[NamespacedSink | None] = contextvars.ContextVar(
    "engine_nested_sink", default=None
)


def nested_sink() -> NamespacedSink | None:
    """Where the chunks of runs nested in the streamed run go (None: nobody shows them)."""
    return _nested_sink.get()


async def chunks_of(
    start: Callable[[ChunkSink], Awaitable[Any]],
    modes: tuple[StreamMode, ...],
    pairs: bool,
    *,
    subgraphs: bool = False,
) -> AsyncIterator[Any]:
    """Run ``start(sink)`` (a run with ``on_chunk=sink``) and yield its chunks of ``modes`` as
    they come: the chunk itself, or ``(mode, chunk)`` when ``pairs``; then raise the run's
    error, if any. Closing the iterator early cancels the run.

    ``subgraphs``: the chunks of the runs nested in the run's nodes too (``engine.subgraphs``
    sends them here with their namespace), every item a ``NestedChunk`` (the run's own with
    the namespace ``()``)."""
    queue: asyncio.Queue[NestedChunk | None] = asyncio.Queue()
    wanted = frozenset(modes)
    if "messages" in wanted:  # LangChain's chat models stream tokens: import it off the loop
        await asyncio.to_thread(langchain_available)

    tasks = "tasks" in wanted

    def nested(ns: tuple[str, ...], mode: str, chunk: Any) -> None:
        if mode in wanted:
            queue.put_nowait((ns, mode, chunk))
        if tasks and mode == "debug" and chunk["type"] != "checkpoint":
            queue.put_nowait((ns, "tasks", chunk["payload"]))  # a task's debug chunk's payload

    def sink(mode: str, chunk: Any) -> None:
        nested((), mode, chunk)

    token = _modes.set(wanted)  # the run's task is created in this context: it sees them
    inner = _nested_sink.set(nested if subgraphs else None)
    try:
        task = asyncio.ensure_future(start(sink))
    finally:
        _nested_sink.reset(inner)
        _modes.reset(token)
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while True:
            item = await queue.get()
            if item is None:
                break
            if subgraphs:
                yield item
            else:
                yield item[1:] if pairs else item[2]
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
            with contextlib.suppress(RuntimeError):  # its loop closed meanwhile: it is over
                loop.call_soon_threadsafe(task.cancel)
        thread.join()


__all__ = [
    "STREAM_MODES",
    "UNSTREAMED",
    "Asking",
    "CallStream",
    "ChunkSink",
    "MessageChunk",
    "NamespacedSink",
    "NestedChunk",
    "RunStream",
    "StateInput",
    "StreamMode",
    "chunks_of",
    "current_stream",
    "debug_result",
    "debug_task",
    "drop_chunk",
    "get_message_writer",
    "get_stream_writer",
    "iterate_sync",
    "langchain_available",
    "message_chunk",
    "nested_sink",
    "now",
    "parse_modes",
    "reset_stream",
    "set_stream",
    "shape_debug",
    "streaming_modes",
    "task_id",
    "write_custom",
]

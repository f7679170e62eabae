"""LangChain chat models in the ``messages`` mode: their tokens, the messages nodes return.

::

    dispatcher, around a node call of a run streaming "messages" (driver
    lanes), when langchain-core is installed (imported then, once):
    cpu worker (lanes.channel.worker_stream), around the calls it runs, the same,
    its handler sending through the run's chunk channel:
      install(stream, arg)   the node's input messages are "seen"; LangChain's
                             runnable config for the call gets a callback handler,
                             the run's tags and metadata, and the node's own keys
                             (langgraph_node, langgraph_step, checkpoint_ns...)
        model.invoke(...)    -> on_chat_model_start: the metadata LangChain merged
                             -> on_llm_new_token: ("messages", (chunk.message, metadata))
    recorder, the call succeeded:
      node_output(...)       each message in its update not seen yet:
                             ("messages", (message, metadata))

The handler is a streaming handler to LangChain, so a chat model invoked
inside the node streams its tokens, as under LangGraph's ``messages`` mode.
Nothing here imports langchain-core unless a run streams ``messages``: any
other run pays one dictionary lookup per call.
"""

from __future__ import annotations

import contextvars
import functools
import sys
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from .context import current
from .streaming import CallStream, RunStream, streaming_modes, task_id
from .streaming import langchain_available as available


def run_config() -> Mapping[str, Any]:
    """The config of the run in this context (its tags and metadata): ``engine.context``'s."""
    ctx = current()
    return {} if ctx is None else ctx.config


def loaded() -> bool:
    """Whether langchain-core is imported in this process (nothing to bridge if not)."""
    return "langchain_core" in sys.modules


def wanted() -> bool:
    """Whether the run in this context streams ``messages`` and langchain-core is loaded."""
    return loaded() and "messages" in streaming_modes()


def _messages_in(value: Any) -> Iterator[Any]:
    """LangChain messages in a node's input or update (a dict's values, lists of them)."""
    from langchain_core.messages import BaseMessage

    if isinstance(value, BaseMessage):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _messages_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            if isinstance(item, BaseMessage):
                yield item
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        yield from _messages_in(vars(value))


def _node_metadata(stream: CallStream, ns: str) -> dict[str, Any]:
    config = run_config()
    user = dict(config.get("metadata") or {})
    return {**user, **stream.metadata(), "langgraph_checkpoint_ns": ns}


def _task_ns(stream: CallStream) -> str:
    """The call's ``checkpoint_ns``: the one its config shows (``engine.context``)."""
    ctx = current()
    if ctx is None or not ctx.run_id:
        return f"{stream.node}:{uuid.uuid4()}"
    return f"{stream.node}:{task_id(ctx.run_id, stream.step, stream.node, stream.index)}"


def install(
    stream: CallStream, arg: Any, run: RunStream | None = None
) -> contextvars.Token[Any] | None:
    """LangChain's runnable config for one node call: the run's tags and metadata, the
    node's keys and the messages handler, which sends to ``run`` (the call stream's own
    when it is the run's: in the driver). None when langchain-core is not loaded."""
    if run is None and isinstance(stream.emit, RunStream):
        run = stream.emit
    if not loaded() or run is None:
        return None
    from langchain_core.runnables.config import var_child_runnable_config

    for message in _messages_in(arg):
        if message.id is not None:
            run.see(message.id)
    ns = _task_ns(stream)
    config = run_config()
    metadata = {**_node_metadata(stream, ns), "checkpoint_ns": ns}
    tags = list(config.get("tags") or [])
    handler = _handler_class()(run, tags)
    child = {"callbacks": [handler], "metadata": metadata, "tags": tags}
    return var_child_runnable_config.set(child)  # type: ignore[arg-type]


def uninstall(token: contextvars.Token[Any]) -> None:
    from langchain_core.runnables.config import var_child_runnable_config

    var_child_runnable_config.reset(token)


def node_output(run: RunStream, stream: CallStream, update: Any) -> None:
    """The messages a node returned that no one streamed yet: ``messages`` chunks."""
    if not loaded():
        return
    fresh = [m for m in _messages_in(update) if m.id is None or run.see(m.id)]
    if not fresh:
        return
    metadata = _node_metadata(stream, _task_ns(stream))
    metadata["ls_integration"] = "langgraph"
    for message in fresh:
        run("messages", (message, dict(metadata)))


@functools.cache
def _handler_class() -> type:
    """The callback handler class, built once langchain-core is imported."""
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.outputs import ChatGenerationChunk
    from langchain_core.tracers._streaming import _StreamingCallbackHandler

    class MessagesHandler(BaseCallbackHandler, _StreamingCallbackHandler[Any]):
        """Sends a chat model's tokens to the run's ``messages`` stream, with its metadata."""

        run_inline = True

        def __init__(self, run: RunStream, tags: list[str]) -> None:
            self._run = run
            self._tags = tags
            self._metadata: dict[uuid.UUID, dict[str, Any]] = {}

        def on_chat_model_start(
            self,
            serialized: Any,
            messages: Any,
            *,
            run_id: uuid.UUID,
            tags: list[str] | None = None,
            metadata: dict[str, Any] | None = None,
            **kwargs: Any,
        ) -> None:
            if tags and "nostream" in tags:
                return
            meta = dict(metadata or {})
            if self._tags:
                meta["tags"] = list(self._tags)
            self._metadata[run_id] = meta

        def on_llm_new_token(
            self,
            token: str | list[str | dict[str, Any]],
            *,
            chunk: Any = None,
            run_id: uuid.UUID,
            parent_run_id: uuid.UUID | None = None,
            tags: list[str] | None = None,
            **kwargs: Any,
        ) -> None:
            meta = self._metadata.get(run_id)
            if meta is None or not isinstance(chunk, ChatGenerationChunk):
                return
            message = chunk.message
            if message.id is not None:
                self._run.see(message.id)
            self._run("messages", (message, dict(meta)))

        def on_llm_end(self, response: Any, *, run_id: uuid.UUID, **kwargs: Any) -> None:
            self._metadata.pop(run_id, None)

        def tap_output_aiter(self, run_id: uuid.UUID, output: Any) -> Any:
            return output

        def tap_output_iter(self, run_id: uuid.UUID, output: Any) -> Any:
            return output

    return MessagesHandler


__all__ = [
    "available",
    "install",
    "loaded",
    "node_output",
    "run_config",
    "uninstall",
    "wanted",
]

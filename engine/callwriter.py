"""A node call's stream in this process: set around the call by the dispatcher.

``set_writer`` makes ``get_stream_writer()`` (and, in ``messages`` mode with
LangChain loaded, a chat model's token callbacks) reach the run's stream for
the duration of one call; ``reset_writer`` undoes it. Apart from
``engine.streaming`` so that it can reach both it and ``engine.lcmessages``,
which builds on it.
"""

from __future__ import annotations

import contextvars
import sys
from typing import Any

from .lcmessages import available, install, uninstall
from .streaming import CallStream, ChunkSink, _modes, _stream, drop_chunk


class _Installed:
    """What ``set_writer`` set for one call, undone by ``reset_writer``."""

    def __init__(self, stream: contextvars.Token[Any], langchain: contextvars.Token[Any] | None):
        self.stream = stream
        self.langchain = langchain


def set_writer(
    emit: ChunkSink | None, node: str = "", step: int = 0, index: int = -1, arg: Any = None
) -> _Installed:
    """Set the stream of a call in this process: the dispatcher, around one call (``arg``,
    its input: the messages in it are not streamed again when the node returns them).
    ``emit`` None: a run nobody streams; the stream only says which call runs (for a node
    that asks for its config)."""
    if emit is None:
        return _Installed(_stream.set(CallStream(drop_chunk, node, step, index)), None)
    stream = CallStream(emit, node, step, index)
    langchain = None
    if "messages" in _modes.get() and ("langchain_core" in sys.modules or available()):
        # A chat model in the node streams its tokens, as under LangGraph's messages mode.
        langchain = install(stream, arg)
    return _Installed(_stream.set(stream), langchain)


def reset_writer(installed: _Installed) -> None:
    if installed.langchain is not None:
        uninstall(installed.langchain)
    _stream.reset(installed.stream)


__all__ = ["reset_writer", "set_writer"]

"""The chunk channel: stream chunks from cpu-lane workers to the driver while a node runs.

::

    driver (one streamed run)                     worker process (one submission)
    ChunkChannel: an AF_UNIX listener,            worker_stream(info): the calls' stream
      opened at the run's first cpu call            get_stream_writer()(x)
      accept thread -> a reader per connection       -> connect (once, lazily), send
        recv (mode, chunk) -> deliver(mode, chunk)      (mode, chunk), wait for the ack
        ack                 ---------------------->  returns: the driver has the chunk
    close(): at the run's end                     closed when the submission returns

A worker's writer returns only once the driver's reader has handed the chunk
to the run's sink, so every chunk a node wrote is in the stream before its
call's result can arrive (same order as on the driver's lanes); chunks the
consumer has not read yet wait in the driver, as on every lane. The channel
is opened only for a run that streams and has a cpu call; a worker connects
only when its node writes. A worker that dies
closes its end like any other (the reader sees EOF): crash attribution stays
the markers' (``process.py``). Connections are authenticated with a key made
per run and sent with the call.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import Client, Connection, Listener
from typing import Any, NamedTuple

#: How long ``close`` waits for a reader whose worker closed its end.
_READER_JOIN_S = 5.0


class StreamInfo(NamedTuple):
    """What a worker needs to stream its calls' chunks: sent with each submission."""

    address: str
    authkey: bytes
    node: str
    step: int
    send_index: int = -1
    #: A chunk of Send calls in one submission: each call's Send index, in order.
    send_indexes: tuple[int, ...] = ()
    #: The run streams ``messages``: a LangChain chat model in the node streams its tokens.
    messages: bool = False

    @classmethod
    def unstreamed(
        cls, node: str, step: int, send_index: int = -1, send_indexes: tuple[int, ...] = ()
    ) -> StreamInfo:
        """Which call runs, for a run nobody streams: no channel (its writers drop what
        they are given), only the task's identity, for a node that asks for its config."""
        return cls("", b"", node, step, send_index, send_indexes)


class ChunkChannel:
    """The driver's end of one run's chunk channel.

    Invariant: every connection accepted has one reader thread, which ends
    when its worker closes its end (or dies); after ``close`` no new
    connection is read.
    """

    def __init__(self, deliver: Callable[[str, Any], None]) -> None:
        self._deliver = deliver
        self._authkey = os.urandom(16)
        self._listener = Listener(family="AF_UNIX", authkey=self._authkey)
        address = self._listener.address
        assert isinstance(address, str)
        self.address = address
        self._closed = False
        self._lock = threading.Lock()
        self._readers: list[threading.Thread] = []
        self._accepting = threading.Thread(
            target=self._accept, name="engine-chunks-accept", daemon=True
        )
        self._accepting.start()

    def __repr__(self) -> str:
        return f"<ChunkChannel {self.address!r} readers={len(self._readers)}>"

    def info(
        self, node: str, step: int, index: int = -1, indexes: tuple[int, ...] = ()
    ) -> StreamInfo:
        """What a call of ``node`` in ``step`` (its Send index; a chunk's: each call's)
        sends to its worker."""
        from ..streaming import streaming_modes

        messages = "messages" in streaming_modes()
        return StreamInfo(self.address, self._authkey, node, step, index, indexes, messages)

    def _accept(self) -> None:
        while True:
            try:
                conn = self._listener.accept()
            except Exception:  # closed, or a peer that failed the handshake
                if self._closed:
                    return
                continue
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                reader = threading.Thread(
                    target=self._read, args=(conn,), name="engine-chunks-read", daemon=True
                )
                self._readers.append(reader)
            reader.start()

    def _read(self, conn: Connection) -> None:
        try:
            while True:
                mode, chunk = conn.recv()
                if mode == "messages":
                    self._seen(chunk)
                self._deliver(mode, chunk)
                conn.send_bytes(b"")
        except Exception:
            pass  # the worker closed its end or died; or the run's sink is gone
        finally:
            conn.close()

    def _seen(self, chunk: Any) -> None:
        """A message streamed from a worker is not streamed again when its node returns it."""
        see = getattr(self._deliver, "see", None)  # the run's ``RunStream``
        message_id = getattr(chunk[0], "id", None)
        if see is not None and message_id is not None:
            see(message_id)

    def close(self) -> None:
        """Stop accepting; wait for the readers (their workers closed their ends already)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(Exception):  # wake the accept thread
            Client(self.address, authkey=self._authkey).close()
        self._accepting.join(_READER_JOIN_S)
        self._listener.close()
        for reader in self._readers:
            reader.join(_READER_JOIN_S)

    def alive(self) -> int:
        """Threads of this channel still running (0 after ``close``, for tests)."""
        threads = [self._accepting, *self._readers]
        return sum(t.is_alive() for t in threads)


class WorkerWriter:
    """A worker's end: connects on the first chunk, sends each and waits for its ack.

    A worker that cannot reach the driver's socket (a remote executor's, on
    another host) drops its chunks: streaming never fails a node.
    """

    def __init__(self, info: StreamInfo) -> None:
        self._info = info
        self._conn: Connection | None = None
        self._unreachable = False

    @property
    def reachable(self) -> bool:
        """False once a connection to the driver failed (its chunks are dropped since)."""
        return not self._unreachable

    def __call__(self, mode: str, chunk: Any) -> None:
        if self._unreachable:
            return
        if self._conn is None:
            try:
                self._conn = Client(self._info.address, authkey=self._info.authkey)
            except OSError:
                self._unreachable = True
                return
        try:
            data = pickle.dumps((mode, chunk), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise TypeError(
                f"a {mode!r} stream chunk written in a cpu-lane worker must pickle to reach "
                f"the driver ({type(exc).__name__}: {exc}); write plain data, or run the "
                "node on a driver lane"
            ) from exc
        self._conn.send_bytes(data)
        self._conn.recv_bytes()  # the driver has it

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None


@contextlib.contextmanager
def worker_stream(info: StreamInfo | None) -> Iterator[Callable[[int], None]]:
    """In a worker: the stream of the calls run inside (``UNSTREAMED`` when nobody streams:
    its writers drop what they are given, and a node can tell it runs in a run). Yields
    ``at(i)``: the ``i``-th call of a chunk of Send calls is about to run."""
    from ..streaming import UNSTREAMED, CallStream, drop_chunk, reset_stream, set_stream

    if info is not None and not info.address:  # a task's identity, nothing to stream
        token = set_stream(CallStream(drop_chunk, info.node, info.step, info.send_index))

        def named(i: int) -> None:
            if info.send_indexes:
                set_stream(CallStream(drop_chunk, info.node, info.step, info.send_indexes[i]))

        try:
            yield named
        finally:
            reset_stream(token)
        return
    if info is None:
        token = set_stream(UNSTREAMED)
        try:
            yield _nowhere
        finally:
            reset_stream(token)
        return

    writer = WorkerWriter(info)
    first = CallStream(writer, info.node, info.step, info.send_index)
    token = set_stream(first)
    models = _ChatModels(writer) if info.messages else None
    if models is not None:
        models.enter(first)

    def at(i: int) -> None:
        if info.send_indexes:
            stream = CallStream(writer, info.node, info.step, info.send_indexes[i])
            set_stream(stream)
            if models is not None:
                models.enter(stream)

    try:
        yield at
    finally:
        if models is not None:
            models.leave()
        reset_stream(token)  # the value before the first set, whatever ``at`` set since
        writer.close()


class _ChatModels:
    """In a worker of a run streaming ``messages``: LangChain's handler for the call that
    runs (``engine.lcmessages``), its tokens sent through the chunk channel."""

    def __init__(self, writer: WorkerWriter) -> None:
        from ..lcmessages import available
        from ..streaming import RunStream

        self._run = RunStream(writer) if available() else None
        self._token: Any = None

    def enter(self, stream: Any) -> None:
        from ..lcmessages import install

        if self._run is None:
            return
        self.leave()
        self._token = install(stream, None, self._run)

    def leave(self) -> None:
        from ..lcmessages import uninstall

        if self._token is not None:
            uninstall(self._token)
            self._token = None


def _nowhere(i: int) -> None:
    """``at`` of a run nobody streams: nothing to say which call runs."""


__all__ = ["ChunkChannel", "StreamInfo", "WorkerWriter", "worker_stream"]

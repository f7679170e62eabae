"""Receiving cpu-lane results in the driver, large ones off the event loop.

::

    worker: run_calls -> frame bytes           (frames.encode)
            >= LARGE_RESULT_BYTES, on tmpfs:   frame -> file beside the marker,
                                               SPILLED + path through the pool
    driver: ProcessLane.run -> bytes
            small: decoded on the loop (microseconds)
            large: a thread maps the file (or takes the bytes) and unpickles
                   each blob straight out of it; the call's node is
                   registered with the loop guard meanwhile

A 200 MB result through the pool's pipe used to be read and unpickled by
the pool's own thread, then copied again and unpickled on the loop: the
loop stalled for the whole of it, blamed on no node, and the driver held
the result three times over. Now the driver holds at most the mapped frame
and the value (about twice the result), reads it without the GIL (the
kernel maps the pages), and the GIL time that building the value takes is
the node's, as far as the loop guard can tell. Building a Python object
still needs the GIL: a single 200 MB ``str`` costs the loop the ~0.1 s
that allocating and filling it takes, wherever it happens.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator

from .frames import SPILLED
from .worker import LARGE_RESULT_BYTES


def is_large(data: bytes) -> bool:
    """True for a result worth decoding off the loop: spilled to a file, or large."""
    return data[: len(SPILLED)] == SPILLED or len(data) >= LARGE_RESULT_BYTES


@contextlib.contextmanager
def opened(data: bytes) -> Iterator[bytes | mmap.mmap]:
    """A result's bytes: ``data`` itself, or the file it names, mapped and removed.

    The file is unlinked as soon as it is open (its pages live until the
    mapping is closed), so nothing is left on tmpfs even if decoding fails.
    """
    if data[: len(SPILLED)] != SPILLED:
        yield data
        return
    path = os.fsdecode(data[len(SPILLED) :])
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.unlink(path)
        size = os.fstat(fd).st_size
        mapped = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    try:
        yield mapped
    finally:
        # A view of it still referenced (BufferError): the GC unmaps it later.
        with contextlib.suppress(BufferError):
            mapped.close()


def discard(data: bytes) -> None:
    """Remove the file a result that nobody will read was spilled to (a cancelled call)."""
    if data[: len(SPILLED)] == SPILLED:
        with contextlib.suppress(OSError):
            os.unlink(os.fsdecode(data[len(SPILLED) :]))


__all__ = ["discard", "is_large", "opened"]

"""One exception hierarchy for the engine, rooted at :class:`EngineError`.

Where the standard library has a matching type we subclass it too, so that an
existing ``except TimeoutError`` or ``except ValueError`` keeps working.
Every message names the node, the step and the lane where they apply, and says
what to do.
"""

from __future__ import annotations

import contextlib
from concurrent.futures.process import BrokenProcessPool


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class GraphError(EngineError, ValueError):
    """The graph is invalid; raised by ``Graph.add_*`` and ``Graph.compile``.

    Also raised while a run routes, when a conditional edge's router fails or
    returns something that is not a node: then ``node`` is the edge's source
    and ``step`` the step whose results it was routing (-1 for the input, at
    ``START``), and a router's own exception is ``__cause__``.
    """

    def __init__(self, message: str, *, node: str | None = None, step: int | None = None):
        super().__init__(message)
        self.node = node
        self.step = step


class InvalidUpdateError(EngineError, ValueError):
    """A node returned an update the state schema cannot take."""

    def __init__(
        self,
        message: str,
        *,
        node: str | None = None,
        step: int | None = None,
        field: str | None = None,
        nodes: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.node = node
        self.step = step
        self.field = field
        self.nodes = nodes


class NodeError(EngineError):
    """A node failed (after its retries).

    Carries where it failed (``node``, ``step``, ``lane``, ``attempt``), what the
    original error was (``error_type``, ``error_message``), and the traceback
    text of the process that ran it (``traceback_text``), which for the cpu lane
    is the worker's. The original exception, when it could be brought back, is
    ``__cause__``.
    """

    def __init__(
        self,
        message: str,
        *,
        node: str,
        step: int,
        lane: str,
        attempt: int,
        error_type: str = "",
        error_message: str = "",
        traceback_text: str = "",
        raised: bool = False,
    ) -> None:
        super().__init__(message)
        #: The node's own code raised ``__cause__`` (a run raises that, ``own_error``).
        self.raised = raised
        self.node = node
        self.step = step
        self.lane = lane
        self.attempt = attempt
        self.error_type = error_type
        self.error_message = error_message
        self.traceback_text = traceback_text

    @property
    def error(self) -> BaseException:
        """What the node raised (``__cause__``), as an error handler reads it (LangGraph's
        ``NodeError.error``); this error itself for a timeout, a crash, or an exception
        that could not be brought back from a worker."""
        cause = self.__cause__
        return cause if self.raised and cause is not None else self

    def __str__(self) -> str:
        text = super().__str__()
        if self.traceback_text:
            text += "\n\nTraceback in the process that ran the node:\n" + self.traceback_text
        return text

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only constructor: rebuild through a helper so the error can
        # cross a process boundary (dask, loky) intact.
        return (
            _rebuild_error,
            (type(self), self.args[0] if self.args else "", self.__dict__.copy()),
        )


def _rebuild_error(cls: type[NodeError], message: str, attrs: dict[str, object]) -> NodeError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(attrs)
    return err


class NodeTimeoutError(NodeError, TimeoutError):
    """A node call ran past its ``timeout``."""


class WorkerCrashedError(NodeError, BrokenProcessPool):
    """The worker process running a node died (exit code or signal).

    ``exitcode`` follows ``multiprocessing``: negative is the signal number
    (``-9`` is SIGKILL, often the out-of-memory killer); ``signal`` names it;
    ``pid`` is the dead worker's, where the pool is local. Either may be None
    when the executor could not say (a remote Dask worker).
    """

    def __init__(
        self,
        message: str,
        *,
        exitcode: int | None = None,
        pid: int | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.exitcode = exitcode
        self.pid = pid

    @property
    def signal(self) -> str | None:
        """The name of the signal that killed the worker (``"SIGKILL"``), if one did."""
        import signal

        if self.exitcode is None or self.exitcode >= 0:
            return None
        try:
            return signal.Signals(-self.exitcode).name
        except ValueError:
            return f"signal {-self.exitcode}"


class RecursionLimitError(EngineError, RecursionError):
    """The run took more super-steps than ``recursion_limit``."""


class GraphRecursionError(RecursionLimitError):
    """LangGraph's name for the recursion limit's error: the one the engine raises."""


def own_error(err: NodeError) -> BaseException:
    """The exception a run raises for ``err``: the node's own exception (an ``except
    KeyError:`` around ``invoke`` keeps working), the engine's details added as notes.

    ``err`` itself when there is no node exception to give back: a timeout, a dead
    worker, a refused payload, an exception that could not cross from the worker
    (these are the engine's own errors, ``NodeError`` subclasses).
    """
    cause = err.__cause__
    if not err.raised or cause is None or isinstance(cause, EngineError):
        return err
    if not isinstance(cause, Exception):
        return err
    with contextlib.suppress(AttributeError):  # a type without a __dict__: notes only
        cause.__engine_error__ = err  # type: ignore[attr-defined]
    where = (
        f"During task with name {err.node!r} (step {err.step}, lane {err.lane!r}, "
        f"attempt {err.attempt})"
    )
    if err.error_message and err.error_message != str(cause):
        where += f": {err.error_message}"  # what the engine knows more (a worker_init's build)
    cause.add_note(where)
    if err.traceback_text and cause.__traceback__ is None:
        # It came back from a worker process: its traceback stayed there.
        cause.add_note(f"Traceback in the worker process:\n{err.traceback_text.rstrip()}")
    for note in getattr(err, "__notes__", ()):
        cause.add_note(note)
    return cause


def node_error_of(exc: BaseException) -> NodeError | None:
    """The engine's record of a node's exception a run raised (``node``, ``step``,
    ``lane``, ``attempt``, ``traceback_text``): ``exc`` itself when it is a
    ``NodeError``, else the record ``own_error`` kept; None for any other exception."""
    if isinstance(exc, NodeError):
        return exc
    found = getattr(exc, "__engine_error__", None)
    return found if isinstance(found, NodeError) else None


class CheckpointError(EngineError):
    """A checkpoint could not be saved or loaded (corrupt, foreign, or busy)."""


__all__ = [
    "CheckpointError",
    "EngineError",
    "GraphError",
    "GraphRecursionError",
    "InvalidUpdateError",
    "NodeError",
    "NodeTimeoutError",
    "RecursionLimitError",
    "WorkerCrashedError",
    "node_error_of",
    "own_error",
]

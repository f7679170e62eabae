"""A run's ``config`` and ``runtime``, reaching every node that asks for them, on every lane.

A node (or a router) declares what it wants by its signature, as in
LangGraph: ``fn(state)``, ``fn(state, config)``, ``fn(state, *, runtime)``
(``config`` and ``runtime`` by name, in any position after the state). The
builder reads the signature once (``wants``) and the dispatcher calls the
node through ``adapt``, which passes them from the run's ``RunContext``:

- in the driver, a context variable set by ``CompiledGraph.arun`` for the
  run; the loop's tasks and the thread lane's calls inherit it;
- in a cpu worker, the same context, pickled once per run (``wire``) and
  carried by ``lanes.frames.request`` beside the node's function;
  ``lanes.worker.run_calls`` sets the variable around the calls.

``get_config()`` and ``get_runtime()`` read it from anywhere inside a call.
Imported by worker processes: it imports nothing of the engine at module level.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import inspect
import pickle
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

C = TypeVar("C")

#: The names a node may ask for besides its state.
EXTRAS = ("config", "runtime")


@dataclasses.dataclass(frozen=True)
class Runtime(Generic[C]):
    """What a node taking ``runtime`` gets: the run's ``context`` (``invoke(...,
    context=...)``, made a ``context_schema`` instance when given as a dict), and
    the node call's stream writer (``runtime.stream_writer(chunk)``)."""

    context: C = None  # type: ignore[assignment]
    stream_writer: Callable[[Any], None] = dataclasses.field(default=lambda chunk: None)
    store: Any = None
    previous: Any = None


@dataclasses.dataclass(frozen=True)
class RunContext:
    """One run's ``config`` (a plain dict) and ``context``; the same for every call of the run.

    A call of an interrupted task that resumes gets a context of its own
    (``for_call``): ``answers`` are its answers so far, in the order its
    ``interrupt()`` calls asked; ``asked`` counts the calls it made (fresh
    for every call: a worker rebuilds it from the wire for each request).
    """

    config: Mapping[str, Any]
    context: Any = None
    _wire: list[bytes] = dataclasses.field(default_factory=list, compare=False, repr=False)
    #: The step's answers per interrupted task ((node, Send index) -> answers), set by the
    #: scheduler for a resumed step; ``for_call`` hands a call its own.
    resumes: Mapping[tuple[str, int], tuple[Any, ...]] = dataclasses.field(
        default_factory=dict, compare=False, repr=False
    )
    answers: tuple[Any, ...] = ()
    asked: list[int] = dataclasses.field(default_factory=lambda: [0], compare=False, repr=False)

    def wire(self) -> bytes:
        """The context pickled for a worker, once per run; TypeError saying what to fix."""
        if not self._wire:
            try:
                self._wire.append(_dumps((dict(self.config), self.context, self.answers)))
            except Exception as exc:
                raise TypeError(
                    "the run's config or context cannot be pickled for a cpu-lane worker "
                    f"process ({type(exc).__name__}: {exc}); pass plain data in config= "
                    "and context=, or run the cpu nodes with lane='thread'"
                ) from exc
        return self._wire[0]


def _dumps(obj: Any) -> bytes:
    """The stdlib pickler for plain data (fast); cloudpickle for what only it can send
    (classes and functions of ``__main__``: a context_schema defined in a script)."""
    try:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        data = b"__main__"
    if b"__main__" not in data:
        return data
    import cloudpickle

    out: bytes = cloudpickle.dumps(obj)
    return out


def from_wire(data: bytes) -> RunContext:
    """The ``RunContext`` a worker gets from ``wire()``'s bytes (unpickled once per run
    and worker: a run's calls all carry the same bytes); a resumed call's own, with a
    fresh count of its questions."""
    ctx = _from_wire(data)
    if ctx.answers:
        return dataclasses.replace(ctx, _wire=[], asked=[0])
    return ctx


@functools.lru_cache(maxsize=8)
def _from_wire(data: bytes) -> RunContext:
    config, context, answers = pickle.loads(data)
    return RunContext(config, context, answers=answers)


def with_resumes(ctx: RunContext, resumes: Mapping[tuple[str, int], tuple[Any, ...]]) -> RunContext:
    """``ctx`` for a resumed step: its interrupted tasks' answers (the scheduler's)."""
    return dataclasses.replace(ctx, _wire=[], resumes=dict(resumes))


def resumed(task: Any) -> bool:
    """Whether ``task`` (a ``spec.Task``) resumes with answers in the current run's step."""
    ctx = _current.get()
    return ctx is not None and bool(ctx.resumes) and (task.node, task.index) in ctx.resumes


def for_call(node: str, index: int) -> contextvars.Token[RunContext | None] | None:
    """Around one call of a resumed step (the dispatcher): make its answers current.

    None (nothing set) for every call of a run that resumes nothing: a
    context variable read and one check.
    """
    ctx = _current.get()
    if ctx is None or not ctx.resumes:
        return None
    given = ctx.resumes.get((node, index))
    if not given:
        return None
    return _current.set(dataclasses.replace(ctx, _wire=[], resumes={}, answers=given, asked=[0]))


_current: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar(
    "engine_run_context", default=None
)


def current() -> RunContext | None:
    """The context of the run the caller belongs to (None outside a run)."""
    return _current.get()


def enter(ctx: RunContext | None) -> contextvars.Token[RunContext | None]:
    """Make ``ctx`` the current run's context; give the token to ``leave``."""
    return _current.set(ctx)


def leave(token: contextvars.Token[RunContext | None]) -> None:
    _current.reset(token)


def get_config() -> dict[str, Any]:
    """The config of the run the calling node belongs to (every lane)."""
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("get_config() called outside of a run of a graph")
    return dict(ctx.config)


def get_runtime() -> Runtime[Any]:
    """The runtime of the run the calling node belongs to (every lane)."""
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("get_runtime() called outside of a run of a graph")
    return _runtime(ctx)


def _runtime(ctx: RunContext | None) -> Runtime[Any]:
    from .streaming import get_stream_writer

    return Runtime(context=None if ctx is None else ctx.context, stream_writer=get_stream_writer())


def wants(fn: Callable[..., Any]) -> tuple[str, ...]:
    """Which of ``config`` and ``runtime`` ``fn`` takes by name (its signature, read once)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return ()
    return tuple(name for name in EXTRAS if name in params)


def _extras(names: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not names:
        return out
    ctx = _current.get()
    if "config" in names:
        out["config"] = dict(ctx.config) if ctx is not None else {}
    if "runtime" in names:
        out["runtime"] = _runtime(ctx)
    return out


def call_with(fn: Callable[..., Any], names: tuple[str, ...], *args: Any) -> Any:
    """``fn(*args, config=..., runtime=...)``: the extras ``names`` asks for, from the run."""
    return fn(*args, **_extras(names))


async def acall_with(fn: Callable[..., Any], names: tuple[str, ...], *args: Any) -> Any:
    return await fn(*args, **_extras(names))


def adapt(fn: Callable[..., Any], names: tuple[str, ...], *, is_coroutine: bool) -> Any:
    """``fn`` called the way its signature asks (``fn`` itself when it asks for nothing).

    A ``functools.partial`` of this module's functions: it pickles (by
    reference, the node's function by cloudpickle) to reach a worker.
    """
    if not names:
        return fn
    return functools.partial(acall_with if is_coroutine else call_with, fn, names)


__all__ = [
    "RunContext",
    "Runtime",
    "adapt",
    "current",
    "enter",
    "for_call",
    "from_wire",
    "get_config",
    "get_runtime",
    "leave",
    "resumed",
    "wants",
    "with_resumes",
]

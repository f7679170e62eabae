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

A run of an app built by ``engine.langgraph`` (``RunContext.langgraph``)
gives nodes LangGraph's config instead: the config as given (without
``run_name``), and, per call, the task's own keys (``checkpoint_ns``,
``langgraph_step``/``langgraph_node``/``langgraph_triggers``/
``langgraph_path``/``langgraph_checkpoint_ns`` metadata, ``callbacks``).
They are computed when a node asks (its signature takes ``config``, or it
calls ``get_config()``), from the call stream the dispatcher (or the cpu
worker) sets around the call of a node that may ask: nothing for the others.
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
    ``run_id`` names the run's tasks (``streaming.task_id``); ``langgraph``: the
    config nodes see is LangGraph's, with each task's own keys added per call.
    """

    config: Mapping[str, Any]
    context: Any = None
    run_id: str = ""
    langgraph: bool = False
    _wire: list[bytes] = dataclasses.field(default_factory=list, compare=False, repr=False)
    #: The step's answers per interrupted task ((node, Send index) -> answers), set by the
    #: scheduler for a resumed step; ``for_call`` hands a call its own.
    resumes: Mapping[tuple[str, int], tuple[Any, ...]] = dataclasses.field(
        default_factory=dict, compare=False, repr=False
    )
    answers: tuple[Any, ...] = ()
    asked: list[int] = dataclasses.field(default_factory=lambda: [0], compare=False, repr=False)

    @classmethod
    def of(
        cls, opts: Any, context: Any, *, run_id: str = "", langgraph: bool = False
    ) -> RunContext:
        """The context of a run of ``opts`` (a ``RunOptions``): the engine's node config,
        or, for an ``engine.langgraph`` app, LangGraph's run-wide part of it."""
        if not langgraph:
            return cls(opts.node_config(), context, run_id)
        return cls(langgraph_config(opts.config, opts.thread_id), context, run_id, True)

    def wire(self) -> bytes:
        """The context pickled for a worker, once per run; TypeError saying what to fix."""
        if not self._wire:
            try:
                data = (dict(self.config), self.context, self.run_id, self.langgraph, self.answers)
                self._wire.append(_dumps(data))
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
    config, context, run_id, langgraph, answers = pickle.loads(data)
    return RunContext(config, context, run_id, langgraph, answers=answers)


def with_resumes(ctx: RunContext, resumes: Mapping[tuple[str, int], tuple[Any, ...]]) -> RunContext:
    """``ctx`` for a resumed step: its interrupted tasks' answers (the scheduler's)."""
    return dataclasses.replace(ctx, _wire=[], resumes=dict(resumes))


def resumes() -> Mapping[tuple[str, int], Any]:
    """The answers the current run's step resumes its tasks with, by (node, Send index)."""
    ctx = _current.get()
    return ctx.resumes if ctx is not None and ctx.resumes else {}


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
    return node_config(ctx)


def get_runtime() -> Runtime[Any]:
    """The runtime of the run the calling node belongs to (every lane)."""
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("get_runtime() called outside of a run of a graph")
    return _runtime(ctx)


def _runtime(ctx: RunContext | None) -> Runtime[Any]:
    from .streaming import get_stream_writer

    return Runtime(context=None if ctx is None else ctx.context, stream_writer=get_stream_writer())


#: Keys of a given config LangGraph does not pass on to its nodes.
_NOT_PASSED = ("run_name", "run_id")


def langgraph_config(given: Mapping[str, Any] | None, thread_id: str | None) -> dict[str, Any]:
    """The run-wide part of the config LangGraph gives a node: the config as given (no
    defaults added; no ``run_name``), its ``configurable`` and ``metadata`` always there,
    the run's thread in both."""
    config = {k: v for k, v in (given or {}).items() if k not in _NOT_PASSED}
    configurable = dict(config.get("configurable") or {})
    metadata = dict(config.get("metadata") or {})
    if thread_id is not None:
        configurable["thread_id"] = thread_id
        metadata.setdefault("thread_id", thread_id)
    config["configurable"] = configurable
    config["metadata"] = metadata
    return config


def node_config(ctx: RunContext) -> dict[str, Any]:
    """The config the node call running now sees: the run's; for an ``engine.langgraph``
    app in a call that knows its task (see the module's docstring), with the task's keys."""
    if not ctx.langgraph:
        return dict(ctx.config)
    from .streaming import current_stream

    stream = current_stream()
    if stream is None or not stream.node:
        return dict(ctx.config)
    return task_config(ctx, stream.node, stream.step, stream.index, stream.metadata())


def task_config(
    ctx: RunContext, node: str, step: int, index: int, metadata: Mapping[str, Any]
) -> dict[str, Any]:
    """LangGraph's config of one task: the run's, its ``checkpoint_ns`` (``node:task id``,
    the id its ``debug``/``tasks`` chunks carry) and its ``langgraph_*`` metadata
    (``metadata``, the call stream's), and ``callbacks`` (LangChain's, None here: a chat
    model given this config keeps the handlers the call installed)."""
    from .streaming import task_id

    ns = f"{node}:{task_id(ctx.run_id, step, node, index)}"
    above = ctx.config["configurable"].get("checkpoint_ns")
    if above:  # a subgraph's run: its calling task's namespace first (engine.subgraphs)
        ns = f"{above}|{ns}"
    config = dict(ctx.config)
    config["configurable"] = {**config["configurable"], "checkpoint_ns": ns, "checkpoint_id": None}
    config["metadata"] = {**config["metadata"], **metadata, "langgraph_checkpoint_ns": ns}
    config["callbacks"] = None
    return config


#: Methods a node calls to run a graph inside itself: the subgraph's run needs the task.
_RUNS_GRAPH = ("invoke", "ainvoke", "stream", "astream")


def asks_for_config(fn: Callable[..., Any], takes: tuple[str, ...]) -> bool:
    """Whether a node may read its task's config: it takes ``config``, or its code calls
    ``get_config``, or it may run a graph (``invoke``...: the subgraph's namespace is its
    task's) (read once, when a run's routes are planned; a helper it calls that does is
    not seen: that call gets the run-wide config)."""
    if "config" in takes or _mentions(fn, "get_config"):
        return True
    return any(_mentions(fn, name) for name in _RUNS_GRAPH)


def _mentions(fn: Any, name: str) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        code = getattr(vars(type(fn)).get("__call__"), "__code__", None)
    return code is not None and _code_mentions(code, name)


def _code_mentions(code: Any, name: str) -> bool:
    if name in code.co_names:
        return True
    return any(
        _code_mentions(const, name) for const in code.co_consts if hasattr(const, "co_names")
    )


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
        out["config"] = node_config(ctx) if ctx is not None else {}
    if "runtime" in names:
        out["runtime"] = _runtime(ctx)
    return out


def call_with(fn: Callable[..., Any], names: tuple[str, ...], *args: Any) -> Any:
    """``fn(*args, config=..., runtime=...)``: the extras ``names`` asks for, from the run."""
    return fn(*args, **_extras(names))


def call_router(
    fn: Callable[..., Any], names: tuple[str, ...], node: str, step: int, *args: Any
) -> Any:
    """A router of the edges out of ``node`` (which ran in ``step``), called as ``call_with``
    does; in an ``engine.langgraph`` run, one that reads its config sees ``node``'s task's,
    as LangGraph runs a router inside its node's task."""
    ctx = _current.get()
    if ctx is None or not ctx.langgraph or not asks_for_config(fn, names):
        return fn(*args, **_extras(names))
    from .streaming import CallStream, drop_chunk, reset_stream, set_stream

    token = set_stream(CallStream(drop_chunk, node, step))
    try:
        return fn(*args, **_extras(names))
    finally:
        reset_stream(token)


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
    "asks_for_config",
    "call_router",
    "current",
    "enter",
    "for_call",
    "from_wire",
    "get_config",
    "get_runtime",
    "langgraph_config",
    "leave",
    "node_config",
    "resumes",
    "task_config",
    "wants",
    "with_resumes",
]

"""LangGraph's names over the engine: move an app by changing its imports to this module.

::

    from engine.langgraph import StateGraph, START, END, Send   # was: from langgraph.graph ...

``StateGraph`` builds an ``engine.Graph`` under LangGraph's conventions (a
key a node returns that is no channel is dropped, an instance's fields that
are not None are its update), and its compiled graph runs on the engine's
scheduler: this module holds names and conventions, never a scheduler of its
own. What differs from ``engine.Graph``:

- **Where nodes run**: as LangGraph runs them by default: an ``async def`` on
  the event loop, a plain function on a thread of the driver (its effects on
  module globals happen, nothing moves to a process silently). One keyword
  puts a CPU-bound node in a worker process: ``add_node(..., lane="cpu")``;
  ``compile(lanes="auto")`` lets the engine's measured profile decide.
- **What comes back**: ``invoke`` returns a dict of the output channels, for
  every kind of state; ``stream`` defaults to ``stream_mode="updates"``.
- **Errors**: a node's own exception reaches the caller as its own type, the
  engine's details (node, step, lane, attempt, the worker's traceback) as
  exception notes; the recursion limit is LangGraph's (``GraphRecursionError``
  past ``config["recursion_limit"]``, default 10,007).
- **config and runtime**: the engine's own (``engine.context``), on every
  lane, cpu workers included: a node taking ``config`` (or calling
  ``get_config()``) gets LangGraph's config, the one given with the task's
  own keys (``checkpoint_ns``, ``langgraph_step``/``langgraph_node``...
  metadata); one taking ``runtime`` (or calling ``get_runtime()``) a
  ``Runtime`` whose ``context`` is ``invoke(..., context=...)``.

- **Interrupts**: ``interrupt(value)`` in a node (every lane) stops the run
  with ``"__interrupt__"`` in its output; ``invoke(Command(resume=...),
  config)`` resumes it; ``interrupt_before``/``interrupt_after`` at compile
  time or per call, resumed with ``invoke(None, config)``.

- **Subgraphs**: a compiled graph as a node, or invoked inside a node, runs
  attached to the parent run (its mode, its worker pool, its thread under
  its own checkpoint namespace); ``stream(..., subgraphs=True)``,
  ``get_state(config, subgraphs=True)``, interrupts inside a subgraph and
  ``Command(graph=Command.PARENT)`` as LangGraph (``engine.subgraphs``).

Names whose feature the engine does not have yet raise
``NotImplementedError`` saying so when used.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, Generic, TypeVar

from .app import CompiledGraph
from .cache import CachePolicy, InMemoryCache, SqliteCache
from .checkpoint.savers import (
    AsyncPostgresSaver,
    AsyncSqliteSaver,
    InMemorySaver,
    MemorySaver,
    PostgresSaver,
    SqliteSaver,
)
from .classify import is_coroutine_function
from .context import Runtime, current, get_config, get_runtime
from .drawing import Drawing
from .errors import InvalidUpdateError, NodeError, RecursionLimitError
from .errors import NodeTimeoutError as EngineTimeoutError
from .graph import Graph, command_destinations, node_input_schema
from .interrupts import interrupt as _interrupt
from .interrupts import shown_values
from .lgtypes import (
    All,
    Durability,
    EmptyInputError,
    GraphBubbleUp,
    GraphInterrupt,
    GraphOutput,
    Interrupt,
    NodeInterrupt,
    NodeTimeoutError,
    Overwrite,
    ParentCommand,
    RunnableConfig,
    StreamMode,
    StreamWriter,
    TimeoutPolicy,
    get_store,
    stream_part,
)
from .messages import REMOVE_ALL_MESSAGES, MessagesState, RemoveMessage, add_messages
from .options import RunOptions
from .policy import RetryPolicy
from .running import run_sync
from .spec import END, START, Command, Send
from .state import StateSchema
from .streaming import (
    ChunkSink,
    chunks_of,
    current_stream,
    iterate_sync,
    parse_modes,
    shape_debug,
)
from .streaming import get_stream_writer as engine_stream_writer
from .subgraph_node import SubgraphNode

S = TypeVar("S")

#: LangGraph's default recursion limit (``config["recursion_limit"]``).
DEFAULT_RECURSION_LIMIT = 10_007


class GraphRecursionError(RecursionLimitError):
    """The run took more steps than ``config["recursion_limit"]`` (a ``RecursionError``)."""


def get_stream_writer() -> Callable[[Any], None]:
    """The running node's ``custom`` chunk writer, on every lane (it drops what it is
    given when the run is not streamed); ``RuntimeError`` outside a run, as LangGraph's."""
    if current_stream() is None and current() is None:
        raise RuntimeError("get_stream_writer() called outside of a run of a graph")
    return engine_stream_writer()


interrupt = _interrupt


# -- the builder --------------------------------------------------------------------------


class StateGraph(Generic[S]):
    """LangGraph's ``StateGraph`` over ``engine.Graph``."""

    def __init__(
        self,
        state_schema: type[S],
        context_schema: type | None = None,
        *,
        input_schema: type | None = None,
        output_schema: type | None = None,
    ) -> None:
        self.state_schema = state_schema
        self.context_schema = context_schema
        self.input_schema = input_schema
        self.output_schema = output_schema
        self._node_inputs: dict[str, type] = {}
        self._graph: Graph[S] = Graph(state_schema, context_schema=context_schema)
        self._graph.schema = self._schema()

    def _schema(self) -> StateSchema:
        return StateSchema.of(
            self.state_schema,
            input_schema=self.input_schema,
            output_schema=self.output_schema,
            node_inputs=self._node_inputs,
            conventions="langgraph",
        )

    @property
    def nodes(self) -> dict[str, Any]:
        return dict(self._graph.nodes)

    def add_node(
        self,
        node: str | Callable[..., Any],
        action: Callable[..., Any] | None = None,
        *,
        retry_policy: RetryPolicy | None = None,
        cache_policy: CachePolicy | None = None,
        lane: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        input_schema: type | None = None,
        destinations: Any = None,
        defer: bool = False,
        timeout: float | datetime.timedelta | TimeoutPolicy | None = None,
        error_handler: Callable[..., Any] | None = None,
        **engine_options: Any,
    ) -> StateGraph[S]:
        """``add_node(name, fn)`` or ``add_node(fn)``; ``lane="cpu"`` runs it in a worker.

        ``timeout=`` (seconds, a ``timedelta`` or a ``TimeoutPolicy``'s ``run_timeout``):
        as LangGraph, for ``async def`` nodes (cancelled past it, ``NodeTimeoutError``);
        the engine also stops a sync node given ``lane="cpu"`` (its worker is killed).
        """
        if action is None:
            if not callable(node):
                raise ValueError(f"add_node({node!r}) needs a function")
            action, name = node, getattr(node, "__name__", repr(node))
        else:
            name = str(node)
        if isinstance(action, CompiledStateGraph):  # a subgraph: the engine's own node for it
            action = SubgraphNode(action.app, self._schema().channels, str(node))
        seconds = _timeout_seconds(name, timeout)
        if seconds is not None and lane != "cpu" and not is_coroutine_function(action):
            raise ValueError(
                f"add_node({name!r}, timeout=...): node {name!r} is sync, and a sync call "
                "cannot be stopped in its thread; make it async def, or run it in a worker "
                "process with lane='cpu' (killed past its timeout)"
            )
        if seconds is not None:
            engine_options["timeout"] = seconds
        declared = input_schema if input_schema is not None else node_input_schema(action)
        if declared is not None and declared is not self.state_schema:
            self._node_inputs[name] = declared
        if lane is None:
            # LangGraph's observable behaviour: sync nodes on the driver's threads.
            lane = "io" if is_coroutine_function(action) else "thread"
        self._graph.add_node(
            name,
            action,
            lane=lane,
            retry=retry_policy,
            cache_policy=cache_policy,
            # Read off the function itself: _adapt may wrap it.
            destinations=(
                destinations if destinations is not None else command_destinations(action)
            ),
            defer=defer,
            error_handler=error_handler,
            **engine_options,
        )
        return self

    def add_edge(self, start_key: str | Sequence[str], end_key: str) -> StateGraph[S]:
        self._graph.add_edge(start_key, end_key)
        return self

    def add_conditional_edges(
        self,
        source: str,
        path: Callable[..., Any],
        path_map: Mapping[Hashable, str] | Sequence[str] | None = None,
    ) -> StateGraph[S]:
        self._graph.add_conditional_edges(source, path, path_map)
        return self

    def add_sequence(
        self, nodes: Sequence[Callable[..., Any] | tuple[str, Callable[..., Any]]]
    ) -> StateGraph[S]:
        """Add ``nodes`` (functions, or ``(name, function)`` pairs) with an edge between each
        and the next."""
        if not nodes:
            raise ValueError("add_sequence needs at least one node")
        previous: str | None = None
        for item in nodes:
            if isinstance(item, tuple):
                name, fn = item
            else:
                fn, name = item, getattr(item, "__name__", repr(item))
            self.add_node(name, fn)
            if previous is not None:
                self.add_edge(previous, name)
            previous = name
        return self

    def set_entry_point(self, key: str) -> StateGraph[S]:
        return self.add_edge(START, key)

    def set_finish_point(self, key: str) -> StateGraph[S]:
        return self.add_edge(key, END)

    def set_conditional_entry_point(
        self,
        path: Callable[..., Any],
        path_map: Mapping[Hashable, str] | Sequence[str] | None = None,
    ) -> StateGraph[S]:
        return self.add_conditional_edges(START, path, path_map)

    def compile(
        self,
        checkpointer: Any = None,
        *,
        cache: Any = None,
        interrupt_before: Any = None,
        interrupt_after: Any = None,
        debug: bool = False,
        name: str | None = None,
        lanes: str | None = None,
    ) -> CompiledStateGraph[S]:
        """The runnable graph. ``lanes="auto"`` lets the engine move CPU-bound sync nodes
        to worker processes once a run has measured them."""
        if lanes not in (None, "auto"):
            raise ValueError(f"lanes must be None or 'auto', got {lanes!r}")
        graph = self._graph
        graph.schema = self._schema()  # with the node input schemas added meanwhile
        if lanes == "auto":
            graph = _auto(graph)
        app = graph.compile(
            checkpointer,
            cache=cache,
            interrupt_before=interrupt_before,
            interrupt_after=interrupt_after,
        )
        return CompiledStateGraph(app, self, name or "LangGraph")


def _per_call(opts: RunOptions, kwargs: Mapping[str, Any]) -> RunOptions:
    """``opts`` with a call's own ``interrupt_before``/``interrupt_after`` and
    ``durability``, where it gave them."""
    changes: dict[str, Any] = {}
    before, after = kwargs.get("interrupt_before"), kwargs.get("interrupt_after")
    if before is not None or after is not None:
        changes.update(interrupt_before=before, interrupt_after=after)
    if kwargs.get("durability") is not None:
        changes["durability"] = kwargs["durability"]
    return dataclasses.replace(opts, **changes) if changes else opts


def _auto(graph: Graph[S]) -> Graph[S]:
    """A copy of ``graph`` whose sync nodes on the default thread lane are left to the
    engine's measured lane policy."""
    auto: Graph[S] = Graph(graph.state, context_schema=graph.context_schema)
    auto.schema = graph.schema
    auto.edges = list(graph.edges)
    auto.branches = list(graph.branches)
    for name, spec in graph.nodes.items():
        lane = None if spec.lane == "thread" else spec.lane
        auto.nodes[name] = dataclasses.replace(spec, lane=lane)
    return auto


def _timeout_seconds(
    name: str, timeout: float | datetime.timedelta | TimeoutPolicy | None
) -> float | None:
    """``add_node``'s ``timeout=`` as seconds (None: none)."""
    if isinstance(timeout, TimeoutPolicy):
        if timeout.idle_timeout is not None:
            raise NotImplementedError(
                f"add_node({name!r}, timeout=TimeoutPolicy(idle_timeout=...)) is not supported "
                "by engine.langgraph; give run_timeout= (the call's whole time) instead"
            )
        timeout = timeout.run_timeout
    if isinstance(timeout, datetime.timedelta):
        return timeout.total_seconds()
    return None if timeout is None else float(timeout)


# -- the compiled graph -------------------------------------------------------------------


class CompiledStateGraph(Generic[S]):
    """LangGraph's compiled graph over the engine's ``CompiledGraph``."""

    def __init__(self, app: CompiledGraph[S], builder: StateGraph[S], name: str) -> None:
        self.app = app
        self.builder = builder
        self.name = name
        self.stream_mode = "updates"
        app.shape_chunk = self._shape

    def _shape(self, mode: str, chunk: Any) -> Any:
        """A chunk as LangGraph streams it: every channel in ``values``; updates as dicts."""
        schema = self.app.plan.schema
        if mode == "values":
            return shown_values(chunk, schema.all_values)
        if mode == "debug":
            return shape_debug(chunk, schema.all_values)
        if mode == "updates" and "__interrupt__" not in chunk:
            return {
                node: (dict(upd) if upd and node != "__metadata__" else upd or None)
                for node, upd in chunk.items()
            }
        return chunk

    def __repr__(self) -> str:
        return f"<CompiledStateGraph {self.name} nodes={list(self.app.plan.nodes)}>"

    @property
    def nodes(self) -> dict[str, Any]:
        return {START: None, **dict.fromkeys(self.app.plan.nodes)}

    @property
    def checkpointer(self) -> Any:
        return self.app.checkpointer

    def _options(self, config: Mapping[str, Any] | None, context: Any) -> RunOptions:
        """The run's options: the config and context nodes see travel in them (the
        engine's own mechanism, ``engine.context``: every lane, cpu workers included)."""
        config = dict(config or {})
        configurable = dict(config.get("configurable") or {})
        if self.app.checkpointer is not None and configurable.get("thread_id") is None:
            raise ValueError(
                "this graph has a checkpointer: pass config={'configurable': {'thread_id': ...}}"
            )
        return RunOptions(mode="parallel", config=config, context=context)

    def _output(
        self, values: Mapping[str, Any] | None, output_keys: str | Sequence[str] | None = None
    ) -> Any:
        assert values is not None  # LangGraph's conventions: every state is held as values
        return self.app.plan.schema.output(dict(values), output_keys)

    async def ainvoke(
        self,
        input: Any,
        config: Mapping[str, Any] | None = None,
        *,
        context: Any = None,
        stream_mode: str = "values",
        output_keys: str | Sequence[str] | None = None,
        version: str = "v1",
        **kwargs: Any,
    ) -> Any:
        if stream_mode != "values":  # LangGraph's invoke: the list of that mode's chunks
            chunks = [
                c async for c in self._astream(input, config, context, stream_mode, "v1", kwargs)
            ]
            return GraphOutput(chunks) if version == "v2" else chunks
        opts = _per_call(self._options(config, context), kwargs)
        try:
            result = await self.app.arun(input, opts)
        except (NodeError, RecursionLimitError) as exc:
            raise _own(exc, self.app) from None
        output = self._output(result.values, output_keys)
        if version == "v2":
            return GraphOutput(output, result.interrupts)
        if result.interrupts and isinstance(output, dict):
            output["__interrupt__"] = list(result.interrupts)
        return output

    def invoke(
        self,
        input: Any,
        config: Mapping[str, Any] | None = None,
        *,
        context: Any = None,
        stream_mode: str = "values",
        output_keys: str | Sequence[str] | None = None,
        version: str = "v1",
        **kwargs: Any,
    ) -> Any:
        return run_sync(
            self.ainvoke(
                input,
                config,
                context=context,
                stream_mode=stream_mode,
                output_keys=output_keys,
                version=version,
                **kwargs,
            )
        )

    async def abatch(
        self, inputs: Sequence[Any], config: Any = None, *, return_exceptions: bool = False
    ) -> list[Any]:
        configs = config if isinstance(config, list) else [config] * len(inputs)
        runs = [self.ainvoke(i, c) for i, c in zip(inputs, configs, strict=True)]
        return list(await asyncio.gather(*runs, return_exceptions=return_exceptions))

    def batch(
        self, inputs: Sequence[Any], config: Any = None, *, return_exceptions: bool = False
    ) -> list[Any]:
        return run_sync(self.abatch(inputs, config, return_exceptions=return_exceptions))

    async def _astream(
        self,
        input: Any,
        config: Mapping[str, Any] | None,
        context: Any,
        stream_mode: str | Sequence[str] | None,
        version: str = "v1",
        kwargs: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[Any]:
        if version not in ("v1", "v2"):
            raise ValueError(f"unknown version {version!r}: use 'v1' or 'v2'")
        opts = _per_call(self._options(config, context), kwargs or {})
        modes, pairs = parse_modes(self.stream_mode if stream_mode is None else stream_mode)
        shape = self._shape
        subgraphs = bool((kwargs or {}).get("subgraphs"))

        def run(sink: ChunkSink) -> Awaitable[Any]:
            def shaped(mode: str, chunk: Any) -> None:
                sink(mode, shape(mode, chunk))

            return self.app.arun(input, dataclasses.replace(opts, on_chunk=shaped))

        try:
            if subgraphs:
                async for ns, mode, chunk in chunks_of(run, modes, pairs, subgraphs=True):
                    if version == "v2":
                        yield stream_part(mode, chunk, ns)
                    else:
                        yield (ns, mode, chunk) if pairs else (ns, chunk)
            elif version == "v2":
                async for mode, chunk in chunks_of(run, modes, True):
                    yield stream_part(mode, chunk)
            else:
                async for item in chunks_of(run, modes, pairs):
                    yield item
        except (NodeError, RecursionLimitError) as exc:
            raise _own(exc, self.app) from None

    def astream(
        self,
        input: Any,
        config: Mapping[str, Any] | None = None,
        *,
        context: Any = None,
        stream_mode: str | Sequence[str] | None = None,
        version: str = "v1",
        **kwargs: Any,
    ) -> AsyncIterator[Any]:
        if stream_mode is not None:
            parse_modes(stream_mode)
        return self._astream(input, config, context, stream_mode, version, kwargs)

    def stream(
        self,
        input: Any,
        config: Mapping[str, Any] | None = None,
        *,
        context: Any = None,
        stream_mode: str | Sequence[str] | None = None,
        version: str = "v1",
        **kwargs: Any,
    ) -> Iterator[Any]:
        if stream_mode is not None:
            parse_modes(stream_mode)
        return iterate_sync(
            lambda: self._astream(input, config, context, stream_mode, version, kwargs)
        )

    def get_graph(self) -> Drawing:
        return self.app.get_graph()

    # -- the state API ----------------------------------------------------------------

    @staticmethod
    def _thread(config: Mapping[str, Any], what: str) -> tuple[str, str | None]:
        configurable = dict(config.get("configurable") or {})
        if configurable.get("thread_id") is None:
            raise ValueError(f"{what} needs config['configurable']['thread_id']")
        return str(configurable["thread_id"]), configurable.get("checkpoint_id") or None

    async def aget_state(self, config: Mapping[str, Any], *, subgraphs: bool = False) -> Any:
        self._thread(config, "get_state")
        return await self.app.aget_state(config, subgraphs=subgraphs)

    def get_state(self, config: Mapping[str, Any], *, subgraphs: bool = False) -> Any:
        return run_sync(self.aget_state(config, subgraphs=subgraphs))

    async def aget_state_history(
        self,
        config: Mapping[str, Any],
        *,
        filter: Mapping[str, Any] | None = None,
        before: Mapping[str, Any] | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[Any]:
        self._thread(config, "get_state_history")
        until = self._thread(before, "before")[1] if before else None
        for snap in await self.app.aget_state_history(
            config, before=until, limit=limit, filter=filter
        ):
            yield snap

    def get_state_history(
        self,
        config: Mapping[str, Any],
        *,
        filter: Mapping[str, Any] | None = None,
        before: Mapping[str, Any] | None = None,
        limit: int | None = None,
    ) -> Iterator[Any]:
        self._thread(config, "get_state_history")
        until = self._thread(before, "before")[1] if before else None
        return iter(
            run_sync(self.app.aget_state_history(config, before=until, limit=limit, filter=filter))
        )

    async def aupdate_state(
        self, config: Mapping[str, Any], values: Any, as_node: str | None = None
    ) -> dict[str, Any]:
        thread, checkpoint = self._thread(config, "update_state")
        return await self.app.aupdate_state(
            thread, values, as_node=as_node, checkpoint_id=checkpoint
        )

    def update_state(
        self, config: Mapping[str, Any], values: Any, as_node: str | None = None
    ) -> dict[str, Any]:
        return run_sync(self.aupdate_state(config, values, as_node))

    def clear_cache(self, nodes: Sequence[str] | None = None) -> None:
        self.app.clear_cache(nodes)

    async def aclear_cache(self, nodes: Sequence[str] | None = None) -> None:
        await self.app.aclear_cache(nodes)


def _own(exc: NodeError | RecursionLimitError, app: CompiledGraph[Any]) -> BaseException:
    """The node's own exception, with the engine's details as notes; the NodeError itself
    when the original could not be brought back. A recursion limit: GraphRecursionError."""
    if isinstance(exc, RecursionLimitError):
        return exc if isinstance(exc, GraphRecursionError) else GraphRecursionError(str(exc))
    if isinstance(exc, EngineTimeoutError):  # LangGraph's class: no builtin TimeoutError
        return NodeTimeoutError(
            str(exc),
            node=exc.node,
            step=exc.step,
            lane=exc.lane,
            attempt=exc.attempt,
            error_type=exc.error_type,
            error_message=exc.error_message,
            timeout=app.plan.nodes[exc.node].spec.timeout if exc.node in app.plan.nodes else None,
        )
    cause = exc.__cause__
    if cause is None or isinstance(cause, NodeError):
        return exc
    cause.add_note(
        f"During task with name {exc.node!r} (step {exc.step}, lane {exc.lane!r}, "
        f"attempt {exc.attempt})"
    )
    if exc.traceback_text and exc.lane == "cpu":
        cause.add_note(f"In the worker process:\n{exc.traceback_text}")
    return cause


__all__ = [
    "DEFAULT_RECURSION_LIMIT",
    "END",
    "REMOVE_ALL_MESSAGES",
    "START",
    "All",
    "AsyncPostgresSaver",
    "AsyncSqliteSaver",
    "CachePolicy",
    "Command",
    "CompiledStateGraph",
    "Durability",
    "EmptyInputError",
    "GraphBubbleUp",
    "GraphInterrupt",
    "GraphOutput",
    "GraphRecursionError",
    "InMemoryCache",
    "InMemorySaver",
    "Interrupt",
    "InvalidUpdateError",
    "MemorySaver",
    "MessagesState",
    "NodeError",
    "NodeInterrupt",
    "NodeTimeoutError",
    "Overwrite",
    "ParentCommand",
    "PostgresSaver",
    "RemoveMessage",
    "RetryPolicy",
    "RunnableConfig",
    "Runtime",
    "Send",
    "SqliteCache",
    "SqliteSaver",
    "StateGraph",
    "StreamMode",
    "StreamWriter",
    "TimeoutPolicy",
    "add_messages",
    "get_config",
    "get_runtime",
    "get_store",
    "get_stream_writer",
    "interrupt",
]

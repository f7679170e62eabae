"""The ``Graph`` builder. It records nodes and edges; ``compile()`` freezes them
into a ``GraphSpec`` that ``plan`` validates into an immutable plan. Nothing
below this module sees the builder, and nothing here runs a node.
"""

from __future__ import annotations

import inspect
import itertools
import os
import typing
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .classify import LANES, Lane, declared_lane, is_coroutine_function, pickle_problem
from .context import wants
from .errors import GraphError
from .policy import RetryPolicy
from .spec import (
    END,
    RESERVED,
    START,
    Branch,
    Command,
    ErrorHandler,
    GraphSpec,
    NodeSpec,
    Send,
)
from .state import StateSchema, kind_of

if TYPE_CHECKING:
    from .app import CompiledGraph
    from .cache import CachePolicy, NodeCache
    from .checkpoint import Checkpointer
    from .profile import Profile


S = TypeVar("S")


@dataclass
class Graph(Generic[S]):
    """Builder for an agent graph over a state class (``S``): a TypedDict (its
    ``Annotated[..., reducer]`` fields merged by the reducer), a dataclass or a
    pydantic model.

    ``input_schema``/``output_schema`` narrow what an input may write and what
    a run returns; keys they declare that the state lacks are private
    channels, as are those of a node's own input schema (its first
    parameter's annotation, or ``add_node(..., input_schema=...)``).
    ``context_schema``: the class of ``invoke(..., context=...)`` (a dict given
    there is made one), which nodes taking ``runtime`` read as
    ``runtime.context``.

    Invariant: ``nodes`` holds only validly named, distinct nodes; edges may
    name nodes not added yet (checked at ``compile``).
    """

    state: type[S]
    input_schema: type | None = field(default=None, kw_only=True)
    output_schema: type | None = field(default=None, kw_only=True)
    context_schema: type | None = field(default=None, kw_only=True)
    nodes: dict[str, NodeSpec] = field(default_factory=dict, init=False)
    edges: list[tuple[tuple[str, ...], str]] = field(default_factory=list, init=False)
    branches: list[Branch] = field(default_factory=list, init=False)
    _node_inputs: dict[str, type] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.schema = self._schema()

    def _schema(self) -> StateSchema:
        held: StateSchema | None = getattr(self, "schema", None)
        return StateSchema.of(
            self.state,
            input_schema=self.input_schema,
            output_schema=self.output_schema,
            node_inputs=self._node_inputs,
            # A schema set from outside (engine.langgraph's conventions) keeps them.
            conventions=held.conventions if held is not None else "engine",
        )

    def add_node(
        self,
        name: str | Callable[..., Any],
        fn: Callable[..., Any] | None = None,
        *,
        lane: Lane | str | None = None,
        retry: RetryPolicy | None = None,
        retry_policy: RetryPolicy | None = None,
        timeout: float | None = None,
        reads: Sequence[str] | None = None,
        resources: Mapping[str, int] | None = None,
        worker_init: Callable[[], Any] | None = None,
        memory_per_worker: int | str | None = None,
        batch: bool = True,
        cache_policy: CachePolicy | None = None,
        input_schema: type | None = None,
        destinations: Mapping[str, str] | Sequence[str] | None = None,
        defer: bool = False,
        error_handler: Callable[..., Any] | None = None,
    ) -> Graph[S]:
        """Add a node; ``add_node(fn)`` names it after the function.

        ``fn(state)``, ``fn(state, config)`` or ``fn(state, *, runtime)``: a
        node taking ``config`` gets the run's config (``configurable``,
        ``thread_id``, ``recursion_limit``, ``tags``, ``metadata``,
        ``run_name``), one taking ``runtime`` a ``Runtime`` whose ``context``
        is the run's ``context=``; on every lane. ``retry=`` (or LangGraph's
        name, ``retry_policy=``) retries failed calls; ``timeout=`` seconds
        ends a call that runs longer. ``input_schema=`` (or the annotation of
        ``fn``'s first parameter) is the class of the state the node sees:
        its keys the state lacks are private channels.

        ``resources={"openai": 1}`` counts each call against the run's
        ``limits``/``rates`` budgets. ``worker_init=load`` builds ``load()``
        once per worker process (once per compiled graph for in-driver
        lanes) and passes it to every call: ``fn(state, resource)``.
        ``memory_per_worker="2GB"`` caps the process pool so that that much
        per worker fits in the memory available when a run starts.
        ``batch=False`` sends every call of a ``Send`` fan-out on its own
        (by default, many short cpu calls go to the pool in chunks).
        ``cache_policy=CachePolicy(...)`` keeps the node's results by a key
        of its input in the cache given to ``compile(cache=...)``.

        A node may return ``Command(update=..., goto=...)``: ``update`` is its
        update, ``goto`` (a node name, a ``Send``, a list of them, or END)
        runs in the next step besides the node's edges. ``destinations=("a",
        "b")`` (or ``{"a": "label"}``; inferred from a ``-> Command[Literal["a",
        "b"]]`` annotation) names where it may go: compile checks the names
        and counts them as edges, and the drawing shows them. ``defer=True``
        holds the node's runs back until no other node has a task in the
        next step (a fan-in after branches of unequal length runs once).

        ``error_handler=handler``: when a call of the node fails for good (its
        retries spent; a timeout, a crashed worker included), ``handler(state,
        error)`` runs in the driver, in the same step, with the call's input and
        its ``NodeError`` (``error.node``, ``error.error``: what the node raised).
        What it returns is the task's write instead: an update, or a
        ``Command(update=..., goto=...)`` whose ``goto`` routes the run (the
        node's own edges are not followed). A handler that raises fails the run.
        It may take ``config``/``runtime`` as a node does; ``error`` is passed by
        name. A handler may go to any node, so compile counts every node
        reachable from a node that has one.
        """
        if fn is None:
            if not callable(name):
                raise GraphError(f"add_node({name!r}) needs a function: add_node(name, fn)")
            fn, name = name, getattr(name, "__name__", repr(name))
        if hasattr(fn, "plan") and hasattr(fn, "arun"):  # a compiled graph: a subgraph
            from .subgraph_node import SubgraphNode

            fn, lane = SubgraphNode(fn, self.schema.channels, name), lane or "io"  # type: ignore[arg-type]
        if not isinstance(name, str) or not name:
            raise GraphError(f"node name must be a non-empty string, got {name!r}")
        if name in RESERVED:
            raise GraphError(f"node name {name!r} is reserved; choose another name")
        if name in self.nodes:
            raise GraphError(f"node {name!r} is already in the graph; node names must be unique")
        if not callable(fn):
            raise GraphError(f"node {name!r}: {fn!r} is not callable")
        if lane == "auto":
            lane = None
        if lane is not None and lane not in LANES:
            raise GraphError(
                f"node {name!r}: unknown lane {lane!r}; use one of {', '.join(LANES)} or 'auto'"
            )
        coroutine = is_coroutine_function(fn)
        # A decorator's lane binds as firmly as lane=, so it is checked the same way.
        binding = lane if lane is not None else declared_lane(fn)
        how = f"lane={binding!r}" if lane is not None else f"@engine.{binding}"
        if coroutine and binding in ("thread", "inline"):
            raise GraphError(
                f"node {name!r} is an async def, which lane {binding!r} cannot run "
                f"(declared by {how}); use lane='io' (the event loop) or lane='cpu' "
                "(a worker's own loop)"
            )
        if binding == "cpu":
            problem = pickle_problem(fn)
            if problem is not None:
                raise GraphError(
                    f"node {name!r} has {how} but cloudpickle cannot serialize its "
                    f"function, so it cannot reach a worker process: {problem}. "
                    "Move what it closes over (locks, clients, open files) into the node, "
                    "or use lane='thread'"
                )
        if retry is not None and retry_policy is not None and retry is not retry_policy:
            raise GraphError(f"node {name!r}: pass retry= or retry_policy=, not both")
        retry = retry if retry is not None else retry_policy
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise GraphError(f"node {name!r}: retry must be a RetryPolicy(...), got {retry!r}")
        declared = input_schema if input_schema is not None else node_input_schema(fn)
        if declared is not None and declared is not self.state:
            self._node_inputs[name] = declared
            self.schema = self._schema()
        if timeout is not None and timeout <= 0:
            raise GraphError(f"node {name!r}: timeout must be > 0 seconds, got {timeout!r}")
        if reads is not None:
            unknown = [r for r in reads if r not in self.schema.reducers]
            if unknown:
                raise GraphError(f"node {name!r}: reads= names unknown fields {unknown}")
        if resources is not None:
            from .resources import Budgets

            Budgets().check_node(name, resources)  # units are positive integers
        init = None
        if worker_init is not None:
            from .warm import WorkerInit

            init = WorkerInit.of(worker_init, node=name)
        memory = None
        if memory_per_worker is not None:
            from .warm import parse_size

            memory = parse_size(memory_per_worker, name=f"node {name!r}: memory_per_worker")
        self.nodes[name] = NodeSpec(
            name=name,
            fn=fn,
            lane=lane,
            retry=retry,
            timeout=timeout,
            is_coroutine=coroutine,
            reads=tuple(reads) if reads is not None else None,
            resources=MappingProxyType(dict(resources)) if resources else None,
            worker_init=init,
            memory_per_worker=memory,
            batch=bool(batch),
            cache_policy=_cache_policy(name, cache_policy),
            takes=wants(fn),
            destinations=_destinations(name, destinations, fn),
            defer=bool(defer),
            error_handler=_error_handler(name, error_handler),
        )
        return self

    def add_sequence(
        self, nodes: Sequence[Callable[..., Any] | tuple[str, Callable[..., Any]]]
    ) -> Graph[S]:
        """Add ``nodes`` (functions, or ``(name, fn)`` pairs) with an edge from each to the
        next; the first has no incoming edge (add ``add_edge(START, first)``)."""
        if not nodes:
            raise GraphError("add_sequence needs at least one node")
        names = []
        for item in nodes:
            if isinstance(item, tuple):
                self.add_node(item[0], item[1])
                names.append(item[0])
            else:
                self.add_node(item)
                names.append(list(self.nodes)[-1])
        for source, target in itertools.pairwise(names):
            self.add_edge(source, target)
        return self

    def add_edge(self, source: str | Sequence[str], target: str) -> Graph[S]:
        """Static edge; a list of sources is a fan-in that waits for all of them."""
        sources = (source,) if isinstance(source, str) else tuple(source)
        if not sources:
            raise GraphError("add_edge needs at least one source")
        if END in sources:
            raise GraphError(f"an edge cannot start at END (edge {list(sources)} -> {target!r})")
        if target == START:
            raise GraphError(f"an edge cannot end at START (edge {list(sources)} -> START)")
        if len(sources) > 1 and START in sources:
            raise GraphError("START cannot be one of several fan-in sources")
        if len(set(sources)) != len(sources):
            raise GraphError(f"fan-in sources repeat a node: {list(sources)}")
        self.edges.append((sources, target))
        return self

    def add_conditional_edges(
        self,
        source: str,
        route: Callable[..., Any],
        path_map: Mapping[Hashable, str] | Sequence[str] | None = None,
    ) -> Graph[S]:
        """After ``source`` runs, ``route(state)`` picks the next node(s).

        ``route`` returns a node name, a list of names, a list of ``Send``, or
        ``END``. ``path_map`` (optional) maps its return values to node names and
        lets compile check reachability.
        """
        if source == END:
            raise GraphError("conditional edges cannot start at END")
        if not callable(route):
            raise GraphError(f"conditional edge from {source!r}: route {route!r} is not callable")
        if is_coroutine_function(route):
            raise GraphError(
                f"the router of the conditional edge from {source!r} is async; routers must "
                "be plain functions of the state (do the awaiting in a node before it)"
            )
        mapping: Mapping[Hashable, str] | None
        if path_map is None:
            mapping = None
        elif isinstance(path_map, Mapping):
            mapping = MappingProxyType(dict(path_map))
        else:
            names: dict[Hashable, str] = {name: name for name in path_map}
            mapping = MappingProxyType(names)
        self.branches.append(
            Branch(source=source, route=route, path_map=mapping, takes=wants(route))
        )
        return self

    def freeze(self) -> GraphSpec:
        """What the builder holds now, as an immutable ``GraphSpec``."""
        return GraphSpec(
            schema=self.schema,
            nodes=MappingProxyType(dict(self.nodes)),
            edges=tuple(self.edges),
            branches=tuple(self.branches),
            context_schema=self.context_schema,
        )

    def compile(
        self,
        checkpointer: Checkpointer | None = None,
        *,
        profile: str | os.PathLike[str] | Profile | None = None,
        cache: NodeCache | None = None,
        interrupt_before: Sequence[str] | str | None = None,
        interrupt_after: Sequence[str] | str | None = None,
    ) -> CompiledGraph[S]:
        """Validate the graph and freeze it into a runnable ``CompiledGraph``.

        ``profile`` is a path to a saved profile (``app.save_profile(path)``;
        a missing file starts an empty one) or a ``Profile``: undeclared
        nodes are decided from its measurements, and a cpu node whose
        measured payload costs more to send than to compute is logged.
        ``cache`` (``InMemoryCache()``, ``SqliteCache(path)``) keeps the
        results of nodes added with a ``cache_policy``. ``interrupt_before`` /
        ``interrupt_after``: breakpoints, node names or ``"*"`` (every node): a
        run with a thread stops before a step that runs one of them, or after
        a step that ran one; ``arun(None, thread_id=...)`` goes on.
        """
        from .app import CompiledGraph
        from .lean import payload_warnings
        from .plan import build_plan
        from .profile import Profile

        path = None
        if profile is None:
            prof = Profile()
        elif isinstance(profile, Profile):
            prof = profile
        else:
            path = profile
            prof = Profile.load(profile, missing_ok=True)
        plan = build_plan(self.freeze(), prof.policy())
        payload_warnings([n for n, pn in plan.nodes.items() if pn.lane == "cpu"], prof)
        return CompiledGraph(
            plan,
            checkpointer=checkpointer,
            profile=prof,
            profile_path=path,
            cache=cache,
            interrupt_before=interrupt_before,
            interrupt_after=interrupt_after,
        )


def node_input_schema(fn: Callable[..., Any]) -> type | None:
    """The state class ``fn``'s first parameter is annotated with, if it is one."""
    try:
        params = list(inspect.signature(fn).parameters.values())
        hints = typing.get_type_hints(fn)
    except Exception:
        return None
    if not params:
        return None
    hint = hints.get(params[0].name)
    return hint if isinstance(hint, type) and kind_of(hint) is not None else None


def command_destinations(fn: Callable[..., Any]) -> tuple[str, ...] | None:
    """The targets a ``-> Command[Literal["a", "b"]]`` return annotation names (None: it
    names none)."""
    try:
        hint = typing.get_type_hints(fn).get("return")
    except Exception:
        return None
    found: list[str] = []
    todo = [hint]
    while todo:
        item = todo.pop(0)
        origin = typing.get_origin(item)
        if origin is Command:
            for arg in typing.get_args(item):
                if typing.get_origin(arg) is typing.Literal:
                    found += [str(v) for v in typing.get_args(arg)]
        elif origin is not None:
            todo += list(typing.get_args(item))  # a Union, an Optional
    return tuple(dict.fromkeys(found)) or None


def _destinations(
    name: str, destinations: Mapping[str, str] | Sequence[str] | None, fn: Callable[..., Any]
) -> Mapping[str, str | None] | None:
    """``destinations=`` as target -> label, or the annotation's targets."""
    if destinations is None:
        inferred = command_destinations(fn)
        if inferred is None:
            return None
        return MappingProxyType(dict.fromkeys(inferred))
    if isinstance(destinations, str) or not isinstance(destinations, Mapping | Sequence):
        raise GraphError(
            f"node {name!r}: destinations must be a tuple of node names or a dict of node "
            f"name -> label, got {destinations!r}"
        )
    labels: dict[str, str | None] = (
        {str(k): str(v) for k, v in destinations.items()}
        if isinstance(destinations, Mapping)
        else dict.fromkeys(map(str, destinations))
    )
    if START in labels:
        raise GraphError(f"node {name!r}: destinations cannot include START")
    return MappingProxyType(labels)


def _cache_policy(name: str, policy: Any) -> CachePolicy | None:
    from .cache import CachePolicy

    if policy is not None and not isinstance(policy, CachePolicy):
        raise GraphError(
            f"node {name!r}: cache_policy must be a CachePolicy(key_func=..., ttl=...), "
            f"got {policy!r}"
        )
    return policy


def _error_handler(node: str, fn: Callable[..., Any] | None) -> ErrorHandler | None:
    """A node's ``error_handler=``, its signature read once: ``fn(state)`` or
    ``fn(state, error)``, with ``config``/``runtime`` as a node takes them."""
    if fn is None:
        return None
    if not callable(fn):
        raise GraphError(f"node {node!r}: error_handler {fn!r} is not callable")
    takes = wants(fn)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = None
    if params is not None:
        if "error" in params:
            takes = ("error", *takes)
        try:
            inspect.signature(fn).bind(None, **dict.fromkeys(takes))
        except TypeError as exc:
            raise GraphError(
                f"node {node!r}: its error_handler {getattr(fn, '__qualname__', fn)!r} "
                f"cannot be called as handler(state, error=...) ({exc}); write "
                "def handler(state, error) (the failure comes by the name 'error'), or "
                "def handler(state)"
            ) from exc
    return ErrorHandler(fn=fn, takes=takes, is_coroutine=is_coroutine_function(fn))


__all__ = ["END", "START", "Branch", "Graph", "NodeSpec", "Send", "command_destinations"]

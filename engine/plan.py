"""Validation and the immutable compiled plan.

``build_plan(spec)`` checks a frozen ``GraphSpec`` once and indexes it: nodes
with their lane decisions, static edges by source, fan-in edges, conditional
branches. The scheduler only ever reads a ``Plan``; nothing here sees the
``Graph`` builder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType

from .classify import LaneDecision, ProfilePolicy, classify
from .errors import GraphError
from .lean import Reads, infer_reads
from .spec import END, START, Branch, GraphSpec, NodeSpec, Task
from .state import StateSchema


@dataclass(frozen=True)
class FanIn:
    """A fan-in edge: ``target`` runs once every source finished since it last ran."""

    key: str
    sources: frozenset[str]
    target: str


def deferred_key(node: str) -> str:
    """The fan-in bookkeeping key under which a deferred node's held trigger is kept (its
    set holds the node's own name while it waits: saved in checkpoints like a fan-in's)."""
    return f"defer:{node}"


@dataclass(frozen=True)
class PlanNode:
    """A node with its lane decided, and what it reads of the state (lean dispatch)."""

    spec: NodeSpec
    decision: LaneDecision
    reads: Reads | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def lane(self) -> str:
        return self.decision.lane


@dataclass(frozen=True)
class Plan:
    """The validated, frozen graph the scheduler runs."""

    schema: StateSchema
    nodes: Mapping[str, PlanNode]
    edges: Mapping[str, tuple[str, ...]]  # source -> static single-source targets
    fanins: tuple[FanIn, ...]
    fanins_by_source: Mapping[str, tuple[FanIn, ...]]
    branches: Mapping[str, tuple[Branch, ...]]  # source -> conditional edges
    context_schema: type | None = None  # the class of a run's context=, if declared
    deferred: tuple[str, ...] = ()  # the nodes added with defer=True

    @cached_property
    def fixed_next(self) -> dict[str, tuple[Task, ...] | None]:
        """Per node, filled by ``routing`` as steps run: the tasks after a step in which
        only that node ran, when its plain edges alone decide them (else None)."""
        return {}

    def with_decisions(self, decisions: Mapping[str, LaneDecision]) -> Plan:
        """A copy of this plan with some lane decisions replaced."""
        nodes = {
            name: PlanNode(node.spec, decisions.get(name, node.decision), node.reads)
            for name, node in self.nodes.items()
        }
        return Plan(
            schema=self.schema,
            nodes=MappingProxyType(nodes),
            edges=self.edges,
            fanins=self.fanins,
            fanins_by_source=self.fanins_by_source,
            branches=self.branches,
            context_schema=self.context_schema,
            deferred=self.deferred,
        )


def _check_names(graph: GraphSpec) -> None:
    known = set(graph.nodes)
    for sources, target in graph.edges:
        for name in sources:
            if name != START and name not in known:
                raise GraphError(
                    f"edge {list(sources)} -> {target!r} starts at unknown node {name!r}; "
                    f"add it with add_node first (known: {sorted(known)})"
                )
        if target != END and target not in known:
            raise GraphError(
                f"edge {list(sources)} -> {target!r} ends at unknown node {target!r}; "
                f"add it with add_node first (known: {sorted(known)})"
            )
    for name, spec in graph.nodes.items():
        for target in spec.destinations or {}:
            if target != END and target not in known:
                raise GraphError(
                    f"node {name!r}: destinations names unknown node {target!r}; add it with "
                    f"add_node, or fix the name (known: {sorted(known)})"
                )
    for branch in graph.branches:
        if branch.source != START and branch.source not in known:
            raise GraphError(
                f"conditional edge starts at unknown node {branch.source!r} "
                f"(known: {sorted(known)})"
            )
        for value, target in (branch.path_map or {}).items():
            if target != END and target not in known:
                raise GraphError(
                    f"conditional edge from {branch.source!r}: path_map[{value!r}] names "
                    f"unknown node {target!r} (known: {sorted(known)})"
                )


def _reachable(graph: GraphSpec) -> set[str]:
    """Nodes some path from START reaches. A branch without a path_map, and a node with an
    error handler (its ``Command(goto=...)`` may go anywhere), may reach any node."""
    succ: dict[str, set[str]] = {}
    for sources, target in graph.edges:
        for s in sources:
            succ.setdefault(s, set()).add(target)
    for branch in graph.branches:
        targets = set(branch.path_map.values()) if branch.path_map is not None else set(graph.nodes)
        succ.setdefault(branch.source, set()).update(targets)
    for name, spec in graph.nodes.items():
        succ.setdefault(name, set()).update(spec.destinations or ())
        if spec.error_handler is not None:
            succ[name].update(graph.nodes)
    seen: set[str] = set()
    todo = [START]
    while todo:
        for nxt in succ.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def build_plan(graph: GraphSpec, policy: ProfilePolicy | None = None) -> Plan:
    """Validate a frozen graph and index it; raises GraphError naming the culprit."""
    if not graph.nodes:
        raise GraphError("the graph has no nodes; add_node at least one")
    _check_names(graph)
    has_entry = any(START in sources for sources, _ in graph.edges) or any(
        b.source == START for b in graph.branches
    )
    if not has_entry:
        raise GraphError(
            "no entry: nothing starts from START; add_edge(START, 'first_node') "
            "or add_conditional_edges(START, route)"
        )
    unreachable = sorted(set(graph.nodes) - _reachable(graph))
    # LangGraph's conventions (engine.langgraph) compile them as LangGraph does: a node
    # reached only by an undeclared Command(goto=...) is common there.
    if unreachable and graph.schema.conventions != "langgraph":
        raise GraphError(
            f"node(s) {unreachable} cannot be reached from START; add an edge to them "
            "or remove them (a node whose Command(goto=...) goes there declares it: "
            "add_node(..., destinations=(...)) or a -> Command[Literal[...]] annotation)"
        )

    edges: dict[str, list[str]] = {}
    fanins: list[FanIn] = []
    for sources, target in graph.edges:
        if len(sources) == 1:
            bucket = edges.setdefault(sources[0], [])
            if target not in bucket:
                bucket.append(target)
        elif target == END:
            # A fan-in into END waits for its sources only to run nothing:
            # the run ends once no node is triggered, whatever END's edges
            # say (LangGraph's reading too). Counting its sources would leave
            # a target no step can run, nor any checkpoint name.
            continue
        else:
            key = f"{'+'.join(sorted(sources))}->{target}"
            if any(f.key == key for f in fanins):
                raise GraphError(f"fan-in edge {sorted(sources)} -> {target!r} is added twice")
            fanins.append(FanIn(key=key, sources=frozenset(sources), target=target))
    by_source: dict[str, list[FanIn]] = {}
    for fanin in fanins:
        for s in fanin.sources:
            by_source.setdefault(s, []).append(fanin)
    branches: dict[str, list[Branch]] = {}
    for branch in graph.branches:
        branches.setdefault(branch.source, []).append(branch)

    nodes = {
        name: PlanNode(
            spec,
            classify(name, spec.fn, spec.lane, policy),
            _reads(graph, name, spec),
        )
        for name, spec in graph.nodes.items()
    }
    return Plan(
        schema=graph.schema,
        nodes=MappingProxyType(nodes),
        edges=MappingProxyType({k: tuple(v) for k, v in edges.items()}),
        fanins=tuple(fanins),
        fanins_by_source=MappingProxyType({k: tuple(v) for k, v in by_source.items()}),
        branches=MappingProxyType({k: tuple(v) for k, v in branches.items()}),
        context_schema=graph.context_schema,
        deferred=tuple(name for name, spec in graph.nodes.items() if spec.defer),
    )


def _reads(graph: GraphSpec, name: str, spec: NodeSpec) -> Reads | None:
    """What a node reads: declared with ``reads=``, or (pydantic states) the smaller model
    its first parameter annotates."""
    schema = graph.schema
    if schema.held == "model":
        return infer_reads(name, spec.fn, schema.model, spec.reads)
    if spec.reads is None and name not in schema.node_inputs:
        return None
    view = schema.view(name, spec.reads)
    return Reads(name, view.keys, None, view.source, view=view)

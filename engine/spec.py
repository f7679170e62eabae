"""The graph's vocabulary: ``START``, ``END``, ``Send``, ``Task``, and the frozen
records ``Graph`` builds (``NodeSpec``, ``Branch``) and freezes into a
``GraphSpec``, which ``plan`` validates. It imports nothing from the engine's
later stages, so every stage can depend on it without depending on the
mutable builder.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NamedTuple, TypeVar

from .classify import Lane
from .policy import RetryPolicy

if TYPE_CHECKING:
    from .cache import CachePolicy
    from .state import StateSchema
    from .warm import WorkerInit

START = "__start__"
END = "__end__"
RESERVED = frozenset({START, END})

#: The node names a ``Command`` may go to: ``Command[Literal["a", "b"]]``.
N = TypeVar("N")


@dataclass(frozen=True)
class Send:
    """Run ``node`` in the next step with ``arg`` as its input (instead of the state).

    Returned by a conditional edge's router, one per task, e.g. one per document
    in a map step. Every ``Send`` is its own task with its own index.
    """

    node: str
    arg: Any


@dataclass(frozen=True, kw_only=True)
class Command(Generic[N]):
    """What a node returns to update the state and pick where the run goes next.

    ``update``: the node's update, as a plain return would give it. ``goto``:
    a node name, a ``Send``, or a sequence of them, run in the next step (as
    if a router had returned them). ``resume``: given to a run instead of an
    input, the value an interrupted node's ``interrupt()`` returns (a mapping
    of interrupt ids to values resumes several). ``graph``: ``Command.PARENT``
    sends the command to the graph that holds this one as a subgraph.
    """

    graph: str | None = None
    update: Any = None
    resume: Any = None
    goto: Send | N | Sequence[Send | N] = ()

    #: ``Command(graph=Command.PARENT, ...)``: the parent graph's command.
    PARENT: ClassVar[str] = "__parent__"

    def __repr__(self) -> str:
        shown = [
            f"{name}={value!r}"
            for name, value in (
                ("graph", self.graph),
                ("update", self.update),
                ("resume", self.resume),
                ("goto", self.goto),
            )
            if value is not None and value != ()
        ]
        return f"Command({', '.join(shown)})"


class Task(NamedTuple):
    """One call to make in a step: a node, and its Send payload if it has one.

    Routing makes them; the dispatcher runs them (as ``Call``s: a task at a
    step and an attempt); checkpoints save the next step's. A named tuple: a
    ``Send`` fan-out makes thousands, and one is built twice as fast as a
    frozen dataclass.
    """

    node: str
    #: Send index within the step; -1 when triggered by an edge. (It shadows
    #: ``tuple.index``, which nothing calls on a task.)
    index: int = -1  # type: ignore[assignment]
    payload: Any = None
    has_payload: bool = False

    @property
    def order(self) -> tuple[str, int]:
        """Where its writes go in the step's merge: node name, then Send index."""
        return (self.node, self.index)


@dataclass(frozen=True)
class NodeSpec:
    """A node as added to the graph (before the lane is decided)."""

    name: str
    fn: Callable[..., Any]
    lane: Lane | None  # declared with lane=...; None means decide (auto)
    retry: RetryPolicy | None
    timeout: float | None
    is_coroutine: bool
    reads: tuple[str, ...] | None = None
    resources: Mapping[str, int] | None = None  # budget units per call (engine.resources)
    worker_init: WorkerInit | None = None  # per-worker resource, the node's 2nd argument
    memory_per_worker: int | None = None  # bytes one worker needs for this node (pool cap)
    batch: bool = True  # a fan-out of its short cpu calls may go to the pool in chunks
    cache_policy: CachePolicy | None = None  # results kept by a key of the input (engine.cache)
    takes: tuple[str, ...] = ()  # what it asks for besides the state: "config", "runtime"
    #: Where a ``Command(goto=...)`` it returns may go: target -> label (None: unlabelled).
    #: Declared with ``destinations=`` or a ``-> Command[Literal[...]]`` annotation; None:
    #: not declared (compile cannot check its targets, nor draw them).
    destinations: Mapping[str, str | None] | None = None
    #: Runs only once no other node has a task in the next step (``add_node(defer=True)``).
    defer: bool = False
    #: Called in the driver when a call of the node failed for good (its retries spent):
    #: its return (an update, or a ``Command``) stands in for the call's (``error_handler=``).
    error_handler: ErrorHandler | None = None


@dataclass(frozen=True)
class ErrorHandler:
    """A node's ``error_handler=``: ``fn(state)``, ``fn(state, error)``, and ``config`` or
    ``runtime`` by name as a node takes them; ``error`` is the ``NodeError`` of the call.

    It runs in the driver, in the step of the call it handles, once the call's last
    attempt failed; what it returns is the task's write in the failed call's place (a
    ``Command``'s ``goto`` routes the step instead of the node's edges)."""

    fn: Callable[..., Any]
    takes: tuple[str, ...] = ()  # of "error", "config", "runtime": passed by keyword
    is_coroutine: bool = False


def handler_name(node: str) -> str:
    """The name a node's error handler shows under in streams (LangGraph's)."""
    return f"__error_handler__{node}"


@dataclass(frozen=True)
class Branch:
    """A conditional edge: ``route(state)`` picks the next node(s)."""

    source: str
    route: Callable[..., Any]
    path_map: Mapping[Hashable, str] | None
    takes: tuple[str, ...] = ()  # what the router asks for besides the state (config, runtime)


#: A static edge: its sources (several: a fan-in that waits for all) and its target.
Edge = tuple[tuple[str, ...], str]


@dataclass(frozen=True)
class GraphSpec:
    """A graph as built, frozen by ``Graph.compile``: what ``plan`` validates.

    Nothing in it changes after the builder is used again: the node and
    branch records are frozen, the containers are read-only copies.
    """

    schema: StateSchema
    nodes: Mapping[str, NodeSpec]
    edges: tuple[Edge, ...]
    branches: tuple[Branch, ...]
    #: The class of a run's ``context=`` (``Graph(..., context_schema=...)``), if declared.
    context_schema: type | None = None


__all__ = [
    "END",
    "RESERVED",
    "START",
    "Branch",
    "Command",
    "Edge",
    "ErrorHandler",
    "GraphSpec",
    "NodeSpec",
    "Send",
    "Task",
    "handler_name",
]

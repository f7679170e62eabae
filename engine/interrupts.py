"""Human-in-the-loop: a node asking a person (``interrupt``), and the answers that resume it.

::

    node: interrupt(value)  -- no answer for it yet --> raises GraphInterrupt(value, n)
      lanes.measure: kind "interrupted"; lanes.calls: an ``Interrupted`` outcome
      attempts.settle: kept apart (never retried, never a write)
      scheduler, at the barrier: Interrupt(value, id) per question, the step's finished
        writes saved as pending, the checkpoint records the interrupts and the answers so
        far; the run ends interrupted (RunResult.interrupts)
    caller: arun(Command(resume=...)) --> answers matched to the interrupted tasks
      (``answers``), kept on the task; the step runs again, its finished writes kept:
      each interrupted node runs from its start, and its n-th ``interrupt()`` returns
      its n-th answer (``engine.context``: the run context carries a call's answers to
      every lane, cpu workers included)

An interrupt's id is the same wherever and whenever it is computed
(``interrupt_id``): a hash of the thread, the checkpoint namespace, the
checkpoint the step runs from, the task and the question's position in it,
so an answer given by id in another process finds its question.

Imported by worker processes (through ``engine.context``): standard library only.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

V = TypeVar("V")

#: A task of a step: (node, Send index; -1 for an edge-triggered task).
Order = tuple[str, int]


@dataclasses.dataclass(frozen=True)
class Interrupt(Generic[V]):
    """One question a node asked (``interrupt(value)``): what it asked, and the id an
    answer names it by (``Command(resume={id: answer})``). LangGraph's shape and repr."""

    value: V
    id: str = ""
    response_schema: Any = None


class GraphBubbleUp(Exception):
    """An exception that travels up through a graph instead of failing a node."""


class GraphInterrupt(GraphBubbleUp):
    """Raised by ``interrupt()`` when its question has no answer yet: the node stops, the
    run ends interrupted after the step's other calls finish. Do not catch it in a node
    (``except Exception`` around ``interrupt()`` swallows the question)."""

    def __init__(self, value: Any = None, index: int = 0) -> None:
        super().__init__(value, index)
        self.value = value
        #: Which of the node call's questions this is (0 for its first ``interrupt()``).
        self.index = index


class NodeInterrupt(GraphInterrupt):
    """Raised by a node to stop the run with ``value`` as its question (LangGraph's older
    form of ``interrupt(value)``; a resume runs the node again from its start)."""

    def __init__(self, value: Any = None, index: int = 0) -> None:
        super().__init__(value, index)


def interrupt(value: V) -> Any:
    """Ask a person: stop the run here with ``value`` as the question, or, when the run
    resumes with an answer (``Command(resume=...)``), return that answer.

    A node that asks several questions gets its answers in order: its n-th
    ``interrupt()`` returns the n-th answer it was given; the first one
    without an answer stops the run again. The node runs again from its
    start on each resume: what it does before ``interrupt()`` must be safe to
    repeat. Needs a checkpointer to be resumed (the run's thread keeps the
    question); works on every lane.
    """
    from .context import current

    ctx = current()
    if ctx is None:
        raise RuntimeError("interrupt() called outside of a run of a graph: call it inside a node")
    answers = ctx.answers
    if not answers:
        raise GraphInterrupt(value, 0)
    asked = ctx.asked
    n = asked[0]
    asked[0] = n + 1
    if n < len(answers):
        return answers[n]
    raise GraphInterrupt(value, n)


def is_interrupt(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a node asking a question (not a failure)."""
    return isinstance(exc, GraphInterrupt)


def interrupt_id(thread: str, ns: str, checkpoint: str, order: Order, n: int) -> str:
    """The id of question ``n`` of task ``order`` of the step that runs from ``checkpoint``.

    The same in every process: a resume from another machine matches answers by it.
    """
    node, index = order
    key = f"{thread}\x00{ns}\x00{checkpoint}\x00{node}\x00{index}\x00{n}"
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


@dataclasses.dataclass(frozen=True)
class Asked:
    """A question as the scheduler keeps it: the task that asked it, its position among
    the task's questions, and the ``Interrupt`` the caller sees."""

    node: str
    index: int
    n: int
    interrupt: Interrupt[Any]

    @property
    def order(self) -> Order:
        return (self.node, self.index)


def answers(
    asked: Sequence[Asked],
    kept: Mapping[Order, Sequence[Any]],
    resume: Any,
    *,
    thread: str,
) -> dict[Order, tuple[Any, ...]]:
    """Each interrupted task's answers for its next run: those ``kept`` from earlier
    resumes, plus what ``resume`` answers now.

    ``resume`` is one answer (there must be exactly one open question), or a
    mapping of interrupt ids to answers (any subset of the open questions:
    the others are asked again). RuntimeError otherwise (LangGraph's), naming the open ids.
    A task with several open questions runs a subgraph (its nodes' questions, carried
    up with their ids): its answer is the mapping of its ids answered now, which the
    subgraph's run matches to its own tasks.
    """
    out = {order: tuple(values) for order, values in kept.items()}
    if not asked:
        return out
    by_id = {a.interrupt.id: a for a in asked}
    if isinstance(resume, Mapping) and resume and all(k in by_id for k in resume):
        per_task: dict[Order, dict[str, Any]] = {}
        for key, value in resume.items():
            per_task.setdefault(by_id[key].order, {})[key] = value
        for order, given in per_task.items():
            if sum(a.order == order for a in asked) > 1:
                # A subgraph's task: its run matches the answers to its questions by id.
                value = given
            else:
                (value,) = given.values()
            out[order] = (*out.get(order, ()), value)
        return out
    if len(asked) > 1:
        shown = ", ".join(f"{a.interrupt.id} ({a.node}: {a.interrupt.value!r:.40})" for a in asked)
        raise RuntimeError(
            f"thread {thread!r} has {len(asked)} open interrupts ({shown}); resume with "
            "Command(resume={interrupt_id: answer, ...}), one answer per interrupt id"
        )
    a = asked[0]
    out[a.order] = (*out.get(a.order, ()), resume)
    return out


@dataclasses.dataclass(frozen=True)
class Paused:
    """A ``values`` stream chunk of a step that stopped on questions: the state the step
    started from, and the questions (shown as the state with ``"__interrupt__"``)."""

    state: Any
    interrupts: tuple[Interrupt[Any], ...]


def shown_values(chunk: Any, view: Callable[[Any], Any]) -> Any:
    """A ``values`` chunk as the caller sees it: ``view(state)``, with ``"__interrupt__"``
    added for a step that stopped on questions (when the view is a dict)."""
    if not isinstance(chunk, Paused):
        return view(chunk)
    out = view(chunk.state)
    if isinstance(out, dict):
        return {**out, "__interrupt__": chunk.interrupts}
    return out


#: Breakpoint nodes, as a run keeps them: a set of names, or "*" (every node).
Breakpoints = frozenset[str] | str


def breakpoints(
    nodes: Collection[str], given: Sequence[str] | str | None, what: str
) -> Breakpoints:
    """``given`` breakpoint nodes checked against the graph's ``nodes`` (ValueError naming
    the unknown ones)."""
    if given is None:
        return frozenset()
    if given == "*":
        return "*"
    names = frozenset([given] if isinstance(given, str) else given)
    unknown = sorted(names - set(nodes))
    if unknown:
        raise ValueError(
            f"{what} names {unknown}, which the graph does not have (its nodes: "
            f"{sorted(nodes)}); name its nodes, or '*' for every node"
        )
    return names


def stops_at(points: Breakpoints, nodes: Iterable[str]) -> bool:
    """Whether a step running (or having run) ``nodes`` hits one of the breakpoints."""
    if not points:
        return False
    if points == "*":
        return any(True for _ in nodes)
    return any(n in points for n in nodes)


def joined(a: Breakpoints, b: Breakpoints) -> Breakpoints:
    """Both sets of breakpoints (the compiled graph's and a run's own)."""
    if a == "*" or b == "*":
        return "*"
    assert isinstance(a, frozenset) and isinstance(b, frozenset)
    return a | b


def may_ask(fn: Any) -> bool:
    """Whether a node's own code may call ``interrupt()``: a name its code (or a function
    defined in it) uses is bound to ``interrupt`` (under any alias), or it runs a graph
    (a subgraph node, or a compiled graph it names). What a helper it calls does is not
    seen. Read when a resume decides which task a bare answer goes to (``threads``)."""
    while True:
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif hasattr(fn, "app") and hasattr(fn, "parent_keys"):  # a SubgraphNode
            return True
        elif callable(getattr(fn, "fn", None)):  # a subgraph's node (subgraph_node.ToParent)
            fn = fn.fn
        else:
            break
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        call = vars(type(fn)).get("__call__")
        fn, code = call, getattr(call, "__code__", None)
    if code is None:
        return False
    scope = scope_of(fn, code)
    for name in _names(code):
        value = scope.get(name)
        value = getattr(value, "app", value)  # engine.langgraph's compiled graph wraps one
        if name == "interrupt" or value is interrupt or _runs_graph(value):
            return True
    return False


def scope_of(fn: Any, code: Any) -> dict[str, Any]:
    """What the names ``fn``'s code (``code``) uses are bound to: its module's globals and
    the cells of its closure (an empty cell left out)."""
    scope = dict(getattr(fn, "__globals__", {}))
    for name, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or (), strict=False):
        try:
            scope[name] = cell.cell_contents
        except ValueError:  # an empty cell
            continue
    return scope


def _names(code: Any) -> set[str]:
    out = {*code.co_names, *code.co_freevars}
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            out |= _names(const)
    return out


def _runs_graph(value: Any) -> bool:
    return hasattr(value, "plan") and hasattr(value, "arun") and hasattr(value, "shape_chunk")


__all__ = [
    "Asked",
    "Breakpoints",
    "GraphBubbleUp",
    "GraphInterrupt",
    "Interrupt",
    "NodeInterrupt",
    "Paused",
    "answers",
    "breakpoints",
    "interrupt",
    "interrupt_id",
    "is_interrupt",
    "joined",
    "may_ask",
    "scope_of",
    "shown_values",
    "stops_at",
]

"""Routing: the next step's tasks, from the plan, the nodes that ran, and the merged state.

A pure function of its inputs (it only updates the fan-in bookkeeping it is
handed): static edges, fan-ins whose sources have all run since their target
last ran, conditional edges evaluated on the merged state, the ``Send``s
routers return, and the ``goto`` of the ``Command``s nodes returned (their
names and ``Send``s join the step exactly as a router's results do, besides
the node's own edges). A node whose calls failed and were all handled by its
error handler routes by the handler's goto alone. A deferred node (``defer=True``) triggered while
another node has a task is held (in the fan-in bookkeeping, under
``plan.deferred_key``) until a step would run nothing else. The tasks come
back sorted by (node, Send index): the order a step's writes are merged in.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from .context import call_router
from .errors import GraphError
from .plan import Plan, deferred_key
from .spec import END, START, Send, Task

#: A task's place in its step: (node, Send index).
Order = tuple[str, int]


def start_tasks(plan: Plan, state: Any, fanin: dict[str, set[str]] | None = None) -> list[Task]:
    """The tasks of a fresh run's first step: START's edges and branches on the input.

    ``fanin``: the new cursor's bookkeeping, filled in place (a deferred node START
    triggers alongside others is held there)."""
    return next_tasks(plan, [START], state, step=-1, fanin={} if fanin is None else fanin)


def next_tasks(
    plan: Plan,
    ran: Sequence[str],
    state: Any,
    step: int,
    fanin: dict[str, set[str]],
    gotos: Mapping[Order, Sequence[str | Send]] | None = None,
    handled: Collection[str] = (),
) -> list[Task]:
    """The tasks of the step after ``step``, in which the nodes ``ran`` ran (sorted).

    ``fanin`` (fan-in key -> sources run since its target last ran) is
    updated in place; a router that raises or returns what is not a node is
    a ``GraphError`` naming the edge and the step. ``gotos``: the targets of
    the ``Command``s the step's tasks returned, by task; one that is not a
    node is a ``GraphError`` naming the node, the step and the fix. ``handled``: the
    nodes of ``ran`` whose every task's write was its error handler's; only their
    gotos route, not their edges, fan-ins or branches (nor the handler's return).
    """
    if len(ran) == 1 and not gotos and not handled and not plan.fanins and not plan.deferred:
        fixed = _fixed_next(plan, ran[0])
        if fixed is not None:
            return list(fixed)
    triggered: set[str] = set()
    sends: list[Send] = []
    by_node: dict[str, list[tuple[int, Sequence[str | Send]]]] = {}
    for (node, index), targets in (gotos or {}).items():
        by_node.setdefault(node, []).append((index, targets))
    for name in ran:
        for _, targets in sorted(by_node.get(name, ()), key=lambda pair: pair[0]):
            _goto(plan, name, targets, triggered, sends, step, name in handled)
        if name in handled:
            continue
        triggered.update(t for t in plan.edges.get(name, ()) if t != END)
        for fan in plan.fanins_by_source.get(name, ()):
            fanin.setdefault(fan.key, set()).add(name)
        for branch in plan.branches.get(name, ()):
            try:
                result = call_router(
                    branch.route, branch.takes, name, step, plan.schema.copy(state)
                )
            except Exception as exc:
                raise GraphError(
                    f"the router of the conditional edge from {name!r} raised "
                    f"{type(exc).__name__}: {exc} ({_routing(step)}); fix the router, then "
                    "resume: the step's writes are kept, its nodes do not run again",
                    node=name,
                    step=step,
                ) from exc
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()  # never awaited: close it so it does not warn later
                raise GraphError(
                    f"the router of the conditional edge from {name!r} is async "
                    f"({_routing(step)}); routers must be plain functions of the state",
                    node=name,
                    step=step,
                )
            _interpret(plan, name, branch.path_map, result, triggered, sends, step)
    for fan in plan.fanins:
        if fanin.get(fan.key, set()) >= fan.sources:
            triggered.add(fan.target)
    for fan in plan.fanins:
        # A fan-in target that runs starts counting its sources afresh.
        if fan.target in triggered:
            fanin.pop(fan.key, None)
    if plan.deferred:
        _defer(plan, triggered, sends, fanin)
    tasks = [Task(n) for n in triggered]
    new = tuple.__new__  # (a named tuple's own __new__ is a Python call per task)
    tasks += [new(Task, (s.node, i, s.arg, True)) for i, s in enumerate(sends)]
    tasks.sort(key=_order)  # stable: see _order
    return tasks


def _fixed_next(plan: Plan, node: str) -> tuple[Task, ...] | None:
    """The tasks after a step in which only ``node`` ran, when its plain edges alone decide
    them (no conditional edge, no fan-in, no deferred node in the graph: checked by the
    caller and here); None otherwise. Worked out once per node and plan (a chain's step)."""
    known = plan.fixed_next
    if node in known:
        return known[node]
    fixed = None
    if node not in plan.branches and node not in plan.fanins_by_source:
        targets = sorted({t for t in plan.edges.get(node, ()) if t != END})
        fixed = tuple(Task(t) for t in targets)
    known[node] = fixed
    return fixed


def _defer(plan: Plan, triggered: set[str], sends: list[Send], fanin: dict[str, set[str]]) -> None:
    """Hold the deferred nodes triggered (now or before) while another node has a task;
    release them all into ``triggered`` once none has."""
    held = {n for n in plan.deferred if n in triggered or deferred_key(n) in fanin}
    if not held:
        return
    others = any(n not in held for n in triggered) or any(s.node not in held for s in sends)
    for name in held:
        if others:
            triggered.discard(name)
            fanin[deferred_key(name)] = {name}
        else:
            triggered.add(name)
            fanin.pop(deferred_key(name), None)


def _goto(
    plan: Plan,
    source: str,
    targets: Sequence[str | Send],
    triggered: set[str],
    sends: list[Send],
    step: int,
    handled: bool = False,
) -> None:
    """A node's ``Command(goto=...)`` targets into the next step (END already left out);
    ``handled``: they are its error handler's."""
    for target in targets:
        node = target.node if isinstance(target, Send) else target
        if node not in plan.nodes:
            what = f"Send({node!r}, ...)" if isinstance(target, Send) else repr(node)
            who = f"the error_handler of node {source!r}" if handled else f"node {source!r}"
            raise GraphError(
                f"{who} returned Command(goto={what}) in step {step}, but "
                f"{node!r} is not a node of the graph (known: {sorted(plan.nodes)}); add it "
                "with add_node, or fix the name (END ends the run there), then resume: the "
                "step's other writes are kept, and the node runs again",
                node=source,
                step=step,
            )
        if isinstance(target, Send):
            sends.append(target)
        else:
            triggered.add(target)


#: A task's place in its step is its node's name, then its Send index. The tasks are
#: made with a node's edge-triggered task (index -1, one at most) ahead of its Sends,
#: and the Sends in index order, so a stable sort by name alone puts them in that
#: order: a str key where a pair would be a tuple made and compared per task (a
#: fan-out sorts thousands).
_order = itemgetter(0)


def _interpret(
    plan: Plan,
    source: str,
    path_map: Mapping[Any, str] | None,
    result: Any,
    triggered: set[str],
    sends: list[Send],
    step: int,
) -> None:
    items: Iterable[Any] = result if isinstance(result, list | tuple) else [result]
    for item in items:
        if isinstance(item, Send):
            if item.node not in plan.nodes:
                raise GraphError(
                    f"the router of {source!r} sent to unknown node {item.node!r} "
                    f"({_routing(step)})",
                    node=source,
                    step=step,
                )
            sends.append(item)
            continue
        if item is None and (path_map is None or None not in path_map):
            # Most likely a branch of the router that forgot to return:
            # ending the run silently would hide it (LangGraph refuses it too).
            raise GraphError(
                f"the router of the conditional edge from {source!r} returned None "
                f"({_routing(step)}); return END to end the run there (or a node name, a "
                "list of them, or Sends)",
                node=source,
                step=step,
            )
        if item == END:
            continue
        target = item
        if path_map is not None:
            if item not in path_map:
                raise GraphError(
                    f"the router of {source!r} returned {item!r}, which is not in its "
                    f"path_map {sorted(map(str, path_map))} ({_routing(step)})",
                    node=source,
                    step=step,
                )
            target = path_map[item]
            if target == END:
                continue
        if target not in plan.nodes:
            raise GraphError(
                f"the router of {source!r} returned {target!r}, which is not a node "
                f"(known: {sorted(plan.nodes)}; {_routing(step)})",
                node=source,
                step=step,
            )
        triggered.add(target)


def _routing(step: int) -> str:
    """Which routing a router error happened in, for its message."""
    return "routing the input, before step 0" if step < 0 else f"routing after step {step}"


__all__ = ["next_tasks", "start_tasks"]

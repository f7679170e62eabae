"""Property: over generated graphs, the three modes end in the same state after the same
schedule of calls, and both equal what a small reference interpreter of the BSP rules
(written here, independent of engine's scheduler) computes; for a pydantic state (held
as a model instance) and a TypedDict state (held as channel values) alike."""

from __future__ import annotations

import asyncio
import functools
import operator
from dataclasses import dataclass, field
from typing import Annotated, Any, TypedDict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from engine import END, START, Graph
from tests.support import (
    gen_async,
    gen_sync,
    gen_update,
    route_loop,
    route_parity,
    route_sends,
)

MODES = ("sequential", "concurrent", "parallel")
LIMIT = 60  # recursion_limit of every run, and the reference's step budget

#: How a generated node runs: (lane, async def?). cpu appears twice: a sync node
#: in a worker, and an async node run on a worker's own loop.
KINDS = [("io", True), ("thread", False), ("cpu", False), ("cpu", True), ("inline", False)]


class GenState(BaseModel):
    log: Annotated[list[str], operator.add] = []
    total: Annotated[int, operator.add] = 0
    last: str = ""  # plain: one writer node, never a Send target


class GenDict(TypedDict):
    """``GenState`` as a TypedDict: the same channels and reducers."""

    log: Annotated[list[str], operator.add]
    total: Annotated[int, operator.add]
    last: str


@dataclass(frozen=True)
class Node:
    lane: str
    is_async: bool
    weight: int
    writes_last: bool


@dataclass
class Spec:
    """A generated graph, described as data the reference interpreter also reads."""

    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[tuple[tuple[str, ...], str]] = field(default_factory=list)
    routers: list[tuple[str, str, tuple[Any, ...]]] = field(default_factory=list)


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    """Layers of nodes; static and fan-in edges from one layer to the next; up to two
    routers: parity (forward), Send fan-out (forward or to a leaf 'mapper'), or a loop
    back to an earlier layer that ends once ``total`` reaches a limit."""
    spec = Spec()
    layers: list[list[str]] = []
    for k in range(draw(st.integers(1, 3))):
        names = [f"n{k}{i}" for i in range(draw(st.integers(1, 3)))]
        layers.append(names)
        for name in names:
            lane, is_async = draw(st.sampled_from(KINDS))
            spec.nodes[name] = Node(lane, is_async, draw(st.integers(1, 5)), False)
    layer_of = {name: k for k, names in enumerate(layers) for name in names}
    for name in layers[0]:
        spec.edges.append(((START,), name))
    for k in range(1, len(layers)):
        prev = layers[k - 1]
        for name in layers[k]:
            if len(prev) > 1 and draw(st.booleans()):
                srcs = draw(
                    st.lists(st.sampled_from(prev), min_size=2, max_size=len(prev), unique=True)
                )
                spec.edges.append((tuple(sorted(srcs)), name))
            else:
                spec.edges.append(((draw(st.sampled_from(prev)),), name))
    send_targets: set[str] = set()
    for _ in range(draw(st.integers(0, 2))):
        source = draw(st.sampled_from(sorted(layer_of)))
        later = sorted(n for n, k in layer_of.items() if k > layer_of[source])
        kind = draw(st.sampled_from(["parity", "sends", "loop"]))
        if kind == "parity" and later:
            even = draw(st.lists(st.sampled_from(later), max_size=2, unique=True))
            odd = draw(st.lists(st.sampled_from(later), max_size=2, unique=True))
            spec.routers.append((source, "parity", (even, odd)))
        elif kind == "sends":
            if "mapper" not in spec.nodes:
                lane, is_async = draw(st.sampled_from(KINDS))
                spec.nodes["mapper"] = Node(lane, is_async, draw(st.integers(1, 3)), False)
            target = draw(st.sampled_from(["mapper", *later]))
            send_targets.add(target)
            spec.routers.append((source, "sends", (target, draw(st.integers(0, 4)))))
        elif kind == "loop":
            back = draw(
                st.sampled_from(sorted(n for n in layer_of if layer_of[n] <= layer_of[source]))
            )
            spec.routers.append((source, "loop", (back, draw(st.integers(5, 30)))))
    # One node writes the plain field; no Send targets it, so no step has two writers.
    writers = sorted(n for n in layer_of if n not in send_targets)
    if writers:
        name = draw(st.sampled_from(writers))
        node = spec.nodes[name]
        spec.nodes[name] = Node(node.lane, node.is_async, node.weight, True)
    return spec


ROUTES = {"parity": route_parity, "sends": route_sends, "loop": route_loop}


def build(spec: Spec, state: type = GenState) -> Graph[Any]:
    g: Graph[Any] = Graph(state)
    for name, node in spec.nodes.items():
        fn = gen_async if node.is_async else gen_sync
        g.add_node(name, functools.partial(fn, name, node.weight, node.writes_last), lane=node.lane)
    for sources, target in spec.edges:
        g.add_edge(sources[0] if len(sources) == 1 else list(sources), target)
    for source, kind, args in spec.routers:
        g.add_conditional_edges(source, functools.partial(ROUTES[kind], *args))
    return g


@dataclass
class Outcome:
    state: dict[str, Any]
    calls: list[tuple[int, str, int]]  # (step, node, Send index), sorted


def reference(spec: Spec) -> Outcome | None:
    """The BSP rules, written from DESIGN.md. None: the run needs more than LIMIT steps.

    Per step: run every task on the state as of the step's start (or its payload);
    apply the updates in (node, Send index) order through the reducers; then the
    nodes that ran (sorted), each in turn, trigger their static targets, count
    towards their fan-ins, and evaluate their routers on the merged state, in the
    order the routers were added (Send indices follow that order); a fan-in whose
    sources all ran since its target last ran triggers its target.
    """
    state: dict[str, Any] = {"log": [], "total": 0, "last": ""}
    succ: dict[str, list[str]] = {}
    fanins: list[tuple[frozenset[str], str]] = []
    for sources, target in spec.edges:
        if len(sources) == 1:
            succ.setdefault(sources[0], []).append(target)
        else:
            fanins.append((frozenset(sources), target))
    seen: dict[int, set[str]] = {}
    tasks: list[tuple[str, int, Any]] = sorted({(t, -1, None) for t in succ.get(START, [])})
    calls: list[tuple[int, str, int]] = []
    step = 0
    while tasks:
        if step >= LIMIT:
            return None
        calls += [(step, n, i) for n, i, _ in tasks]
        updates = sorted(
            ((n, i, gen_update(n, spec.nodes[n].weight, spec.nodes[n].writes_last, p)))
            for n, i, p in tasks
        )
        for _, _, upd in updates:
            state["log"] = state["log"] + upd["log"]
            state["total"] += upd["total"]
            if "last" in upd:
                state["last"] = upd["last"]
        view = GenState(**state)
        nxt: set[str] = set()
        sends: list[tuple[str, Any]] = []
        for n in sorted({n for n, _, _ in tasks}):
            nxt.update(t for t in succ.get(n, []) if t != END)
            for k, (srcs, _) in enumerate(fanins):
                if n in srcs:
                    seen.setdefault(k, set()).add(n)
            for source, kind, args in spec.routers:
                if source != n:
                    continue
                if kind == "parity":
                    nxt.update(route_parity(*args, view))
                elif kind == "sends":
                    sends += [(s.node, s.arg) for s in route_sends(*args, view)]
                elif (target := route_loop(*args, view)) != END:
                    nxt.add(target)
        for k, (srcs, target) in enumerate(fanins):
            if seen.get(k, set()) >= srcs:
                nxt.add(target)
        for k, (_, target) in enumerate(fanins):
            if target in nxt:
                seen.pop(k, None)
        tasks = sorted(
            [(t, -1, None) for t in nxt] + [(t, i, a) for i, (t, a) in enumerate(sends)],
            key=lambda t: (t[0], t[1]),
        )
        step += 1
    return Outcome(state, sorted(calls))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(specs())
def test_modes_agree_with_reference(spec: Spec) -> None:
    """sequential, concurrent and parallel make the reference interpreter's calls, step by
    step, and end in its state."""
    expected = reference(spec)
    app = build(spec).compile()

    async def run_all() -> list[Any]:
        # The default (loky) pool is shared by every example and every parallel run.
        return [await app.arun({}, mode=mode, recursion_limit=LIMIT) for mode in MODES]

    assert expected is not None  # loops end once total, which every step raises, hits a limit
    for mode, result in zip(MODES, asyncio.run(run_all()), strict=True):
        calls = sorted((c.step, c.node, c.index) for c in result.trace.calls)
        assert calls == expected.calls, mode
        assert result.state.model_dump() == expected.state, mode


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(specs())
def test_modes_agree_with_reference_on_a_typeddict_state(spec: Spec) -> None:
    """The same, with the state a TypedDict: every lane sees a dict, every mode ends in
    the reference's state, returned as a dict."""
    expected = reference(spec)
    app = build(spec, GenDict).compile()
    start = {"log": [], "total": 0, "last": ""}

    async def run_all() -> list[Any]:
        return [await app.arun(start, mode=mode, recursion_limit=LIMIT) for mode in MODES]

    assert expected is not None
    for mode, result in zip(MODES, asyncio.run(run_all()), strict=True):
        calls = sorted((c.step, c.node, c.index) for c in result.trace.calls)
        assert calls == expected.calls, mode
        assert result.state == expected.state, mode


def test_reference_applies_the_rules() -> None:
    """The reference itself: fan-in waits for both sources, Sends merge in index order."""
    spec = Spec(
        nodes={
            "a": Node("inline", False, 1, False),
            "b": Node("inline", False, 2, False),
            "c": Node("inline", False, 1, True),
            "m": Node("inline", False, 1, False),
        },
        edges=[((START,), "a"), ((START,), "b"), (("a",), "b"), (("a", "b"), "c")],
        routers=[("c", "sends", ("m", 2))],
    )
    out = reference(spec)
    assert out is not None
    assert out.calls == [
        (0, "a", -1),
        (0, "b", -1),
        (1, "b", -1),
        (1, "c", -1),
        (2, "m", 0),
        (2, "m", 1),
    ]
    assert out.state == {
        "log": ["a", "b", "b", "c", "m:60", "m:61"],
        "total": 1 + 2 + 2 + 1 + 1 + 1,
        "last": "c",
    }

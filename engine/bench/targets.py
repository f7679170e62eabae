"""What a benchmark runs: a ``Workload``, named as ``module:attr`` or by a built-in name.

::

    "pkg.graphs:app"  --import pkg.graphs (the working directory first)--> getattr "app"
        Workload                    as is (the built-in workloads are these)
        CompiledGraph               run on --input (default {}: the schema's defaults)
        Graph                       compiled once, then the same
        callable                    a factory returning (app, input) or an app; called
                                    with scale= when it takes that parameter
    "cpu_fanout"      --> the built-in workload "workloads.suite:cpu_fanout"

The library never imports the built-in workloads: they live in the
``workloads`` package of a clone of the repository, next to ``engine``, and
are not installed with it. A bare name is looked up there, and when
``workloads`` is not importable from the working directory (the harness run
from elsewhere), from the clone this ``engine`` was imported from, if it is one.

A ``Workload`` may share a *context* with others: something opened once per
benchmark (the built-ins calibrate their CPU work and start a local LLM
server), passed to every ``build``. The harness opens each context once, for
all the workloads that name it.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .. import CompiledGraph, Graph

#: The modes of the engine, in the order a benchmark runs them.
MODES: tuple[str, ...] = ("sequential", "concurrent", "parallel")
#: Where bare workload names are looked up (``workloads/suite.py`` of a clone).
BUILTIN_MODULE = "workloads.suite"

Built = tuple[Any, Any]  # (CompiledGraph, input)
Say = Callable[[str], None]


class Context(Protocol):
    """What a workload's context factory yields; every attribute is optional.

    ``machine``: facts merged into the report's ``machine`` (the built-ins' unit
    costs); ``deterministic``: whether the final state must be the same in every
    mode (a real model answers differently each time).
    """


ContextFactory = Callable[[Sequence["Workload"], Say], contextlib.AbstractAsyncContextManager[Any]]


@dataclass(frozen=True)
class Variant:
    """Another way to run a workload's work, as an extra row of the benchmark.

    ``label`` names the row (and the ``mode`` of its JSON row); ``mode`` is the
    engine mode it runs in. ``fresh``: build a new graph for every run, so each
    timed run is a graph's first; otherwise one graph serves every run, after a
    warm-up run of its own.
    """

    label: str
    mode: str
    build: Callable[[Any, float], Built]
    fresh: bool = False
    summary: str = ""


@dataclass(frozen=True)
class Workload:
    """A benchmark target: how to build ``(app, input)`` at a size.

    ``build(context, scale)``: ``context`` is what ``context`` yielded (None
    without one); ``scale`` multiplies the workload's durations (``--quick``:
    0.3) when ``scalable``, and the warm-up run uses ``warmup_scale`` of it.
    ``peer(context, scale, input)`` builds the LangGraph version of the same
    work (an ``engine.bench.peers.Peer``), given the engine run's input.
    ``needs`` is for the context (which calibrations, whether an LLM server);
    ``default_modes`` the modes it runs when a benchmark asks for all three.
    """

    name: str
    build: Callable[[Any, float], Built]
    summary: str = ""
    context: ContextFactory | None = None
    needs: tuple[str, ...] = ()
    peer: Callable[[Any, float, Any], Any] | None = None
    variants: tuple[Variant, ...] = ()
    default_modes: tuple[str, ...] = MODES
    scalable: bool = True
    warmup_scale: float = 0.25
    origin: str = field(default="", compare=False)  # how it was named, for messages


# -- resolving a name ----------------------------------------------------------------


def resolve(
    spec: str, *, input: str | None = None, name: str | None = None, peer: str | None = None
) -> Workload:
    """The workload ``spec`` names: ``module:attr`` or a built-in name.

    ``input`` (``--input``: JSON text, or ``@file.json``) replaces the input of
    a user's target; ``peer`` (``--peer module:attr``) is its LangGraph version.
    A ``ValueError`` says what is wrong and what would work.
    """
    if ":" not in spec:
        if input is not None or peer is not None:
            raise ValueError(
                f"--input and --peer apply to your own graph (module:attr), not to the "
                f"built-in workload {spec!r}"
            )
        return builtin(spec)
    obj = import_attr(spec)
    if isinstance(obj, Workload):
        if input is not None or peer is not None:
            raise ValueError(f"{spec} is a Workload: it builds its own input and peer")
        return obj
    data = parse_input(input) if input is not None else None
    module_name, _, attr = spec.partition(":")
    label = name or f"{module_name.rsplit('.', 1)[-1]}.{attr}"
    build, scalable = _builder(obj, spec, data)
    peer_build = _peer_builder(peer) if peer is not None else None
    return Workload(
        name=label,
        build=build,
        summary=f"your graph, {spec}",
        peer=peer_build,
        scalable=scalable,
        warmup_scale=1.0,
        origin=spec,
    )


def builtin(name: str) -> Workload:
    """The built-in workload ``name`` (``workloads.suite``); see the module docstring."""
    known = builtin_workloads()
    if name not in known:
        raise ValueError(
            f"unknown workload {name!r}; known: {', '.join(known)} (or name your own "
            "graph as module:attr, e.g. myapp.graphs:app)"
        )
    return known[name]


def builtin_workloads() -> Mapping[str, Workload]:
    """Every built-in workload by name, in the order ``--list`` shows them."""
    module = _builtin_module()
    found: Mapping[str, Workload] = module.WORKLOADS
    return found


def builtin_default() -> tuple[str, ...]:
    """The built-in workloads a plain ``python -m engine bench`` runs."""
    return tuple(_builtin_module().DEFAULT)


def _builtin_module() -> Any:
    try:
        return importlib.import_module(BUILTIN_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name not in ("workloads", BUILTIN_MODULE):
            raise
    # Not importable from here: the clone this engine was imported from, if it is one.
    root = Path(__file__).resolve().parents[2]
    if (root / "workloads" / "suite.py").is_file():
        sys.path.insert(0, str(root))
        return importlib.import_module(BUILTIN_MODULE)
    raise ValueError(
        "the built-in workloads come with a clone of engine's repository (git clone, then "
        "bash scripts/bench.sh), not with the installed package; benchmark your own graph "
        "with: python -m engine bench mypackage.graphs:app"
    )


def import_attr(spec: str) -> Any:
    """``module:attr`` (attr may be dotted), imported with the working directory on
    ``sys.path`` as ``python -m`` has it (the ``engine`` console script does not)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{spec!r}: expected module:attr, e.g. myapp.graphs:app")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ValueError(
                f"{spec}: no module named {exc.name!r} importable from {cwd} "
                "(run from the directory that holds it, or install it)"
            ) from exc
        raise
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{spec}: module {module_name!r} has no attribute {attr!r}") from None
    return obj


def parse_input(text: str) -> Any:
    """``--input``: JSON text, or ``@path`` to a JSON file."""
    where = "--input"
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"--input {text}: cannot read {path}: {exc}") from exc
        where = str(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where} is not JSON: {exc}") from exc


def _builder(obj: Any, spec: str, data: Any) -> tuple[Callable[[Any, float], Built], bool]:
    """How to build ``(app, input)`` from what ``spec`` named, and whether it scales."""
    if isinstance(obj, Graph):
        obj = obj.compile()
    if isinstance(obj, CompiledGraph):
        app = obj
        value = {} if data is None else data
        return (lambda _ctx, _scale: (app, value)), False
    if not callable(obj):
        raise ValueError(
            f"{spec} is a {type(obj).__name__}; name a compiled graph, a Graph, or a "
            "function returning (app, input)"
        )
    takes_scale = _takes(obj, "scale")

    def build(_ctx: Any, scale: float) -> Built:
        made = obj(scale=scale) if takes_scale else obj()
        app, value = _split(made, spec)
        return app, (value if data is None else data)

    return build, takes_scale


def _split(made: Any, spec: str) -> Built:
    if isinstance(made, Graph):
        made = made.compile()
    if isinstance(made, CompiledGraph):
        return made, {}
    if isinstance(made, tuple) and len(made) == 2:
        app, value = made
        if isinstance(app, Graph):
            app = app.compile()
        if isinstance(app, CompiledGraph):
            return app, value
    raise ValueError(
        f"{spec}() returned {type(made).__name__}; a factory returns (compiled graph, "
        "input) or a compiled graph"
    )


def _takes(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _peer_builder(spec: str) -> Callable[[Any, float, Any], Any]:
    """``--peer module:attr``: a LangGraph compiled graph, a StateGraph, or a factory
    returning (graph, input) or a graph; timed from LangGraph's debug stream."""
    from .peers import StreamedPeer

    obj = import_attr(spec)

    def build(_ctx: Any, _scale: float, default_input: Any) -> Any:
        made = obj
        if not hasattr(made, "astream") and callable(made) and not hasattr(made, "compile"):
            made = made()
        value = default_input
        if isinstance(made, tuple) and len(made) == 2:
            made, value = made
        if not hasattr(made, "astream") and hasattr(made, "compile"):
            made = made.compile()
        if not hasattr(made, "astream"):
            raise ValueError(
                f"--peer {spec}: expected a compiled LangGraph graph (or a StateGraph, or a "
                f"function returning (graph, input)), got {type(made).__name__}"
            )
        return StreamedPeer(made, value)

    return build


# -- contexts --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_contexts(workloads: Sequence[Workload], say: Say) -> AsyncIterator[dict[str, Any]]:
    """Each distinct context of ``workloads`` opened once: workload name -> its context
    (None for a workload without one)."""
    async with contextlib.AsyncExitStack() as stack:
        opened: dict[int, Any] = {}
        factories: dict[int, ContextFactory] = {}
        for w in workloads:
            if w.context is not None:
                factories.setdefault(id(w.context), w.context)
        for key, factory in factories.items():
            sharing = [w for w in workloads if w.context is not None and id(w.context) == key]
            opened[key] = await stack.enter_async_context(factory(sharing, say))
        yield {w.name: opened[id(w.context)] if w.context is not None else None for w in workloads}


def context_machine(contexts: Mapping[str, Any]) -> dict[str, Any]:
    """The facts the contexts add to the report's ``machine``."""
    out: dict[str, Any] = {}
    for ctx in contexts.values():
        out.update(getattr(ctx, "machine", None) or {})
    return out


def deterministic(ctx: Any) -> bool:
    """Whether a workload's final state must be the same in every mode: only when its
    context says so (the built-ins with the local LLM server). A user's graph may
    call a real model; a difference is then reported, not failed."""
    return bool(getattr(ctx, "deterministic", False))


__all__ = [
    "BUILTIN_MODULE",
    "MODES",
    "Variant",
    "Workload",
    "builtin",
    "builtin_default",
    "builtin_workloads",
    "import_attr",
    "open_contexts",
    "parse_input",
    "resolve",
]

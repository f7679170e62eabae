"""Imports point one way: no module of the engine depends, at run time, on one that depends on it.

Read from the source (every ``import``, at any depth, except under ``if
TYPE_CHECKING:``), so a function-level import that closes a cycle counts too.
What a stage must never touch is checked through every import chain, not only
its own imports: ``plan -> lean -> profile -> lanes`` reaches the lanes as
surely as ``plan -> lanes`` does. The chains stop at ``engine.app``, the module
that wires the stages into a runnable graph (``Graph.compile`` returns one).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "engine"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(engine modules imported at run time, every top-level package imported)."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    engine: set[str] = set()
    external: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                external.add(alias.name.split(".")[0])
                if alias.name.startswith("engine."):
                    engine.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                engine.add(target)
            elif node.module:
                external.add(node.module.split(".")[0])
                if node.module.startswith("engine"):
                    engine.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return engine - {name}, external


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
GRAPH = {name: _imports(path)[0] & set(MODULES) for name, path in MODULES.items()}
# A package's __init__ re-exports its modules; an import of the package is an
# import of what it re-exports, so cycles through it count.


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(GRAPH.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state:
                found = walk(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(GRAPH):
        if node not in state:
            found = walk(node)
            if found:
                return found
    return None


def test_no_import_cycles() -> None:
    """No engine module imports, directly or not, a module that imports it."""
    assert _cycle() is None


# The running stages, above the plan: what the stages below must never reach.
RUNNING = {"engine.scheduler", "engine.routing", "engine.attempts", "engine.dispatch"}
# What each stage never touches (DESIGN.md's module table), through any chain of imports.
NEVER = {
    "engine.errors": {"engine"},  # the root of the error tree depends on nothing
    "engine.procs": {"engine"},  # process helpers: the standard library only
    "engine.state": {"engine.lanes", "engine.checkpoint", "engine.graph", *RUNNING},
    "engine.spec": {"engine.graph", "engine.plan", "engine.lanes", *RUNNING},
    "engine.graph": {"engine.lanes", *RUNNING},
    "engine.classify": {"engine.lanes", "engine.plan", *RUNNING},
    "engine.plan": {"engine.lanes", "engine.checkpoint", "engine.graph", *RUNNING},
    "engine.routing": {"engine.lanes", "engine.dispatch", "engine.checkpoint", "engine.graph"},
    "engine.dispatch": {"engine.scheduler", "engine.attempts", "engine.checkpoint", "engine.graph"},
    "engine.attempts": {"engine.scheduler", "engine.checkpoint", "engine.graph"},
    "engine.recorder": {"engine.graph", "engine.checkpoint", *RUNNING},
    "engine.lanes": {"engine.graph", "engine.plan", "engine.state", "engine.recorder", *RUNNING},
    "engine.events": {"engine.lanes", *RUNNING},
    "engine.trace": {"engine.lanes", *RUNNING},
    "engine.checkpoint": {"engine.lanes", "engine.plan", "engine.graph", *RUNNING},
}
#: The module that wires the stages together: import chains stop there.
WIRING = "engine.app"


def _reached(name: str) -> dict[str, list[str]]:
    """Every engine module ``name`` imports, directly or not, with one chain to it."""
    chains: dict[str, list[str]] = {}
    todo = [[name]]
    while todo:
        chain = todo.pop()
        for dep in sorted(GRAPH.get(chain[-1], ())):
            if dep in chains or dep == name:
                continue
            chains[dep] = [*chain, dep]
            if dep != WIRING:
                todo.append(chains[dep])
    return chains


@pytest.mark.parametrize("stage", sorted(NEVER))
def test_stages_never_reach_what_they_must_not_touch(stage: str) -> None:
    """Each stage's modules stay out of the stages DESIGN.md says it never touches, through
    every chain of imports."""
    bad = []
    for name in GRAPH:
        if name != stage and not name.startswith(stage + "."):
            continue
        for dep, chain in _reached(name).items():
            for banned in NEVER[stage]:
                if (dep == banned or dep.startswith(banned + ".")) and not dep.startswith(stage):
                    bad.append(" -> ".join(chain))
    assert bad == []


def test_chains_are_followed() -> None:
    """The check follows chains: a module reached through another counts as imported."""
    chains = _reached("engine.plan")
    assert "engine.errors" in chains  # plan -> errors, and errors through classify too
    indirect = [dep for dep, chain in chains.items() if len(chain) > 2]
    assert indirect, "no module reached through another: the walk stopped at direct imports"


def test_checkpoints_never_pickle() -> None:
    """Loading a checkpoint must not run code: the checkpoint package imports no pickler."""
    picklers = {"pickle", "cloudpickle", "dill", "marshal", "shelve", "joblib"}
    for name, path in MODULES.items():
        if name.startswith("engine.checkpoint"):
            assert _imports(path)[1] & picklers == set(), name


WORKER_SIDE = {
    "engine.lanes.worker",
    "engine.lanes.measure",
    "engine.lanes.frames",
    "engine.context",  # the run's config and context, set around a worker's calls
    "engine.lanes.channel",  # a worker's stream chunks, sent to the driver as they are written
}
#: Stdlib-only modules a worker may reach: a node's stream writer (``runtime.stream_writer``),
#: a node's questions (``interrupt()``).
WORKER_LIGHT = {
    "engine.procs",
    "engine.streaming",
    "engine.running",
    "engine.lcmessages",
    "engine.interrupts",
}


def test_the_worker_side_stays_light() -> None:
    """What every worker process imports (its entry point, the measuring, the wire format)
    reaches no engine module but engine.procs, engine.otel and each other."""
    for name in WORKER_SIDE:
        assert set(_reached(name)) <= WORKER_SIDE | WORKER_LIGHT | {"engine.otel"}, name

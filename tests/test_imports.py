"""Imports point one way: no module of the engine depends, at run time, on one that depends on it.

Read from the source (every ``import``, at any depth, except under ``if
TYPE_CHECKING:``), so a function-level import that closes a cycle counts too.
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


# What each stage never touches (DESIGN.md's module table), as imports it must not make.
NEVER = {
    "engine.errors": {"engine"},  # the root of the error tree depends on nothing
    "engine.procs": {"engine"},  # process helpers: the standard library only
    "engine.state": {"engine.lanes", "engine.scheduler", "engine.checkpoint", "engine.graph"},
    "engine.spec": {"engine.graph", "engine.plan", "engine.scheduler", "engine.lanes"},
    "engine.graph": {"engine.scheduler", "engine.lanes"},
    "engine.classify": {"engine.scheduler", "engine.lanes", "engine.plan"},
    "engine.plan": {"engine.scheduler", "engine.lanes", "engine.checkpoint", "engine.graph"},
    "engine.lanes": {"engine.graph", "engine.plan", "engine.scheduler", "engine.state"},
    "engine.events": {"engine.scheduler", "engine.lanes"},
    "engine.trace": {"engine.scheduler", "engine.lanes"},
    "engine.checkpoint": {"engine.scheduler", "engine.lanes", "engine.plan", "engine.graph"},
}


@pytest.mark.parametrize("stage", sorted(NEVER))
def test_stages_never_import_what_they_must_not_touch(stage: str) -> None:
    """Each stage's modules stay out of the stages DESIGN.md says it never touches."""
    bad = []
    for name, deps in GRAPH.items():
        if name != stage and not name.startswith(stage + "."):
            continue
        for dep in deps:
            for banned in NEVER[stage]:
                if (dep == banned or dep.startswith(banned + ".")) and not dep.startswith(stage):
                    bad.append(f"{name} imports {dep}")
    assert bad == []


def test_checkpoints_never_pickle() -> None:
    """Loading a checkpoint must not run code: the checkpoint package imports no pickler."""
    picklers = {"pickle", "cloudpickle", "dill", "marshal", "shelve", "joblib"}
    for name, path in MODULES.items():
        if name.startswith("engine.checkpoint"):
            assert _imports(path)[1] & picklers == set(), name


def test_the_worker_side_stays_light() -> None:
    """lanes.worker is imported in every worker process: no engine module but engine.procs."""
    assert GRAPH["engine.lanes.worker"] <= {"engine.procs"}

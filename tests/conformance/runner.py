"""Runs a conformance program as written (``langgraph``) or with its imports switched (``engine``).

The promise under test is "change one import": a LangGraph app moves to the
engine by rewriting its ``from langgraph.X import ...`` lines, nothing else.
So the runner never imports a program; it reads its source and:

- side ``"langgraph"``: executes it as written;
- side ``"engine"``: rewrites every ``from langgraph[.X] import names`` to
  ``from engine.langgraph import names`` (same names, same aliases, only the
  module changes; found through the AST, so strings and comments are left
  alone) and executes that. ``import langgraph...`` statements are refused:
  there is no one-line rewrite for them, so programs do not use them.
  Imports of other packages (``langchain_core.messages``, ``pydantic``...)
  are left as they are: engine.langgraph has to interoperate with them.

A program is a module under ``programs/`` written exactly as a LangGraph user
writes it, plus one driver function the runner calls (the seam):

- ``scenario(rec)``: drives the graph and records every observable result
  through ``rec`` (a :class:`~tests.conformance.record.Recorder`).
- Programs that resume a thread in a *new process* declare
  ``PHASES = ("first", "second", ...)`` and define
  ``scenario(rec, phase, workdir)``: each phase runs in a fresh interpreter
  (``python -m tests.conformance.runner``), in order, sharing ``workdir``
  (where the program keeps its SQLite checkpoint file, opened with
  ``SqliteSaver.from_conn_string(...)`` as a LangGraph user would; under the
  engine that name comes from engine.langgraph like every other).
- ``SLOW = True`` marks a program that takes more than a second or so.

Each program executes as a fresh module named ``conformance_<program>_<side>``,
registered in ``sys.modules`` while it runs (pydantic and dataclasses resolve
annotations through it) and removed afterwards.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tests.conformance.record import Encoded, Recorder, normalise

PROGRAMS = Path(__file__).resolve().parent / "programs"
REPO = PROGRAMS.parents[2]
Side = Literal["langgraph", "engine"]
SIDES: tuple[Side, ...] = ("langgraph", "engine")
TARGET = "engine.langgraph"
#: Set to "1" in a phase's environment to run it against tests/conformance/standin.py
#: (LangGraph's own objects under engine.langgraph's name): the runner's self-test.
STANDIN_ENV = "CONFORMANCE_STANDIN"


@dataclass(frozen=True)
class ProgramInfo:
    """What the runner reads from a program's source without executing it."""

    name: str
    summary: str
    phases: tuple[str, ...]
    slow: bool


def program_names() -> list[str]:
    return sorted(p.stem for p in PROGRAMS.glob("*.py") if not p.stem.startswith("_"))


def program_source(name: str) -> str:
    return (PROGRAMS / f"{name}.py").read_text(encoding="utf-8")


def program_info(name: str) -> ProgramInfo:
    """Docstring, ``PHASES`` and ``SLOW`` of a program, read from its AST (no import)."""
    tree = ast.parse(program_source(name))
    constants: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in {"PHASES", "SLOW"}:
                constants[target.id] = ast.literal_eval(node.value)
    summary = (ast.get_docstring(tree) or "").strip().splitlines()
    return ProgramInfo(
        name=name,
        summary=summary[0] if summary else "",
        phases=tuple(constants.get("PHASES", ())),
        slow=bool(constants.get("SLOW", False)),
    )


def switch_imports(source: str) -> str:
    """The program with its LangGraph imports pointing at engine.langgraph, nothing else changed.

    Only the ``from <module>`` part of each statement is replaced, in place,
    so line numbers (and tracebacks) stay the same.
    """
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    # Right to left, so that a replacement never shifts the next one's column.
    nodes = sorted(
        (n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))),
        key=lambda n: (n.lineno, n.col_offset),
        reverse=True,
    )
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "langgraph" or alias.name.startswith("langgraph."):
                    raise ValueError(
                        f"line {node.lineno}: 'import {alias.name}' has no one-line rewrite;"
                        " write 'from langgraph... import name' in conformance programs"
                    )
        if not isinstance(node, ast.ImportFrom) or node.level:
            continue
        module = node.module or ""
        if module != "langgraph" and not module.startswith("langgraph."):
            continue
        line = lines[node.lineno - 1]
        head = f"from {module} import"
        start = line.find(head, node.col_offset)
        if start != node.col_offset:
            raise ValueError(f"line {node.lineno}: cannot find {head!r} where the AST says")
        lines[node.lineno - 1] = line[:start] + f"from {TARGET} import" + line[start + len(head) :]
    switched = "".join(lines)
    left = [
        n.lineno
        for n in ast.walk(ast.parse(switched))
        if isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "langgraph"
    ]
    if left:
        raise ValueError(f"lines {left}: LangGraph imports left after the switch")
    return switched


def langgraph_imports(source: str) -> list[tuple[str, str]]:
    """``(module, name)`` for each name a program imports from LangGraph (aliases resolved)."""
    pairs = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "langgraph":
            pairs.extend((node.module or "", alias.name) for alias in node.names)
    return pairs


def required_names() -> dict[str, set[str]]:
    """Every name the programs import from LangGraph -> the LangGraph modules they take it from.

    This is the surface engine.langgraph must export for the suite to run.
    """
    names: dict[str, set[str]] = {}
    for program in program_names():
        for module, name in langgraph_imports(program_source(program)):
            names.setdefault(name, set()).add(module)
    return names


def load(name: str, side: Side) -> types.ModuleType:
    """Execute a program's source for ``side`` as a fresh module (registered in sys.modules)."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    source = program_source(name)
    if side == "engine":
        source = switch_imports(source)
    module_name = f"conformance_{name}_{side}"
    module = types.ModuleType(module_name)
    module.__file__ = str(PROGRAMS / f"{name}.py")
    sys.modules[module_name] = module
    try:
        exec(compile(source, module.__file__, "exec"), module.__dict__)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def unload(module: types.ModuleType) -> None:
    sys.modules.pop(module.__name__, None)


def run_phase(name: str, side: Side, phase: str | None, workdir: Path | None) -> list[Encoded]:
    """Run one program (one phase of it) in this process; the stage-1 record entries."""
    module = load(name, side)
    try:
        rec = Recorder()
        if phase is None:
            module.scenario(rec)
        else:
            module.scenario(rec, phase, workdir)
        return rec.entries
    finally:
        unload(module)


def _run_phase_in_new_process(name: str, side: Side, phase: str, workdir: Path) -> list[Encoded]:
    out = workdir / f"record-{phase}.json"
    cmd = [sys.executable, "-m", "tests.conformance.runner", name, side, phase, str(workdir)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(
            f"conformance program {name!r} ({side}), phase {phase!r}, exited with"
            f" {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    entries: list[Encoded] = json.loads(out.read_text(encoding="utf-8"))
    return [[f"{phase}: {label}", value] for label, value in entries]


def record(name: str, side: Side) -> list[Encoded]:
    """The normalised record of a program on one side (phases in new processes, in order)."""
    info = program_info(name)
    if not info.phases:
        return normalise(run_phase(name, side, None, None))
    entries: list[Encoded] = []
    with tempfile.TemporaryDirectory(prefix=f"conformance-{name}-") as tmp:
        for phase in info.phases:
            entries.extend(_run_phase_in_new_process(name, side, phase, Path(tmp)))
    return normalise(entries)


def main(argv: list[str]) -> int:
    """Two commands, run from the repository root.

    ``python -m tests.conformance.runner show PROGRAM [SIDE]`` prints a
    program's normalised record (default side: langgraph), to read what
    LangGraph does or where the engine differs.

    ``python -m tests.conformance.runner PROGRAM SIDE PHASE WORKDIR`` runs one
    phase in this (new) process and writes its stage-1 record to
    ``WORKDIR/record-PHASE.json``; :func:`record` starts it.
    """
    if argv and argv[0] == "show":
        side = argv[2] if len(argv) > 2 else "langgraph"
        if side not in SIDES:
            raise SystemExit(f"side must be one of {SIDES}")
        print(json.dumps(record(argv[1], side), indent=1, sort_keys=True))  # type: ignore[arg-type]
        return 0
    name, side, phase, workdir = argv
    if side not in SIDES:
        raise SystemExit(f"side must be one of {SIDES}")
    if os.environ.get(STANDIN_ENV) == "1":
        from tests.conformance.standin import install

        install()
    entries = run_phase(name, side, phase, Path(workdir))  # type: ignore[arg-type]
    out = Path(workdir) / f"record-{phase}.json"
    out.write_text(json.dumps(entries), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

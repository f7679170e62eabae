"""Each program, imports switched to engine.langgraph, records exactly what LangGraph does.

This is the "change one import" promise checked program by program: the
runner rewrites each ``from langgraph.X import names`` to ``from
engine.langgraph import names`` and compares the engine's record with
LangGraph's (run live when LangGraph is installed, else the golden record
it left), exactly, after the normalisation documented in record.py.

Until engine.langgraph exists the whole module is skipped, saying so.
Programs that need a capability engine.langgraph does not have yet are in
:data:`PENDING` and expected to fail (strictly: one that starts passing
must come off the list).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest

from tests.conformance.compare import assert_same
from tests.conformance.conftest import program_params, read_golden
from tests.conformance.record import Encoded
from tests.conformance.runner import record

# Skip only when the module is absent: an engine.langgraph that exists but
# fails to import makes every program fail loudly, never skip.
if importlib.util.find_spec("engine.langgraph") is None:
    pytest.skip(
        "engine.langgraph is not implemented yet: the conformance programs run only under"
        " LangGraph for now (tests/conformance/test_langgraph_half.py)",
        allow_module_level=True,
    )

#: Program -> what engine.langgraph still lacks for it. Each is an xfail(strict=True).
PENDING: dict[str, str] = {}


def _expected(name: str, langgraph_record: Callable[[str], list[Encoded]]) -> list[Encoded]:
    if importlib.util.find_spec("langgraph") is not None:
        return langgraph_record(name)
    entries: list[Encoded] = read_golden(name)["entries"]
    return entries


def _params() -> list[object]:
    out = []
    for param in program_params():
        name = param.values[0]  # type: ignore[attr-defined]
        marks = list(param.marks)  # type: ignore[attr-defined]
        if name in PENDING:
            marks.append(pytest.mark.xfail(reason=PENDING[name], strict=True))
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.mark.parametrize("name", _params())
def test_engine_record_matches_langgraph(
    name: str, langgraph_record: Callable[[str], list[Encoded]]
) -> None:
    """Switched to engine.langgraph, the program records exactly what it records under LangGraph."""
    assert_same(
        _expected(name, langgraph_record), record(name, "engine"), f"{name} under engine.langgraph"
    )

"""Fixtures of the conformance suite: each program's LangGraph record, made once per session."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest

from tests.conformance.record import Encoded
from tests.conformance.runner import program_info, program_names, record

GOLDEN = Path(__file__).resolve().parent / "golden"

#: The distributions whose behaviour a golden record captures.
RECORDED_WITH = (
    "langgraph",
    "langgraph-checkpoint",
    "langgraph-checkpoint-sqlite",
    "langchain-core",
)


def installed_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for dist in RECORDED_WITH:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def golden_path(name: str) -> Path:
    return GOLDEN / f"{name}.json"


def read_golden(name: str) -> dict:
    path = golden_path(name)
    if not path.exists():
        pytest.fail(
            f"no golden record for {name!r}: run"
            " `CONFORMANCE_UPDATE=1 .venv/bin/python -m pytest tests/conformance` to make one",
            pytrace=False,
        )
    golden: dict = json.loads(path.read_text(encoding="utf-8"))
    return golden


def write_golden(name: str, entries: list[Encoded]) -> None:
    golden = {
        "program": name,
        "summary": program_info(name).summary,
        "recorded_with": installed_versions(),
        "entries": entries,
    }
    golden_path(name).write_text(
        json.dumps(golden, indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )


def program_params() -> list[object]:
    """One pytest param per program, slow ones marked ``slow``."""
    return [
        pytest.param(name, marks=[pytest.mark.slow] if program_info(name).slow else [], id=name)
        for name in program_names()
    ]


@pytest.fixture(scope="session")
def langgraph_record() -> Callable[[str], list[Encoded]]:
    """``langgraph_record(name)``: the program's record under LangGraph, run once per session."""
    cache: dict[str, list[Encoded]] = {}

    def get(name: str) -> list[Encoded]:
        if name not in cache:
            cache[name] = record(name, "langgraph")
        return cache[name]

    return get

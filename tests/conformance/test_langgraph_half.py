"""Every conformance program runs under LangGraph and leaves the record kept in golden/.

The golden records are what the engine half is held to, and what
implementers read to learn LangGraph's exact output. A difference here means
LangGraph (or langchain-core) behaves differently from when the record was
made, or a program is not deterministic: read the diff, then re-record with
``CONFORMANCE_UPDATE=1 .venv/bin/python -m pytest tests/conformance``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests.conformance.compare import assert_same
from tests.conformance.conftest import installed_versions, program_params, read_golden, write_golden
from tests.conformance.record import Encoded

pytest.importorskip("langgraph", reason="LangGraph is in the dev extra: pip install -e '.[dev]'")


@pytest.mark.parametrize("name", program_params())
def test_langgraph_record_matches_golden(
    name: str, langgraph_record: Callable[[str], list[Encoded]]
) -> None:
    """The program's LangGraph record equals its golden record."""
    entries = langgraph_record(name)
    if os.environ.get("CONFORMANCE_UPDATE") == "1":
        write_golden(name, entries)
    golden = read_golden(name)
    recorded, installed = golden["recorded_with"], installed_versions()
    assert_same(
        golden["entries"],
        entries,
        f"{name} under LangGraph (golden recorded with {recorded}, installed {installed})",
    )

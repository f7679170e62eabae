"""Shared fixtures: graphs and states used across the test modules."""

from __future__ import annotations

import operator
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from tests.nodes import merge_dicts


class State(BaseModel):
    topic: str = ""
    items: Annotated[list[str], operator.add] = []
    probes: Annotated[dict[str, Any], merge_dicts] = {}
    report: str = ""
    count: int = 0


@pytest.fixture
def State_() -> type[State]:
    return State


@pytest.fixture(params=["sequential", "concurrent", "parallel"])
def mode(request: pytest.FixtureRequest) -> str:
    """Every shared test runs in each of the three modes."""
    return str(request.param)


def pytest_configure(config: pytest.Config) -> None:
    # Worker processes cannot import the tests package: send its node
    # functions by value, as they would be for a user's __main__ script.
    import cloudpickle

    import tests.nodes

    cloudpickle.register_pickle_by_value(tests.nodes)

"""Root pytest configuration shared by tests/ and benchmarks/."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Worker processes cannot import the tests package: send its support
    # module by value, as a user's __main__ code would travel.
    import cloudpickle

    import tests.support

    cloudpickle.register_pickle_by_value(tests.support)


@pytest.fixture(params=["sequential", "concurrent", "parallel"])
def mode(request: pytest.FixtureRequest) -> str:
    """Every shared test runs in each of the three modes."""
    return str(request.param)

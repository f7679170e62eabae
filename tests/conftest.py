"""Fixtures of the core tests (the root conftest.py has the shared ``mode`` fixture)."""

from __future__ import annotations

import pytest


@pytest.fixture
def warm_pool() -> None:
    """The default process pool with every worker started.

    Tests that prove parallelism from overlapping intervals use it, so that a
    worker still starting cannot push one call past the other. Per test, not
    per session: fault tests elsewhere break and replace the default pool.
    """
    from engine.lanes.pool import default_executor, warm

    warm(default_executor())

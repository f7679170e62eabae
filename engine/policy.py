"""Retry policy for node calls: how many attempts, how long to wait, what to retry."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import NodeTimeoutError, WorkerCrashedError


def default_retry_on(exc: BaseException) -> bool:
    """Retry transient failures, never bugs.

    Connection problems, timeouts and crashed workers are worth another try;
    a ``ValueError`` or ``TypeError`` raised by the node's own code is a bug
    that would fail the same way again.
    """
    transient: tuple[type[BaseException], ...] = (
        ConnectionError,
        TimeoutError,
        NodeTimeoutError,
        WorkerCrashedError,
    )
    if isinstance(exc, transient):
        return True
    # httpx / aiohttp errors without importing them: match on the class names
    # of their transport-level errors.
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"TransportError", "ClientConnectionError", "ServerTimeoutError"})


RetryOn = tuple[type[BaseException], ...] | Callable[[BaseException], bool]


@dataclass(frozen=True)
class RetryPolicy:
    """How a failing node call is retried.

    The wait before attempt ``n + 1`` is
    ``min(initial_interval * backoff_factor ** (n - 1), max_interval)``, plus up
    to 100% random jitter when ``jitter`` is true.
    """

    max_attempts: int = 3
    initial_interval: float = 0.5
    backoff_factor: float = 2.0
    max_interval: float = 128.0
    jitter: bool = True
    retry_on: RetryOn = field(default=default_retry_on)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_interval < 0 or self.max_interval < 0:
            raise ValueError("RetryPolicy intervals must be >= 0")
        if self.backoff_factor < 1:
            raise ValueError(f"RetryPolicy.backoff_factor must be >= 1, got {self.backoff_factor}")

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """True when ``exc`` raised by attempt ``attempt`` (1-based) deserves another."""
        if attempt >= self.max_attempts:
            return False
        if isinstance(self.retry_on, tuple):
            return isinstance(exc, self.retry_on)
        return bool(self.retry_on(exc))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after attempt ``attempt`` (1-based) failed."""
        base = min(self.initial_interval * self.backoff_factor ** (attempt - 1), self.max_interval)
        if self.jitter:
            base += base * (rng or random).random()
        return base


NO_RETRY = RetryPolicy(max_attempts=1, initial_interval=0.0, jitter=False)

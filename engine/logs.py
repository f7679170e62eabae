"""How the engine logs: through structlog, never configuring it.

Every module logs through ``get_logger(name)``. Where the log line goes is
decided when it is written, not at import:

- the application configured structlog (``structlog.is_configured()``, as
  the engine's own CLI and ``structlog.testing.capture_logs`` do): the
  events go through that configuration, like any structlog logger's;
- it did not: they go to the standard library's ``logging.getLogger(name)``
  as ``key=value`` text. An application that set nothing up then sees only
  warnings and errors, on stderr (Python's last-resort handler), instead of
  every run's chatter on stdout; one that configured ``logging`` gets the
  engine's events at the levels it chose.

Debug events (one per node call) cost a level check when debug is off
(``enabled``): the stdlib logger's level, or the level of the structlog
configuration's bound logger class where it has one.

Events carry the run id, and the step and node where there is one, bound
with ``bind``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
}

# Rendering for the stdlib route: filter first, so a disabled level costs
# nothing more than the check.
_STDLIB_PROCESSORS: list[Any] = [
    structlog.stdlib.filter_by_level,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso"),
    structlog.processors.format_exc_info,
    structlog.processors.KeyValueRenderer(key_order=["event"], sort_keys=True),
]


class EngineLogger:
    """A structlog-style logger whose destination is chosen per line (see the module).

    Invariant: immutable; ``bind`` returns a new logger with more context.
    """

    __slots__ = ("_context", "_name", "_std")

    def __init__(
        self, name: str, context: Mapping[str, Any] | None = None, std: logging.Logger | None = None
    ) -> None:
        self._name = name
        self._context: dict[str, Any] = dict(context or {})
        # Getting a stdlib logger takes logging's module lock: once, not per line (nor per
        # bound logger: a run binds one).
        self._std = std if std is not None else logging.getLogger(name)

    def __repr__(self) -> str:
        return f"<EngineLogger {self._name!r} context={self._context!r}>"

    def bind(self, **values: Any) -> EngineLogger:
        return EngineLogger(self._name, {**self._context, **values}, self._std)

    def enabled(self, method: str) -> bool:
        """Whether a line at this level goes anywhere.

        Lets a caller skip building a line's values (one per node call) when
        its level is off; the answer can change when the application
        reconfigures logging, so ask it per run, not per process. Once
        structlog is configured, its bound logger class answers: a filtering
        one (``make_filtering_bound_logger``, structlog's default) by its
        level, structlog's stdlib one by the stdlib logger's; any other is
        assumed to let the line through (it may filter later, in a processor).
        """
        level = _LEVELS[method]
        if not structlog.is_configured():
            return self._std.isEnabledFor(level)
        wrapper = structlog.get_config().get("wrapper_class")
        if isinstance(wrapper, type) and issubclass(wrapper, structlog.stdlib.BoundLogger):
            return self._std.isEnabledFor(level)
        is_enabled_for = getattr(wrapper, "is_enabled_for", None)
        if is_enabled_for is not None:
            try:
                return bool(is_enabled_for(None, level))  # a filtering class: its level only
            except Exception:
                return True
        return True

    def _emit(self, method: str, event: str, values: Mapping[str, Any]) -> None:
        if structlog.is_configured():
            logger: Any = structlog.get_logger(self._name)
        else:
            std = self._std
            if not std.isEnabledFor(_LEVELS[method]):
                return
            logger = structlog.wrap_logger(
                std,
                processors=_STDLIB_PROCESSORS,
                wrapper_class=structlog.stdlib.BoundLogger,
            )
        getattr(logger, method)(event, **{**self._context, **values})

    def debug(self, event: str, **values: Any) -> None:
        self._emit("debug", event, values)

    def info(self, event: str, **values: Any) -> None:
        self._emit("info", event, values)

    def warning(self, event: str, **values: Any) -> None:
        self._emit("warning", event, values)

    def error(self, event: str, **values: Any) -> None:
        self._emit("error", event, values)

    def exception(self, event: str, **values: Any) -> None:
        values.setdefault("exc_info", True)
        self._emit("exception", event, values)


def get_logger(name: str = "engine") -> EngineLogger:
    """The engine's logger for ``name`` (``engine``, ``engine.checkpoint``, ...)."""
    return EngineLogger(name)


__all__ = ["EngineLogger", "get_logger"]

"""``RunOptions``: how one run runs (mode, executor, thread, limits, config...),
as one typed, validated object, and ``RunKwargs``, the same as keywords."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypedDict

from .lanes import MODES, Mode
from .recorder import EventSink
from .resources import Clock, Rate
from .saving import DURABILITIES, Durability
from .streaming import ChunkSink
from .watchdog import DEFAULT_THRESHOLD_S

#: Steps a run may take when no ``recursion_limit`` is given: LangGraph's default.
DEFAULT_RECURSION_LIMIT = 10_007


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How one run runs: every option of ``arun`` in one typed, validated object.

    Pass one (``app.arun(state, RunOptions(mode="sequential"))``), keywords
    (``app.arun(state, mode="sequential")``), or both: keywords replace the
    object's values.
    """

    #: ``sequential`` (one call at a time), ``concurrent`` (asyncio only: cpu
    #: nodes on threads), ``parallel`` (the hybrid: cpu nodes in processes).
    mode: Mode = "parallel"
    #: The cpu lane's executor in ``parallel`` mode: any ``concurrent.futures.Executor``
    #: (a loky or stdlib process pool, a Dask client's); None: the default loky pool.
    executor: Executor | None = None
    #: The thread whose checkpoints the run saves (needs a checkpointer); with
    #: ``input=None``, the thread to resume.
    thread_id: str | None = None
    #: With ``input=None`` and ``thread_id``: run from this past checkpoint of the thread
    #: (time travel: a fork of it; its later history stays as it was).
    checkpoint_id: str | None = None
    #: At most this many steps; one more is a ``GraphRecursionError`` (LangGraph's
    #: default limit and count).
    recursion_limit: int = DEFAULT_RECURSION_LIMIT
    #: Called with every event as it happens (an observer that raises is dropped).
    on_event: EventSink | None = None
    #: Calls at once per resource nodes declare (``add_node(..., resources=...)``).
    limits: Mapping[str, int] | None = None
    #: Calls per period per resource: ``{"openai": "60/min"}``.
    rates: Mapping[str, str | Rate] | None = None
    #: Calls at once per lane: ``{"cpu": 4}``.
    max_concurrency: Mapping[str, int] | None = None
    #: Seconds the event loop may be blocked before the watchdog reports it (None: off).
    loop_threshold: float | None = DEFAULT_THRESHOLD_S
    #: Bytes (or ``"2GB"``) a cpu worker may use; caps the pool to what memory can hold.
    memory_per_worker: int | str | None = None
    #: The run's clock (events' times, retry waits, budgets): a ``FakeClock`` in tests.
    clock: Clock | None = None
    #: Called with ``(mode, chunk)`` for the stream modes (``astream(stream_mode=...)``);
    #: a ``values`` chunk is the state as the run holds it (a model instance, or values).
    on_chunk: ChunkSink | None = None
    #: A LangGraph-style config: ``{"configurable": {"thread_id": ...}, "recursion_limit":
    #: n, "tags": [...], "metadata": {...}, "run_name": ...}``. Its ``thread_id``,
    #: ``checkpoint_id`` and ``recursion_limit`` are the run's (unless given as options
    #: too: then they must agree); nodes taking ``config`` get it, on every lane.
    config: Mapping[str, Any] | None = None
    #: What nodes taking ``runtime`` read as ``runtime.context`` (a dict is made the
    #: graph's ``context_schema``). Config and context must pickle for cpu-lane nodes.
    context: Any = None
    #: Breakpoints for this run (added to the compiled graph's): stop before a step that
    #: runs one of these nodes, or after a step that ran one ("*": every node). Resume
    #: with ``arun(None, thread_id=...)``.
    interrupt_before: Sequence[str] | str | None = None
    interrupt_after: Sequence[str] | str | None = None
    #: How often the run saves checkpoints: ``"sync"`` (each step's before the next
    #: starts), ``"async"`` (each step's written while the next runs; all written before
    #: the run returns), ``"exit"`` (only the last: done, failed or interrupted).
    durability: Durability = "sync"

    def __post_init__(self) -> None:
        if self.config is not None:
            self._take_config(self.config)
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.recursion_limit < 1:
            raise ValueError(f"recursion_limit must be >= 1, got {self.recursion_limit}")
        if self.durability not in DURABILITIES:
            raise ValueError(
                f"unknown durability {self.durability!r}; use one of {', '.join(DURABILITIES)}"
            )

    def _take_config(self, config: Mapping[str, Any]) -> None:
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        configurable = config.get("configurable") or {}
        taken = {
            "thread_id": configurable.get("thread_id"),
            "checkpoint_id": configurable.get("checkpoint_id"),
            "recursion_limit": config.get("recursion_limit"),
        }
        defaults = {
            "thread_id": None,
            "checkpoint_id": None,
            "recursion_limit": DEFAULT_RECURSION_LIMIT,
        }
        for name, value in taken.items():
            if value is None:
                continue
            mine = getattr(self, name)
            if mine != defaults[name] and mine != value:
                raise ValueError(
                    f"{name} is {mine!r} but config says {value!r}; give it in one place"
                )
            object.__setattr__(self, name, value)

    @property
    def thread_from_config(self) -> bool:
        """The run's ``thread_id`` is the one its ``config`` names."""
        configurable = (self.config or {}).get("configurable") or {}
        return self.thread_id is not None and configurable.get("thread_id") == self.thread_id

    def node_config(self) -> dict[str, Any]:
        """The config nodes taking ``config`` get: the one given, with the run's
        ``configurable`` (``thread_id`` in it), ``recursion_limit``, ``tags`` and ``metadata``."""
        config = dict(self.config or {})
        configurable = dict(config.get("configurable") or {})
        metadata = dict(config.get("metadata") or {})
        if self.thread_id is not None:
            configurable["thread_id"] = self.thread_id
            metadata.setdefault("thread_id", self.thread_id)
        config["configurable"] = configurable
        config["metadata"] = metadata
        config["tags"] = list(config.get("tags") or [])
        config["recursion_limit"] = self.recursion_limit
        return config


class RunKwargs(TypedDict, total=False):
    """``RunOptions`` as keywords (``app.arun(state, mode="sequential")``)."""

    mode: Mode
    executor: Executor | None
    thread_id: str | None
    checkpoint_id: str | None
    recursion_limit: int
    on_event: EventSink | None
    limits: Mapping[str, int] | None
    rates: Mapping[str, str | Rate] | None
    max_concurrency: Mapping[str, int] | None
    loop_threshold: float | None
    memory_per_worker: int | str | None
    clock: Clock | None
    on_chunk: ChunkSink | None
    config: Mapping[str, Any] | None
    context: Any
    interrupt_before: Sequence[str] | str | None
    interrupt_after: Sequence[str] | str | None
    durability: Durability


def merged_options(options: RunOptions | None, kwargs: RunKwargs) -> RunOptions:
    if options is None:
        return RunOptions(**kwargs)
    return dataclasses.replace(options, **kwargs) if kwargs else options


__all__ = ["DEFAULT_RECURSION_LIMIT", "RunKwargs", "RunOptions"]

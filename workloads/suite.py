"""The built-in benchmark workloads, as ``engine.bench.targets.Workload`` targets.

``python -m engine bench cpu_fanout`` runs ``workloads.suite:cpu_fanout``; any
``Workload`` here can be named that way too. They share one context
(``environment``), opened once per benchmark for all of them::

    calibrate the CPU work they use (genai; gil_release, snippets if asked)
      --> the chat-completions endpoint: ENGINE_LLM_BASE_URL, else a local
          LLM server on its own thread and loop (if a workload makes API calls)
      --> Environment(base_url, calibrations) --> every workload's build(env, scale)

Their final states are the same in every mode unless the API calls go to a
real model (``Environment.deterministic``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Any

from engine.bench.targets import Variant, Workload

from . import genai, graphs
from .graphs import Built, Setup

Say = Callable[[str], None]


@dataclass(frozen=True)
class Environment:
    """What the built-ins share in one benchmark: where API calls go, what a unit of
    each kind of CPU work costs here (None: not needed by this run)."""

    base_url: str | None
    cal: genai.Calibration
    gil_cal: genai.Calibration | None = None
    small_cal: genai.Calibration | None = None
    external: bool = False

    def setup(self, scale: float) -> Setup:
        """What every builder of ``workloads.graphs`` takes, at ``scale``."""
        return Setup(
            base_url=self.base_url,
            cal=self.cal,
            scale=scale,
            gil_cal=self.gil_cal,
            small_cal=self.small_cal,
        )

    @property
    def deterministic(self) -> bool:
        """A real model answers differently each time; the local server never does."""
        return not self.external

    @property
    def machine(self) -> dict[str, Any]:
        """The unit costs measured here and the endpoint kind, for the report."""
        return {
            "ms_per_unit": round(self.cal.ms_per_unit, 4),
            "gil_ms_per_unit": round(self.gil_cal.ms_per_unit, 4) if self.gil_cal else None,
            "snippet_ms_per_unit": round(self.small_cal.ms_per_unit, 5) if self.small_cal else None,
            "llm": ("external" if self.external else "local") if self.base_url else None,
        }


@contextlib.asynccontextmanager
async def environment(workloads: Sequence[Workload], say: Say) -> AsyncIterator[Environment]:
    """Calibrate, then open the endpoint, for ``workloads`` (see the module docstring)."""
    needs = {n for w in workloads for n in w.needs}
    missing = [m for m in ("httpx", "aiohttp") if "llm" in needs and find_spec(m) is None]
    if missing:
        raise ImportError(
            f"the built-in workloads' API calls need {', '.join(missing)}: pip install "
            "'engine[bench]' (or run bash scripts/bench.sh)"
        )
    cals = await calibrations(needs, say)
    async with llm_endpoint("llm" in needs, say) as base_url:
        yield Environment(
            base_url=base_url,
            cal=cals["genai"],
            gil_cal=cals.get("gil_release"),
            small_cal=cals.get("snippets"),
            external=bool(os.environ.get("ENGINE_LLM_BASE_URL")),
        )


async def calibrations(needs: set[str], say: Say) -> dict[str, genai.Calibration]:
    """Measure, here and now, what one unit of CPU work costs (printed, never assumed).

    In a thread: the event loop stays free (a local LLM server may share it).
    Each is the fastest of several runs (``genai.calibrate_units``).
    """
    from . import gil_release as gil

    found: dict[str, genai.Calibration] = {}
    for kind, fn in (
        ("genai", genai.calibrate),
        ("snippets", genai.calibrate_snippets),
        ("gil_release", gil.calibrate),
    ):
        if kind != "genai" and kind not in needs:
            continue
        cal = await asyncio.to_thread(fn)
        found[kind] = cal
        setup = f" (+{cal.fixed_ms:.1f} ms set-up per call)" if cal.fixed_ms >= 0.05 else ""
        say(
            f"calibrated {cal.workload}: {cal.ms_per_unit:.4g} ms per unit{setup}, "
            f"measured on this machine (fastest of {cal.samples} runs)"
        )
    return found


@contextlib.asynccontextmanager
async def llm_endpoint(needed: bool, say: Say) -> AsyncIterator[str | None]:
    """The chat-completions base URL: ``ENGINE_LLM_BASE_URL`` if set, else a local server.

    One call is made before anything is timed: the first call in a process
    imports the HTTP stack and builds its caches on the event loop (~70 ms),
    which the warm-up run would otherwise pay, and the loop guard report.
    """
    if not needed:
        yield None
        return
    from .llm import LLMServer, chat_once

    external = os.environ.get("ENGINE_LLM_BASE_URL")
    if external:
        say(f"API calls go to {external} (ENGINE_LLM_BASE_URL)")
        await chat_once(external, "ping", max_tokens=1)
        yield external
        return
    # Its own thread and loop: the "remote" API must not wait on the loop
    # under test (sequential mode runs cpu nodes on that loop).
    server = LLMServer.start_in_thread()
    try:
        say(f"local LLM server at {server.base_url}")
        await chat_once(server.base_url, "ping", max_tokens=1, latency_s=0.0)
        yield server.base_url
    finally:
        await asyncio.to_thread(server.stop)


def _on(build: Callable[[Setup], Built]) -> Callable[[Any, float], Built]:
    """A ``workloads.graphs`` builder as a ``Workload.build(env, scale)``."""

    def on_env(env: Environment, scale: float) -> Built:
        return build(env.setup(scale))

    return on_env


def _peer(name: str) -> Callable[[Any, float, Any], Any]:
    """The LangGraph version of ``name`` (``workloads.peers``), built when asked."""

    def build(env: Environment, scale: float, _input: Any) -> Any:
        from .peers import PEERS

        return PEERS[name].build(env.setup(scale))

    return build


def _seed(st: Setup) -> Built:
    from . import seed as seed_graph

    return seed_graph.bench(st.base_url, cal=st.cal, scale=st.scale)


_LLM = ("genai", "llm")

io_fanout = Workload(
    "io_fanout",
    _on(lambda st: graphs.io_fanout(st.base_url, scale=st.scale)),
    "4 agents x one ~1 s API call, then a ~0.5 s compile call",
    context=environment,
    needs=_LLM,
    peer=_peer("io_fanout"),
)
cpu_fanout = Workload(
    "cpu_fanout",
    _on(lambda st: graphs.cpu_fanout(cal=st.cal, scale=st.scale)),
    "4 agents x ~0.5 s of CPU, then ~0.2 s of CPU to compile",
    context=environment,
    needs=("genai",),
    peer=_peer("cpu_fanout"),
)
ceo_delegation = Workload(
    "ceo_delegation",
    _on(lambda st: graphs.ceo_delegation(st.base_url, cal=st.cal, scale=st.scale)),
    "CEO plan (API); 4 x [draft (API), analyse (CPU), review (API)]; compile (CPU)",
    context=environment,
    needs=_LLM,
    peer=_peer("ceo_delegation"),
)
map_reduce = Workload(
    "map_reduce",
    _on(lambda st: graphs.map_reduce(st.base_url, cal=st.cal, scale=st.scale)),
    "Send x 8 documents: fetch (API), tokenise + score (CPU); reduce (CPU)",
    context=environment,
    needs=_LLM,
)
debate = Workload(
    "debate",
    _on(lambda st: graphs.debate(st.base_url, cal=st.cal, scale=st.scale)),
    "3 rounds: pro + con argue (API), critics (CPU), judge loops (cycle)",
    context=environment,
    needs=_LLM,
)
gil_release = Workload(
    "gil_release",
    _on(lambda st: graphs.gil_release(cal=st.gil_cal, scale=st.scale)),
    "contrast: cpu_fanout's shape with hashlib/zlib work that releases the GIL",
    context=environment,
    needs=("gil_release",),
)
seed = Workload(
    "seed",
    _on(_seed),
    "the seed graph: 4 agents x [~0.3 s API call, ~0.15 s CPU], then a join",
    context=environment,
    needs=_LLM,
)
many_small = Workload(
    "many_small",
    _on(lambda st: graphs.many_small(cal=st.small_cal, scale=st.scale)),
    "Send x 5,000 cpu calls of ~1 ms (x scale calls), batched per worker; reduce",
    context=environment,
    needs=("snippets",),
    # 5,000 thread-pool calls under one GIL take ~1.5x sequential (11.8 s) and
    # would add half a minute to the main command: ask for them with
    # --modes sequential,concurrent,parallel.
    default_modes=("sequential", "parallel"),
)
auto_lanes = Workload(
    "auto_lanes",
    _on(lambda st: graphs.auto_lanes(st.base_url, labelled=True, cal=st.cal, scale=st.scale)),
    "mixed graph: async + blocking API calls, CPU, tiny nodes; hand-labelled lanes, "
    "and the same graph undeclared (rows 'auto-1st', 'auto')",
    context=environment,
    needs=_LLM,
    variants=(
        Variant(
            "auto-1st",
            "parallel",
            _on(lambda st: graphs.auto_lanes(st.base_url, cal=st.cal, scale=st.scale)),
            fresh=True,
            summary="no lanes declared, a graph's first run: defaults (sync -> cpu)",
        ),
        Variant(
            "auto",
            "parallel",
            _on(lambda st: graphs.auto_lanes(st.base_url, cal=st.cal, scale=st.scale)),
            summary="no lanes declared, second run on: lanes from the profile",
        ),
    ),
)

#: Every built-in workload by name (``python -m engine bench --list``).
WORKLOADS: Mapping[str, Workload] = {
    w.name: w
    for w in (
        io_fanout,
        cpu_fanout,
        ceo_delegation,
        map_reduce,
        debate,
        gil_release,
        seed,
        many_small,
        auto_lanes,
    )
}
#: The README's main command runs these (auto_lanes runs when named).
DEFAULT = tuple(name for name in WORKLOADS if name != "auto_lanes")

__all__ = [
    "DEFAULT",
    "WORKLOADS",
    "Environment",
    "auto_lanes",
    "ceo_delegation",
    "cpu_fanout",
    "debate",
    "environment",
    "gil_release",
    "io_fanout",
    "many_small",
    "map_reduce",
    "seed",
]

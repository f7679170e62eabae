"""The benchmark graphs: agent workloads doing real work, each usable from user code.

Every builder returns ``(compiled graph, input state)``; the input carries the
sizes (seconds of API latency, units of CPU work), so a run is a pure function
of it and ends in the same state in every mode::

    from workloads.llm import LLMServer
    from workloads.graphs import ceo_delegation

    async with LLMServer() as server:
        app, state = ceo_delegation(server.base_url)
        result = await app.arun(state, mode="parallel")

API calls are real HTTP chat completions (``workloads.llm``: the local server
or any OpenAI-compatible endpoint); CPU work is real pure-Python GenAI
processing (``workloads.genai.process``, sized in units calibrated on this
machine), except in ``gil_release``, the contrast case whose work releases
the GIL.

=================  ===========================================================
io_fanout          ceo, coo, cfo, cto: one ~1 s API call each; compile: ~0.5 s call
cpu_fanout         the same shape, ~0.5 s CPU per agent; compile ~0.2 s CPU
ceo_delegation     ceo plans (API); each agent drafts (API), analyses (CPU),
                   reviews (API); compile (CPU)
map_reduce         ``Send`` per document: fetch (API), tokenise and score (CPU); reduce (CPU)
debate             pro and con argue (API), critics score (CPU), a judge routes to
                   another round or END (a cycle)
gil_release        cpu_fanout's shape with hashlib/zlib work, which releases the GIL
seed               the seed graph (``workloads.seed``): 4 x [API call, CPU], compile
many_small         ``Send`` x 5,000 cpu calls of ~1 ms each (batched per worker), reduce
auto_lanes         a mixed graph with no lanes declared: async API calls, sync API
                   calls (waiting), sync CPU work, tiny sync nodes; the engine's
                   profile picks the lanes, against the same graph hand-labelled
=================  ===========================================================
"""

from __future__ import annotations

import functools
import operator
import zlib
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel

from engine import END, START, CompiledGraph, Graph, Send

from . import genai

AGENTS = ("ceo", "coo", "cfo", "cto")


def merge(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    """Reducer: per-agent dicts written by parallel nodes merge key by key."""
    return {**left, **right}


@dataclass(frozen=True)
class Setup:
    """What the harness passes every builder.

    ``base_url``: where API calls go (None: ``ENGINE_LLM_BASE_URL``).
    ``cal``: the measured cost of ``genai.process`` here, ``gil_cal`` of
    ``gil_release``'s work and ``small_cal`` of ``genai.score_snippets``
    (None: calibrate when building). ``scale`` multiplies every duration
    (``--quick`` uses 0.3), and for ``many_small`` the number of calls.
    """

    base_url: str | None = None
    cal: genai.Calibration | None = None
    scale: float = 1.0
    gil_cal: genai.Calibration | None = None
    small_cal: genai.Calibration | None = None


Calibration = genai.Calibration


@dataclass(frozen=True)
class Endpoint:
    """Where a workload's API calls go (None: ``ENGINE_LLM_BASE_URL``).

    Each call opens its own client (``workloads.llm.chat_once``): clients are
    bound to one event loop, and ``app.run`` starts a fresh loop per run, so a
    per-call client is the one that is always right (about 1 ms of CPU on the
    loop per call over ``http://``, next to calls of 0.1 s and more).
    """

    base_url: str | None = None
    max_tokens: int = 64

    async def chat(self, prompt: str, latency_s: float) -> str:
        """One chat completion; the local server takes ``latency_s`` to answer it."""
        from .llm import chat_once

        return await chat_once(
            self.base_url, prompt, max_tokens=self.max_tokens, latency_s=latency_s
        )

    def chat_sync(self, prompt: str, latency_s: float) -> str:
        """The same call from synchronous code: the calling thread blocks, waiting."""
        from .llm_sync import chat_once_sync

        return chat_once_sync(
            self.base_url, prompt, max_tokens=self.max_tokens, latency_s=latency_s
        )


Built = tuple[CompiledGraph[Any], BaseModel]


# -- io_fanout ------------------------------------------------------------------


class BoardState(BaseModel):
    topic: str = "the quarterly plan"
    api_s: float = 1.0
    compile_s: float = 0.5
    answers: Annotated[dict[str, str], merge] = {}
    report: str = ""


async def board_answer(role: str, api: Endpoint, state: BoardState) -> dict[str, Any]:
    text = await api.chat(f"As the {role}, give your view on {state.topic}.", state.api_s)
    return {"answers": {role: text}}


async def board_compile(api: Endpoint, state: BoardState) -> dict[str, Any]:
    views = " ".join(f"[{r}] {state.answers[r]}" for r in AGENTS)
    return {"report": await api.chat(f"Summarise for the board: {views}", state.compile_s)}


def io_fanout(
    base_url: str | None = None, *, api_s: float = 1.0, compile_s: float = 0.5, scale: float = 1.0
) -> Built:
    """Four agents each make one API call at once, then one call compiles them.

    Every duration is multiplied by ``scale`` (as in every builder here)."""
    api = Endpoint(base_url)
    g = Graph(BoardState)
    for role in AGENTS:
        g.add_node(role, functools.partial(board_answer, role, api), lane="io")
        g.add_edge(START, role)
    g.add_node("compile", functools.partial(board_compile, api), lane="io")
    g.add_edge(list(AGENTS), "compile")
    g.add_edge("compile", END)
    return g.compile(), BoardState(api_s=api_s * scale, compile_s=compile_s * scale)


# -- cpu_fanout -----------------------------------------------------------------


class AnalysisState(BaseModel):
    topic: str = "the quarterly plan"
    units: int = 1
    compile_units: int = 1
    analyses: Annotated[dict[str, dict[str, Any]], merge] = {}
    report: dict[str, Any] = {}


def analyse(role: str, state: AnalysisState) -> dict[str, Any]:
    """Tokenise, score, generate and validate: real GIL-holding CPU work."""
    text = f"{role} analysis of {state.topic}"
    return {"analyses": {role: genai.process(text, state.units, seed=AGENTS.index(role))}}


def compile_analyses(state: AnalysisState) -> dict[str, Any]:
    text = " ".join(f"{r} {state.analyses[r]['checksum']}" for r in AGENTS)
    return {"report": genai.process(text, state.compile_units, seed=99)}


def cpu_fanout(
    *,
    cpu_s: float = 0.5,
    compile_s: float = 0.2,
    cal: Calibration | None = None,
    scale: float = 1.0,
) -> Built:
    """Four agents each do ~``cpu_s`` of CPU work at once, then a ~``compile_s`` compile."""
    cal = cal or genai.calibrate()
    g = Graph(AnalysisState)
    for role in AGENTS:
        g.add_node(role, functools.partial(analyse, role), lane="cpu")
        g.add_edge(START, role)
    g.add_node("compile", compile_analyses, lane="cpu")
    g.add_edge(list(AGENTS), "compile")
    g.add_edge("compile", END)
    state = AnalysisState(
        units=genai.units_for(cpu_s * scale, cal),
        compile_units=genai.units_for(compile_s * scale, cal),
    )
    return g.compile(), state


# -- ceo_delegation --------------------------------------------------------------


class DelegationState(BaseModel):
    goal: str = "enter a new market"
    plan_s: float = 0.3
    draft_s: float = 0.6
    review_s: float = 0.3
    units: int = 1
    compile_units: int = 1
    briefs: dict[str, str] = {}
    drafts: Annotated[dict[str, str], merge] = {}
    analyses: Annotated[dict[str, dict[str, Any]], merge] = {}
    reviews: Annotated[dict[str, str], merge] = {}
    report: dict[str, Any] = {}


async def ceo_plan(api: Endpoint, state: DelegationState) -> dict[str, Any]:
    plan = await api.chat(f"Split the goal '{state.goal}' into four briefs.", state.plan_s)
    return {"briefs": {role: f"{role}: {plan}" for role in AGENTS}}


async def agent_draft(role: str, api: Endpoint, state: DelegationState) -> dict[str, Any]:
    return {"drafts": {role: await api.chat(f"Draft: {state.briefs[role]}", state.draft_s)}}


def agent_analyse(role: str, state: DelegationState) -> dict[str, Any]:
    result = genai.process(state.drafts[role], state.units, seed=AGENTS.index(role))
    return {"analyses": {role: result}}


async def agent_review(role: str, api: Endpoint, state: DelegationState) -> dict[str, Any]:
    a = state.analyses[role]
    prompt = f"Review the {role}'s analysis: {a['tokens']} tokens, top passages {a['top']}."
    return {"reviews": {role: await api.chat(prompt, state.review_s)}}


def delegation_compile(state: DelegationState) -> dict[str, Any]:
    return {
        "report": genai.process(" ".join(state.reviews[r] for r in AGENTS), state.compile_units)
    }


def ceo_delegation(
    base_url: str | None = None,
    *,
    plan_s: float = 0.3,
    draft_s: float = 0.6,
    cpu_s: float = 0.4,
    review_s: float = 0.3,
    compile_s: float = 0.2,
    cal: Calibration | None = None,
    scale: float = 1.0,
) -> Built:
    """The CEO plans; each agent drafts (API), analyses (CPU), reviews (API); compile (CPU)."""
    api = Endpoint(base_url)
    cal = cal or genai.calibrate()
    g = Graph(DelegationState)
    g.add_node("ceo_plan", functools.partial(ceo_plan, api), lane="io")
    g.add_edge(START, "ceo_plan")
    for role in AGENTS:
        g.add_node(f"{role}_draft", functools.partial(agent_draft, role, api), lane="io")
        g.add_node(f"{role}_analyse", functools.partial(agent_analyse, role), lane="cpu")
        g.add_node(f"{role}_review", functools.partial(agent_review, role, api), lane="io")
        g.add_edge("ceo_plan", f"{role}_draft")
        g.add_edge(f"{role}_draft", f"{role}_analyse")
        g.add_edge(f"{role}_analyse", f"{role}_review")
    g.add_node("compile", delegation_compile, lane="cpu")
    g.add_edge([f"{role}_review" for role in AGENTS], "compile")
    g.add_edge("compile", END)
    state = DelegationState(
        plan_s=plan_s * scale,
        draft_s=draft_s * scale,
        review_s=review_s * scale,
        units=genai.units_for(cpu_s * scale, cal),
        compile_units=genai.units_for(compile_s * scale, cal),
    )
    return g.compile(), state


# -- map_reduce ------------------------------------------------------------------


# Queries in the generated text's own vocabulary, so BM25 has terms to match.
QUERY = " ".join(genai.VOCABULARY[i] for i in (0, 2, 5))
MOTION = " ".join(genai.VOCABULARY[i] for i in (1, 3, 4))


class CorpusState(BaseModel):
    query: str = QUERY
    n_docs: int = 8
    fetch_s: float = 0.2
    units: int = 1
    reduce_units: int = 1
    docs: Annotated[list[dict[str, Any]], operator.add] = []
    scored: Annotated[list[dict[str, Any]], operator.add] = []
    summary: dict[str, Any] = {}


def fan_out_fetch(state: CorpusState) -> list[Send]:
    return [
        Send("fetch", {"doc": i, "query": state.query, "latency_s": state.fetch_s})
        for i in range(state.n_docs)
    ]


async def fetch(api: Endpoint, job: dict[str, Any]) -> dict[str, Any]:
    text = await api.chat(f"Document {job['doc']} about {job['query']}", job["latency_s"])
    return {"docs": [{"doc": job["doc"], "text": text}]}


def fan_out_score(state: CorpusState) -> list[Send]:
    # Sorted by document: the order fetches finished in must not matter.
    docs = sorted(state.docs, key=operator.itemgetter("doc"))
    return [Send("score", {**d, "query": state.query, "units": state.units}) for d in docs]


def score(job: dict[str, Any]) -> dict[str, Any]:
    """Tokenise and score one document (real CPU work)."""
    result = genai.process(f"{job['query']} {job['text']}", job["units"], seed=job["doc"])
    relevance = genai.bm25(job["query"], [job["text"]])[0]
    return {"scored": [{"doc": job["doc"], "relevance": relevance, **result}]}


def reduce_scores(state: CorpusState) -> dict[str, Any]:
    ranked = sorted(state.scored, key=lambda d: (-d["relevance"], d["doc"]))
    text = " ".join(f"{d['doc']}:{d['checksum']}" for d in ranked)
    summary = genai.process(text, state.reduce_units, seed=7)
    return {"summary": {"ranking": [d["doc"] for d in ranked], **summary}}


def map_reduce(
    base_url: str | None = None,
    *,
    n_docs: int = 8,
    fetch_s: float = 0.2,
    score_s: float = 0.1,
    reduce_s: float = 0.1,
    cal: Calibration | None = None,
    scale: float = 1.0,
) -> Built:
    """``Send`` one fetch per document (API), one score per document (CPU), then reduce (CPU)."""
    api = Endpoint(base_url)
    cal = cal or genai.calibrate()
    g = Graph(CorpusState)
    g.add_node("fetch", functools.partial(fetch, api), lane="io")
    g.add_node("score", score, lane="cpu")
    g.add_node("reduce", reduce_scores, lane="cpu")
    g.add_conditional_edges(START, fan_out_fetch)
    g.add_conditional_edges("fetch", fan_out_score)
    g.add_edge("score", "reduce")
    g.add_edge("reduce", END)
    state = CorpusState(
        n_docs=n_docs,
        fetch_s=fetch_s * scale,
        units=genai.units_for(score_s * scale, cal),
        reduce_units=genai.units_for(reduce_s * scale, cal),
    )
    return g.compile(), state


# -- debate ----------------------------------------------------------------------

SIDES = ("pro", "con")


class DebateState(BaseModel):
    motion: str = MOTION
    rounds: int = 3
    argue_s: float = 0.3
    units: int = 1
    round: int = 0
    arguments: Annotated[list[dict[str, Any]], operator.add] = []
    scores: Annotated[dict[str, float], merge] = {}
    tally: dict[str, float] = {}
    verdict: str = ""


async def argue(side: str, api: Endpoint, state: DebateState) -> dict[str, Any]:
    last = [a["text"][:80] for a in state.arguments if a["side"] != side][-1:]
    text = await api.chat(f"Argue {side} '{state.motion}'. Rebut: {last}", state.argue_s)
    return {"arguments": [{"round": state.round, "side": side, "text": text}]}


def critique(side: str, state: DebateState) -> dict[str, Any]:
    mine = [a for a in state.arguments if a["side"] == side and a["round"] == state.round]
    result = genai.process(mine[-1]["text"], state.units, seed=state.round)
    points = genai.bm25(state.motion, [mine[-1]["text"]])[0] + result["tokens"] % 7
    return {"scores": {f"{state.round}:{side}": points}}


def judge(state: DebateState) -> dict[str, Any]:
    tally = {s: sum(v for k, v in state.scores.items() if k.endswith(f":{s}")) for s in SIDES}
    leader = max(SIDES, key=lambda s: (tally[s], s))
    return {"round": state.round + 1, "tally": tally, "verdict": leader}


def next_round(state: DebateState) -> list[str] | str:
    return list(SIDES) if state.round < state.rounds else END


def debate(
    base_url: str | None = None,
    *,
    rounds: int = 3,
    argue_s: float = 0.3,
    critique_s: float = 0.2,
    cal: Calibration | None = None,
    scale: float = 1.0,
) -> Built:
    """Rounds of pro/con arguments (API) and critiques (CPU); the judge loops or ends."""
    api = Endpoint(base_url)
    cal = cal or genai.calibrate()
    g = Graph(DebateState)
    for side in SIDES:
        g.add_node(side, functools.partial(argue, side, api), lane="io")
        g.add_node(f"{side}_critic", functools.partial(critique, side), lane="cpu")
        g.add_edge(START, side)
        g.add_edge(side, f"{side}_critic")
    g.add_node("judge", judge, lane="inline")
    g.add_edge([f"{side}_critic" for side in SIDES], "judge")
    g.add_conditional_edges("judge", next_round)
    state = DebateState(
        rounds=rounds, argue_s=argue_s * scale, units=genai.units_for(critique_s * scale, cal)
    )
    return g.compile(), state


# -- gil_release (contrast) ----------------------------------------------------------


class DigestState(BaseModel):
    units: int = 1
    compile_units: int = 1
    digests: Annotated[dict[str, str], merge] = {}
    report: str = ""


def digest(role: str, state: DigestState) -> dict[str, Any]:
    from . import gil_release as work

    return {"digests": {role: work.process(role, state.units, seed=AGENTS.index(role))["checksum"]}}


def compile_digests(state: DigestState) -> dict[str, Any]:
    from . import gil_release as work

    text = ",".join(state.digests[r] for r in AGENTS)
    return {"report": work.process(text, state.compile_units)["checksum"]}


def gil_release(
    *,
    cpu_s: float = 0.5,
    compile_s: float = 0.2,
    cal: Calibration | None = None,
    scale: float = 1.0,
) -> Built:
    """cpu_fanout's shape with hashing and compression: C code that releases the GIL,
    so threads (``concurrent``) already run it in parallel. The contrast case."""
    from . import gil_release as work

    cal = cal or work.calibrate()
    g = Graph(DigestState)
    for role in AGENTS:
        g.add_node(role, functools.partial(digest, role), lane="cpu")
        g.add_edge(START, role)
    g.add_node("compile", compile_digests, lane="cpu")
    g.add_edge(list(AGENTS), "compile")
    g.add_edge("compile", END)
    state = DigestState(
        units=work.units_for(cpu_s * scale, cal),
        compile_units=work.units_for(compile_s * scale, cal),
    )
    return g.compile(), state


# -- many_small ------------------------------------------------------------------------


def fold(left: int, right: int) -> int:
    """Reducer: chain checksums in merge order (node name, then Send index), so the
    result proves the barrier merged thousands of updates in one fixed order."""
    return zlib.crc32(right.to_bytes(4, "big"), left)


class ShardState(BaseModel):
    query: str = QUERY
    n_calls: int = 5000
    units: int = 1
    scored: Annotated[int, operator.add] = 0
    digest: Annotated[int, fold] = 0
    summary: dict[str, Any] = {}


def fan_out_snippets(state: ShardState) -> list[Send]:
    return [
        Send("score_snippets", {"doc": i, "query": state.query, "units": state.units})
        for i in range(state.n_calls)
    ]


def score_one(job: dict[str, Any]) -> dict[str, Any]:
    """About a millisecond of real CPU work: score a few snippets of one document."""
    result = genai.score_snippets(job["query"], job["doc"], job["units"])
    return {"scored": 1, "digest": result["checksum"]}


def summarise_shards(state: ShardState) -> dict[str, Any]:
    return {"summary": {"calls": state.scored, "digest": f"{state.digest:08x}"}}


def many_small(
    *,
    n_calls: int = 5000,
    call_s: float = 0.001,
    cal: Calibration | None = None,
    scale: float = 1.0,
) -> Built:
    """``Send`` ``n_calls`` x ``scale`` cpu calls of ~``call_s`` each, then a tiny reduce.

    ``scale`` shrinks the number of calls, not their length: the point is many
    calls of about a millisecond, where a dispatch per call would cost a
    third of the work; in parallel mode the engine batches them per worker.
    """
    cal = cal or genai.calibrate_snippets()
    g = Graph(ShardState)
    g.add_node("score_snippets", score_one, lane="cpu")
    g.add_node("summary", summarise_shards, lane="inline")
    g.add_conditional_edges(START, fan_out_snippets)
    g.add_edge("score_snippets", "summary")
    g.add_edge("summary", END)
    state = ShardState(n_calls=max(1, round(n_calls * scale)), units=genai.units_for(call_s, cal))
    return g.compile(), state


# -- auto_lanes ------------------------------------------------------------------------


class MixedState(BaseModel):
    topic: str = "the launch"
    plan_s: float = 0.2
    lookup_s: float = 0.3
    units: int = 1
    compile_units: int = 1
    plan: str = ""
    lookups: Annotated[dict[str, str], merge] = {}
    analyses: Annotated[dict[str, dict[str, Any]], merge] = {}
    tags: Annotated[dict[str, str], merge] = {}
    report: dict[str, Any] = {}


async def mixed_plan(api: Endpoint, state: MixedState) -> dict[str, Any]:
    """An ``async def`` API call: the event loop's."""
    return {"plan": await api.chat(f"Plan {state.topic} for four teams.", state.plan_s)}


def mixed_lookup(role: str, api: Endpoint, state: MixedState) -> dict[str, Any]:
    """A plain ``def`` that calls an API and blocks: it waits, holding no CPU."""
    text = api.chat_sync(f"Facts for the {role} about {state.topic}.", state.lookup_s)
    return {"lookups": {role: text}}


def mixed_crunch(role: str, state: MixedState) -> dict[str, Any]:
    """A plain ``def`` doing pure-Python work on the plan: holds the GIL."""
    result = genai.process(f"{role} {state.plan}", state.units, seed=AGENTS.index(role))
    return {"analyses": {role: result}}


def mixed_tag(role: str, state: MixedState) -> dict[str, Any]:
    """A plain ``def`` that costs microseconds: cheaper than any dispatch."""
    return {"tags": {role: f"{role}:{len(state.plan)}"}}


def mixed_compile(state: MixedState) -> dict[str, Any]:
    text = " ".join(
        f"{r} {state.tags[r]} {state.analyses[r]['checksum']} {state.lookups[r][:40]}"
        for r in AGENTS
    )
    return {"report": genai.process(text, state.compile_units, seed=5)}


# The lane each node of auto_lanes would be given by hand.
MIXED_LANES = {"plan": "io", "lookup": "thread", "crunch": "cpu", "tag": "inline"}


def auto_lanes(
    base_url: str | None = None,
    *,
    labelled: bool = False,
    plan_s: float = 0.2,
    lookup_s: float = 0.3,
    cpu_s: float = 0.25,
    compile_s: float = 0.1,
    cal: Calibration | None = None,
    scale: float = 1.0,
) -> Built:
    """A plan (async API call), then per agent a blocking API call, CPU work and a
    tiny tag, all at once; then a CPU compile. ``labelled=False`` declares no lane
    (``lane="auto"``: the engine decides, from measurements after the first run);
    ``labelled=True`` is the same graph with the lanes a careful user would pick."""
    api = Endpoint(base_url)
    cal = cal or genai.calibrate()

    def lane(kind: str) -> str:
        return MIXED_LANES[kind] if labelled else "auto"

    g = Graph(MixedState)
    g.add_node("plan", functools.partial(mixed_plan, api), lane=lane("plan"))
    g.add_edge(START, "plan")
    after_plan = []
    for role in AGENTS:
        for kind, fn in (
            ("lookup", functools.partial(mixed_lookup, role, api)),
            ("crunch", functools.partial(mixed_crunch, role)),
            ("tag", functools.partial(mixed_tag, role)),
        ):
            g.add_node(f"{role}_{kind}", fn, lane=lane(kind))
            g.add_edge("plan", f"{role}_{kind}")
            after_plan.append(f"{role}_{kind}")
    g.add_node("compile", mixed_compile, lane="cpu" if labelled else "auto")
    g.add_edge(after_plan, "compile")
    g.add_edge("compile", END)
    state = MixedState(
        plan_s=plan_s * scale,
        lookup_s=lookup_s * scale,
        units=genai.units_for(cpu_s * scale, cal),
        compile_units=genai.units_for(compile_s * scale, cal),
    )
    return g.compile(), state


__all__ = [
    "AGENTS",
    "Built",
    "Setup",
    "auto_lanes",
    "ceo_delegation",
    "cpu_fanout",
    "debate",
    "gil_release",
    "io_fanout",
    "many_small",
    "map_reduce",
]

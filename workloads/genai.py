"""GenAI processing on the CPU: real, deterministic, pure-Python work that holds the GIL.

This is the work an agent does around an LLM call: train and apply a
byte-level BPE tokeniser, generate text with an n-gram (Markov) model, score
passages with BM25, parse and validate a structured answer. No numpy (it
releases the GIL and would hide the problem the engine solves) and no
sleeping: every unit of ``process`` is computation whose result feeds the
returned checksum, and the text it works on is derived from the input.

Everything is deterministic given its inputs and seed, in any process: no
``hash()`` of strings (randomised per process), no set iteration order.

``calibrate()`` measures, on this machine, how long one unit takes, so a
workload can ask for "0.5 s of CPU" and get it (``units_for``)::

    cal = calibrate()
    summary = process(answer_text, units_for(0.5, cal), seed=3)
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# A merge joins two token ids into a new one: merge ``i`` gets id ``256 + i``.
Merge = tuple[int, int]

_SYLLABLES = (
    "ka", "lo", "mi", "ten", "ra", "vo", "shi", "par", "en", "dul", "co", "ri",
    "nal", "tu", "bes", "or", "fi", "gan", "el", "mo", "sta", "ve", "qua", "zen",
)  # fmt: skip


def vocabulary(size: int = 400, seed: int = 7) -> tuple[str, ...]:
    """A fixed pseudo-English vocabulary built from syllables (no data files)."""
    rng = random.Random(seed)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < size:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return tuple(words)


# Constants built once at import (immutable tuples, not state): every call of
# ``corpus`` would otherwise rebuild them.
VOCABULARY: tuple[str, ...] = vocabulary()
# Zipf-like word frequencies, as cumulative weights for ``random.choices``.
_CUM_WEIGHTS: tuple[float, ...] = tuple(
    itertools.accumulate(1.0 / (rank + 1) for rank in range(len(VOCABULARY)))
)


def corpus(n_words: int, seed: int = 0) -> str:
    """Deterministic pseudo-English text of exactly ``n_words`` words, in sentences."""
    if n_words < 0:
        raise ValueError(f"n_words must be >= 0, got {n_words}")
    rng = random.Random(seed)
    words = rng.choices(VOCABULARY, cum_weights=_CUM_WEIGHTS, k=n_words)
    sentences: list[str] = []
    i = 0
    while i < len(words):
        n = rng.randint(6, 16)
        sentences.append(" ".join(words[i : i + n]).capitalize() + ".")
        i += n
    return " ".join(sentences)


def _words(text: str) -> list[str]:
    """Lower-case words without surrounding punctuation: the unit of BM25 and n-grams."""
    out: list[str] = []
    for raw in text.split():
        word = raw.strip(".,;:!?\"'()[]{}").lower()
        if word:
            out.append(word)
    return out


# -- byte-level BPE tokeniser ----------------------------------------------

# Pre-tokenisation: a chunk is optional leading whitespace then a run of
# non-space (GPT-2 style), or trailing whitespace. The chunks concatenate back
# to the exact input, which is what makes ``decode(encode(t)) == t``.
_CHUNK = re.compile(r"\s*\S+|\s+")


def _merge_pair(seq: list[int], pair: Merge, new_id: int) -> list[int]:
    """``seq`` with every non-overlapping occurrence of ``pair`` (left to right) replaced."""
    a, b = pair
    out: list[int] = []
    i, n = 0, len(seq)
    while i < n:
        if i + 1 < n and seq[i] == a and seq[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def train_bpe(text: str, n_merges: int) -> list[Merge]:
    """Learn up to ``n_merges`` byte-pair merges from ``text`` (starting from UTF-8 bytes).

    Merge ``i`` creates token id ``256 + i``; fewer merges come back when no
    pair is left to merge.
    """
    if n_merges < 0:
        raise ValueError(f"n_merges must be >= 0, got {n_merges}")
    freq = Counter(_CHUNK.findall(text))
    # Dict order is first appearance, so the iteration below is reproducible.
    seqs = [list(chunk.encode()) for chunk in freq]
    counts = list(freq.values())
    merges: list[Merge] = []
    for i in range(n_merges):
        pairs: Counter[Merge] = Counter()
        for seq, count in zip(seqs, counts, strict=True):
            for pair in itertools.pairwise(seq):
                pairs[pair] += count
        if not pairs:
            break
        # Most frequent pair; ties go to the smallest pair so training is deterministic.
        best = max(pairs.items(), key=lambda kv: (kv[1], -kv[0][0], -kv[0][1]))[0]
        new_id = 256 + i
        seqs = [_merge_pair(seq, best, new_id) for seq in seqs]
        merges.append(best)
    return merges


def encode(text: str, merges: Sequence[Merge]) -> list[int]:
    """Token ids of ``text``: bytes 0-255, merged by ``merges`` in the order they were learned.

    No per-call cache of chunk encodings: real tokenisers have one, but here
    it would make repeated units nearly free and the work no longer scale.
    """
    ranks = {pair: i for i, pair in enumerate(merges)}
    never = len(ranks)
    ids: list[int] = []
    for chunk in _CHUNK.findall(text):
        seq = list(chunk.encode())
        while len(seq) > 1:
            # The earliest-learned pair present merges next, as it did in training.
            best = min(itertools.pairwise(seq), key=lambda p: ranks.get(p, never))
            r = ranks.get(best, never)
            if r == never:
                break
            seq = _merge_pair(seq, best, 256 + r)
        ids.extend(seq)
    return ids


def decode(ids: Sequence[int], merges: Sequence[Merge]) -> str:
    """The text ``encode`` turned into ``ids`` (exactly: ``decode(encode(t, m), m) == t``)."""
    table = [bytes([b]) for b in range(256)]
    for i, (a, b) in enumerate(merges):
        if not (0 <= a < 256 + i and 0 <= b < 256 + i):
            raise ValueError(f"merge {i} {(a, b)} refers to a token not defined before it")
        table.append(table[a] + table[b])
    try:
        raw = b"".join(table[i] for i in ids)
    except IndexError:
        bad = next(i for i in ids if not 0 <= i < len(table))
        raise ValueError(f"token id {bad} is outside the vocabulary of {len(table)}") from None
    return raw.decode("utf-8")


# -- BM25 ------------------------------------------------------------------


def bm25(query: str, passages: Sequence[str], k1: float = 1.5, b: float = 0.75) -> list[float]:
    """BM25 score of each passage for ``query`` (Lucene-style idf: never negative)."""
    docs = [_words(p) for p in passages]
    n = len(docs)
    avgdl = sum(len(d) for d in docs) / max(n, 1)
    df: Counter[str] = Counter()
    for d in docs:
        df.update(set(d))  # counting only: set order never matters here
    terms = _words(query)
    idf = {t: math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t in terms}
    scores: list[float] = []
    for d in docs:
        tf = Counter(d)
        norm = k1 * (1 - b + b * len(d) / max(avgdl, 1e-9))
        s = 0.0
        for t in terms:  # query order, so the float sum is reproducible
            f = tf.get(t, 0)
            if f:
                s += idf[t] * f * (k1 + 1) / (f + norm)
        scores.append(s)
    return scores


def rank(query: str, passages: Sequence[str], top: int = 3) -> list[int]:
    """Indices of the ``top`` best passages by BM25, best first (ties: lower index first)."""
    scores = bm25(query, passages)
    return sorted(range(len(passages)), key=lambda i: (-scores[i], i))[:top]


# -- n-gram generation -----------------------------------------------------

_Table = dict[tuple[str, ...], list[str]]


def _markov(words: Sequence[str], order: int) -> tuple[_Table, list[tuple[str, ...]]]:
    """Successor lists per ``order``-gram, and the grams sorted (a reproducible start set)."""
    table: _Table = {}
    for i in range(len(words) - order):
        table.setdefault(tuple(words[i : i + order]), []).append(words[i + order])
    return table, sorted(table)


def _walk(table: _Table, keys: Sequence[tuple[str, ...]], n_words: int, rng: random.Random) -> str:
    """``n_words`` words of a random walk on ``table``; a dead end jumps to a random gram."""
    state = keys[rng.randrange(len(keys))]
    out = list(state)
    while len(out) < n_words:
        successors = table.get(state)
        if not successors:
            state = keys[rng.randrange(len(keys))]
            continue
        word = successors[rng.randrange(len(successors))]
        out.append(word)
        state = (*state[1:], word)
    return " ".join(out[:n_words])


def generate(text: str, n_words: int, seed: int = 0, order: int = 2) -> str:
    """Markov-chain text of ``n_words`` words trained on ``text``; deterministic per seed."""
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    words = _words(text)
    if len(words) <= order:
        return " ".join(words[:n_words])
    table, keys = _markov(words, order)
    return _walk(table, keys, n_words, random.Random(seed))


# -- structured answers ----------------------------------------------------


class AnswerError(ValueError):
    """A structured answer is malformed or misses required fields."""


def parse_answer(raw: str) -> dict[str, Any]:
    """Parse and validate ``{"summary": str, "score": number in [0, 1], "tags": [str]}``."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise AnswerError(f"answer is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise AnswerError(f"answer must be a JSON object, got {type(data).__name__}")
    summary, score, tags = data.get("summary"), data.get("score"), data.get("tags")
    if not isinstance(summary, str) or not summary.strip():
        raise AnswerError("answer.summary must be a non-empty string")
    # bool is an int subclass; a score of true is a malformed answer, not 1.
    if not isinstance(score, int | float) or isinstance(score, bool) or not 0 <= score <= 1:
        raise AnswerError(f"answer.score must be a number in [0, 1], got {score!r}")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise AnswerError("answer.tags must be a list of strings")
    return {"summary": summary, "score": float(score), "tags": list(tags)}


# -- the unit of work ------------------------------------------------------

# Per-call set-up is bounded so that work scales with ``units``, not with the
# length of the input: the models are built from at most this many words.
_MODEL_WORDS = 300
_MIN_WORDS = 24  # shorter input is padded with seeded corpus text
_N_MERGES = 32
_PASSAGE_WORDS = 160
_WINDOW = 20  # passages BM25 ranks against the query in each unit


def process(text: str, units: int, seed: int = 0) -> dict[str, Any]:
    """Do ``units`` units of GenAI processing on ``text``; returns a JSON-able summary.

    Set-up: a BPE tokeniser and a bigram model trained on (the first 300
    words of) ``text``. One unit: generate a passage from the model, encode it
    and check it decodes back exactly, rank the latest passages against the
    query (the opening words of ``text``) with BM25, then build, parse and
    validate a structured answer. The checksum folds in the whole input and
    every unit's results, so nothing can be skipped without changing it.
    """
    if units < 0:
        raise ValueError(f"units must be >= 0, got {units}")
    # Split off only the head: a long input must not make the set-up long.
    words = _words(" ".join(text.split(None, _MODEL_WORDS)[:_MODEL_WORDS]))
    if len(words) < _MIN_WORDS:
        words += _words(corpus(60, seed))
    merges = train_bpe(" ".join(words), _N_MERGES)
    table, keys = _markov(words, 2)
    query = " ".join(words[:12])
    checksum = zlib.crc32(text.encode(), seed & 0xFFFFFFFF)
    # BM25 ranks against a ring of the latest passages, pre-filled in set-up so
    # that every unit scores the same number of passages: constant cost per unit.
    ring = [
        _walk(table, keys, _PASSAGE_WORDS, random.Random(-(seed * 1_000_003) - 1 - i))
        for i in range(_WINDOW)
    ]
    ring_ids = [-1 - i for i in range(_WINDOW)]
    passages: list[str] = []
    n_tokens = 0
    for u in range(units):
        rng = random.Random(seed * 1_000_003 + u)
        passage = _walk(table, keys, _PASSAGE_WORDS, rng).capitalize() + "."
        ids = encode(passage, merges)
        if decode(ids, merges) != passage:  # a real check: a broken tokeniser fails loudly
            raise RuntimeError(f"BPE round trip failed in unit {u}")
        n_tokens += len(ids)
        passages.append(passage)
        ring[u % _WINDOW], ring_ids[u % _WINDOW] = passage, u
        best = ring_ids[rank(query, ring, top=1)[0]]
        answer = parse_answer(
            json.dumps(
                {
                    "summary": passage[:80],
                    "score": (sum(ids) % 101) / 100,
                    "tags": [f"p{best}", f"t{len(ids)}"],
                }
            )
        )
        checksum = zlib.crc32(
            f"{len(ids)}:{ids[-1]}:{answer['tags'][0]}:{answer['score']}".encode(), checksum
        )
    top = rank(query, passages, top=3) if passages else []
    return {
        "units": units,
        "words": len(words),
        "tokens": n_tokens,
        "top": top,
        "checksum": f"{checksum:08x}",
    }


# -- small calls -------------------------------------------------------------

_SNIPPET_WORDS = 40


def score_snippets(query: str, doc: int, units: int) -> dict[str, Any]:
    """A small call of GenAI processing, with no set-up: ``units`` snippets of one document.

    One unit: generate a 40-word snippet of the document (seeded by ``doc``
    and the unit), score it against ``query`` with BM25 and fold the score
    into the checksum. The work for ``many_small``: thousands of calls of
    about a millisecond each, where ``process`` would spend that on set-up.
    """
    if units < 0:
        raise ValueError(f"units must be >= 0, got {units}")
    checksum = zlib.crc32(query.encode(), doc & 0xFFFFFFFF)
    best = 0.0
    for u in range(units):
        text = corpus(_SNIPPET_WORDS, seed=doc * 7919 + u)
        score = bm25(query, [text])[0]
        best = max(best, score)
        checksum = zlib.crc32(f"{u}:{score:.9f}".encode(), checksum)
    return {"doc": doc, "units": units, "best": round(best, 6), "checksum": checksum}


# -- calibration -----------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """How long a workload takes on this machine (measured, never assumed).

    ``ms_per_unit`` is the marginal CPU cost of one more unit; ``fixed_ms`` the
    set-up every call pays once (training the tokeniser, building buffers).
    """

    ms_per_unit: float
    fixed_ms: float = 0.0
    samples: int = 0  # timed runs behind each estimate
    units: int = 0  # units per timed run
    workload: str = "genai"


def calibrate_units(
    work: Callable[[int], object],
    *,
    target_s: float = 0.05,
    repeats: int = 5,
    workload: str = "genai",
) -> Calibration:
    """Measure ``work(units)`` in CPU time: runs of about ``target_s``, ``repeats`` times.

    ``work(0)`` must do the call's set-up alone; its fastest run is
    ``fixed_ms``, and ``ms_per_unit`` is the least over runs of
    (time - fixed) / units. CPU time of the calling thread
    (``time.thread_time``), not wall time: other threads of this process (an
    event loop, a thread-hosted server) and other processes must not be
    billed to the unit. The minimum, not the median: on a shared machine (a
    VM whose host is busy, a neighbour thrashing the caches) even CPU time
    only ever grows, and a median of a few runs taken while a neighbour was
    busy read 2x the quiet cost, which made every workload half its size.
    The probing runs double as a warm-up.
    """
    if target_s <= 0:
        raise ValueError(f"target_s must be > 0, got {target_s}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")

    def cpu_s(units: int) -> float:
        t0 = time.thread_time()
        work(units)
        return time.thread_time() - t0

    fixed = min(cpu_s(0) for _ in range(repeats))
    units, dt = 1, 0.0
    while units < 1 << 20:  # grow the probe until its units alone are long enough to time
        dt = cpu_s(units) - fixed
        if dt >= target_s / 8:
            break
        units *= 2
    units = max(1, round(units * target_s / max(dt, 1e-9)))
    per_unit = min(max(cpu_s(units) - fixed, 0.0) / units for _ in range(repeats))
    if per_unit <= 0:
        raise RuntimeError(f"calibrating {workload}: {units} units took no measurable CPU time")
    return Calibration(
        ms_per_unit=per_unit * 1000.0,
        fixed_ms=fixed * 1000.0,
        samples=repeats,
        units=units,
        workload=workload,
    )


def calibrate(target_s: float = 0.05, repeats: int = 7) -> Calibration:
    """Measure ms per unit of ``process`` on this machine."""
    text = corpus(200, seed=1)
    return calibrate_units(
        lambda units: process(text, units, seed=1),
        target_s=target_s,
        repeats=repeats,
        workload="genai",
    )


def calibrate_snippets(target_s: float = 0.05, repeats: int = 7) -> Calibration:
    """Measure ms per unit of ``score_snippets`` on this machine."""
    query = " ".join(VOCABULARY[:3])
    return calibrate_units(
        lambda units: score_snippets(query, 1, units),
        target_s=target_s,
        repeats=repeats,
        workload="snippets",
    )


def units_for(seconds: float, cal: Calibration) -> int:
    """Units whose call takes about ``seconds`` of CPU here, set-up included.

    At least 1 when ``seconds > 0``: a node asked for work does some.
    """
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, got {seconds}")
    if seconds == 0:
        return 0
    return max(1, round((seconds * 1000.0 - cal.fixed_ms) / cal.ms_per_unit))

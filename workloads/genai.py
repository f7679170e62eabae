"""GenAI processing on the CPU: real, deterministic, pure-Python work that holds the GIL.

This is the work an agent does around an LLM call: train and apply a BPE
tokeniser, score passages with BM25, generate text with an n-gram model,
parse and validate a structured answer. No numpy (it releases the GIL and
would hide the problem the engine solves) and no sleeping: every unit of
``process`` is computation whose result feeds the returned checksum.

``calibrate()`` measures, on this machine, how long one unit takes, so a
workload can ask for "0.5 s of CPU" and get it (``units_for``).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

_SYLLABLES = (
    "ka", "lo", "mi", "ten", "ra", "vo", "shi", "par", "en", "dul", "co", "ri",
    "nal", "tu", "bes", "or", "fi", "gan", "el", "mo", "sta", "ve", "qua", "zen",
)  # fmt: skip


def vocabulary(size: int = 400, seed: int = 7) -> list[str]:
    """A fixed pseudo-English vocabulary built from syllables (no data files)."""
    rng = random.Random(seed)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < size:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def corpus(n_words: int, seed: int = 0) -> str:
    """Deterministic pseudo-English text: Zipf-like word choice, sentences of 6-16 words."""
    vocab = vocabulary()
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]
    words = rng.choices(vocab, weights=weights, k=n_words)
    out: list[str] = []
    i = 0
    while i < len(words):
        n = rng.randint(6, 16)
        sentence = words[i : i + n]
        out.append(" ".join(sentence).capitalize() + ".")
        i += n
    return " ".join(out)


# -- BPE tokeniser ---------------------------------------------------------


def _words(text: str) -> list[str]:
    return [w.strip(".,;:!?").lower() for w in text.split() if w.strip(".,;:!?")]


def train_bpe(text: str, n_merges: int) -> list[tuple[str, str]]:
    """Learn ``n_merges`` byte-pair merges from ``text`` (character-level start)."""
    freq = Counter(_words(text))
    splits = {w: [*list(w), "</w>"] for w in freq}
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in freq.items():
            sym = splits[word]
            for a, b in itertools.pairwise(sym):
                pairs[(a, b)] += count
        if not pairs:
            break
        # Ties broken by the pair itself so training is deterministic.
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        joined = best[0] + best[1]
        for word in freq:
            sym = splits[word]
            i = 0
            out: list[str] = []
            while i < len(sym):
                if i + 1 < len(sym) and sym[i] == best[0] and sym[i + 1] == best[1]:
                    out.append(joined)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            splits[word] = out
    return merges


def tokenize(text: str, merges: list[tuple[str, str]]) -> list[str]:
    """Split ``text`` into BPE tokens by applying ``merges`` in order."""
    rank = {pair: i for i, pair in enumerate(merges)}
    tokens: list[str] = []
    for word in _words(text):
        sym = [*list(word), "</w>"]
        while len(sym) > 1:
            best_i, best_r = -1, len(rank)
            for i in range(len(sym) - 1):
                r = rank.get((sym[i], sym[i + 1]), len(rank))
                if r < best_r:
                    best_i, best_r = i, r
            if best_i < 0:
                break
            sym[best_i : best_i + 2] = [sym[best_i] + sym[best_i + 1]]
        tokens.extend(sym)
    return tokens


def encode(text: str, merges: list[tuple[str, str]]) -> list[int]:
    """Token ids: a stable id per token string (crc32), so encoding is reproducible."""
    return [zlib.crc32(t.encode()) & 0xFFFF for t in tokenize(text, merges)]


def decode(tokens: list[str]) -> str:
    """Inverse of ``tokenize`` (up to case and punctuation)."""
    return "".join(t.replace("</w>", " ") for t in tokens).strip()


# -- BM25 ------------------------------------------------------------------


def bm25(query: str, passages: list[str], k1: float = 1.5, b: float = 0.75) -> list[float]:
    """BM25 score of each passage for ``query``."""
    docs = [_words(p) for p in passages]
    n = len(docs)
    avgdl = sum(len(d) for d in docs) / max(n, 1)
    df: Counter[str] = Counter()
    for d in docs:
        df.update(set(d))
    terms = _words(query)
    scores: list[float] = []
    for d in docs:
        tf = Counter(d)
        s = 0.0
        for t in terms:
            if t not in tf:
                continue
            idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
            f = tf[t]
            s += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * len(d) / max(avgdl, 1e-9)))
        scores.append(s)
    return scores


def rank(query: str, passages: list[str], top: int = 3) -> list[int]:
    """Indices of the ``top`` best passages, best first (ties by index)."""
    scores = bm25(query, passages)
    return sorted(range(len(passages)), key=lambda i: (-scores[i], i))[:top]


# -- n-gram generation -----------------------------------------------------


def generate(text: str, n_words: int, seed: int = 0, order: int = 2) -> str:
    """Markov-chain text of ``n_words`` words trained on ``text``; deterministic per seed."""
    words = _words(text)
    if len(words) <= order:
        return " ".join(words[:n_words])
    table: dict[tuple[str, ...], list[str]] = {}
    for i in range(len(words) - order):
        table.setdefault(tuple(words[i : i + order]), []).append(words[i + order])
    rng = random.Random(seed)
    keys = sorted(table)
    state = keys[rng.randrange(len(keys))]
    out = list(state)
    while len(out) < n_words:
        nxt = table.get(state)
        if not nxt:
            state = keys[rng.randrange(len(keys))]
            continue
        word = nxt[rng.randrange(len(nxt))]
        out.append(word)
        state = (*state[1:], word)
    return " ".join(out[:n_words])


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
    if not isinstance(summary, str) or not summary:
        raise AnswerError("answer.summary must be a non-empty string")
    if not isinstance(score, int | float) or isinstance(score, bool) or not 0 <= score <= 1:
        raise AnswerError("answer.score must be a number in [0, 1]")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise AnswerError("answer.tags must be a list of strings")
    return {"summary": summary, "score": float(score), "tags": list(tags)}


# -- the unit of work ------------------------------------------------------


def process(text: str, units: int, seed: int = 0) -> dict[str, Any]:
    """Do ``units`` units of GenAI processing on ``text``; returns a JSON-able summary.

    One unit: tokenise a passage with a tokeniser trained on ``text``, score it
    against the passages seen so far with BM25, generate a short continuation,
    and build and validate a structured answer. The checksum folds every
    result in, so no step can be skipped without changing it.
    """
    if units < 0:
        raise ValueError(f"units must be >= 0, got {units}")
    base = text if len(text.split()) >= 20 else f"{text} {corpus(60, seed)}"
    merges = train_bpe(base, 40)
    passages: list[str] = []
    checksum = zlib.crc32(base.encode())
    n_tokens = 0
    for u in range(units):
        passage = corpus(45, seed * 1_000_003 + u)
        ids = encode(passage, merges)
        n_tokens += len(ids)
        passages.append(passage)
        window = passages[-8:]
        best = rank(base[:200], window, top=1)
        cont = generate(passage, 12, seed=u)
        answer = parse_answer(
            json.dumps({"summary": cont, "score": (sum(ids) % 100) / 100, "tags": [str(best[0])]})
        )
        checksum = zlib.crc32(
            f"{ids[-1] if ids else 0}:{best}:{answer['summary']}".encode(), checksum
        )
    top = rank(base[:200], passages, top=3) if passages else []
    return {"units": units, "tokens": n_tokens, "top": top, "checksum": f"{checksum:08x}"}


@dataclass(frozen=True)
class Calibration:
    """How long one unit of ``process`` takes on this machine (measured)."""

    ms_per_unit: float
    samples: int


def calibrate(target_s: float = 0.05, repeats: int = 3) -> Calibration:
    """Measure ms per unit with CPU time (min of ``repeats`` runs of ~``target_s``)."""
    probe_units = 4
    t0 = time.process_time()
    process("calibration text", probe_units, seed=1)
    first = max(time.process_time() - t0, 1e-6) / probe_units
    units = max(4, int(target_s / first))
    best = math.inf
    for r in range(repeats):
        t0 = time.process_time()
        process("calibration text", units, seed=2 + r)
        best = min(best, (time.process_time() - t0) / units)
    return Calibration(ms_per_unit=best * 1000.0, samples=repeats)


def units_for(seconds: float, cal: Calibration) -> int:
    """Units of ``process`` that take about ``seconds`` of CPU here (at least 1)."""
    return max(1, round(seconds * 1000.0 / cal.ms_per_unit))

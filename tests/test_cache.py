"""Node caching (``engine.cache``): a hit skips the node, on every lane and in every mode."""

from __future__ import annotations

import functools
import operator
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import cloudpickle
import pytest
from pydantic import BaseModel

from engine import (
    END,
    START,
    CachePolicy,
    Graph,
    GraphError,
    InMemoryCache,
    NodeFinished,
    Send,
    SqliteCache,
)

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Doc(BaseModel):
    text: str = ""
    user: str = ""
    vector: list[int] = []
    note: str = ""
    done: Annotated[list[str], operator.add] = []


def _count(calls: str, what: str) -> None:
    with open(calls, "a", encoding="utf-8") as f:
        f.write(f"{what} {os.getpid()}\n")


def embed(calls: str, state: Doc) -> dict[str, Any]:
    _count(calls, f"embed:{state.text}")
    return {"vector": [ord(c) % 7 for c in state.text]}


def personalise(calls: str, state: Doc) -> dict[str, Any]:
    _count(calls, f"personalise:{state.user}")
    return {"note": f"for {state.user}"}


def flaky(calls: str, state: Doc) -> dict[str, Any]:
    _count(calls, "flaky")
    if len(Path(calls).read_text().splitlines()) == 1:
        raise ValueError("first call fails")
    return {"note": "ok"}


def one_doc(calls: str, arg: str) -> dict[str, Any]:
    _count(calls, f"doc:{arg}")
    return {"done": [arg.upper()]}


def fan(state: Doc) -> list[Send]:
    return [Send("doc", w) for w in state.text.split()]


def by_user(state: Doc) -> str:
    return state.user


def calls_of(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line.split()[0] for line in path.read_text().splitlines()]


def two_nodes(calls: Path, lane: str, **cache: Any) -> Any:
    g = Graph(Doc)
    g.add_node("embed", functools.partial(embed, str(calls)), lane=lane, cache_policy=CachePolicy())
    g.add_node(
        "personalise",
        functools.partial(personalise, str(calls)),
        lane=lane,
        cache_policy=CachePolicy(key_func=by_user, ttl=3600),
    )
    g.add_edge(START, "embed")
    g.add_edge("embed", "personalise")
    g.add_edge("personalise", END)
    return g.compile(**cache)


@pytest.mark.parametrize("lane", ["io", "thread", "cpu"])
async def test_second_run_is_answered_from_the_cache_without_calling_the_node(
    tmp_path: Path, lane: str
) -> None:
    calls = tmp_path / "calls"
    app = two_nodes(calls, lane, cache=InMemoryCache())
    first = await app.arun(Doc(text="hello", user="ada"), mode="parallel")
    second = await app.arun(Doc(text="hello", user="ada"), mode="parallel")
    assert second.state == first.state
    assert second.state.vector == [6, 3, 3, 3, 6] and second.state.note == "for ada"
    assert calls_of(calls) == ["embed:hello", "personalise:ada"]
    # The trace says so: the first run's calls ran (on a worker, for cpu), the second's did not.
    assert [c.cached for c in first.trace.calls] == [False, False]
    assert [c.cached for c in second.trace.calls] == [True, True]
    assert all(c.pid == os.getpid() and c.cpu_s == 0.0 for c in second.trace.calls)
    if lane == "cpu":
        assert all(c.pid != os.getpid() for c in first.trace.calls)


async def test_key_func_picks_what_matters_and_a_new_input_misses(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    app = two_nodes(calls, "io", cache=InMemoryCache())
    await app.arun(Doc(text="hello", user="ada"))
    out = await app.arun(Doc(text="world", user="ada"))  # new text, same user
    assert out.state.vector == [0, 6, 2, 3, 2] and out.state.note == "for ada"
    assert calls_of(calls) == ["embed:hello", "personalise:ada", "embed:world"]


async def test_clear_cache_all_or_some_nodes(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    app = two_nodes(calls, "io", cache=InMemoryCache())
    await app.arun(Doc(text="hello", user="ada"))
    app.clear_cache()
    await app.arun(Doc(text="hello", user="ada"))
    assert calls_of(calls) == ["embed:hello", "personalise:ada"] * 2
    await app.aclear_cache(nodes=["embed"])
    await app.arun(Doc(text="hello", user="ada"))
    assert calls_of(calls)[4:] == ["embed:hello"]
    with pytest.raises(GraphError, match="unknown nodes"):
        app.clear_cache(nodes=["nope"])


async def test_a_result_expires_after_its_ttl(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    g = Graph(Doc)
    g.add_node("embed", functools.partial(embed, str(calls)), cache_policy=CachePolicy(ttl=0.2))
    g.add_edge(START, "embed")
    app = g.compile(cache=InMemoryCache())
    await app.arun(Doc(text="hi"))
    await app.arun(Doc(text="hi"))
    assert calls_of(calls) == ["embed:hi"]
    time.sleep(0.3)  # past the ttl: what is asserted is the expiry, not a duration
    await app.arun(Doc(text="hi"))
    assert calls_of(calls) == ["embed:hi", "embed:hi"]


async def test_a_sqlite_cache_outlives_the_app_and_is_shared(tmp_path: Path) -> None:
    calls, db = tmp_path / "calls", tmp_path / "cache.db"
    await two_nodes(calls, "cpu", cache=SqliteCache(db)).arun(Doc(text="hello", user="ada"))
    # Another compiled graph, another cache object on the same file: a hit.
    out = await two_nodes(calls, "cpu", cache=SqliteCache(db)).arun(Doc(text="hello", user="ada"))
    assert out.state.note == "for ada"
    assert calls_of(calls) == ["embed:hello", "personalise:ada"]
    assert [c.cached for c in out.trace.calls] == [True, True]


async def test_failures_are_never_cached(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    g = Graph(Doc)
    g.add_node("flaky", functools.partial(flaky, str(calls)), cache_policy=CachePolicy())
    g.add_edge(START, "flaky")
    app = g.compile(cache=InMemoryCache())
    with pytest.raises(Exception, match="first call fails"):
        await app.arun(Doc())
    assert (await app.arun(Doc())).state.note == "ok"  # ran again: the failure was not kept
    assert (await app.arun(Doc())).state.note == "ok"  # and now the success is
    assert calls_of(calls) == ["flaky", "flaky"]


async def test_each_send_is_keyed_by_its_payload_in_every_mode(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    g = Graph(Doc)
    g.add_node("split", lambda s: {})
    g.add_node(
        "doc", functools.partial(one_doc, str(calls)), lane="cpu", cache_policy=CachePolicy()
    )
    g.add_edge(START, "split")
    g.add_conditional_edges("split", fan)
    app = g.compile(cache=InMemoryCache())
    states = []
    for mode in ("sequential", "concurrent", "parallel"):
        out = await app.arun(Doc(text="a b a c b a"), mode=mode)
        states.append(out.state)
    assert states[0] == states[1] == states[2]
    assert states[0].done == ["A", "B", "A", "C", "B", "A"]
    # The first run is sequential: a repeated payload is a hit even within its step; the
    # other two runs are all hits.
    assert calls_of(calls) == ["doc:a", "doc:b", "doc:c"]


async def test_lean_nodes_are_keyed_by_what_they_read(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    g = Graph(Doc)
    g.add_node(
        "embed", functools.partial(embed, str(calls)), reads=["text"], cache_policy=CachePolicy()
    )
    g.add_edge(START, "embed")
    app = g.compile(cache=InMemoryCache())
    await app.arun(Doc(text="hi", user="ada"))
    await app.arun(Doc(text="hi", user="bob"))  # a field it does not read changed: a hit
    assert calls_of(calls) == ["embed:hi"]


async def test_events_say_a_call_was_cached(tmp_path: Path) -> None:
    app = two_nodes(tmp_path / "calls", "io", cache=InMemoryCache())
    await app.arun(Doc(text="x", user="y"))
    seen: list[NodeFinished] = []
    await app.arun(
        Doc(text="x", user="y"),
        on_event=lambda e: seen.append(e) if isinstance(e, NodeFinished) else None,
    )
    assert [(e.node, e.cached) for e in seen] == [("embed", True), ("personalise", True)]


async def test_an_input_that_cannot_be_keyed_names_the_node_and_the_fix() -> None:
    class Holder(BaseModel):
        model_config = {"arbitrary_types_allowed": True}
        thing: Any = None

    g = Graph(Holder)
    g.add_node("n", lambda s: {}, cache_policy=CachePolicy())
    g.add_edge(START, "n")
    app = g.compile(cache=InMemoryCache())
    with pytest.raises(GraphError, match=r"node 'n'.*cannot be pickled.*key_func"):
        await app.arun(Holder(thing=lambda: 1))


def test_bad_policies_are_refused_when_the_graph_is_built() -> None:
    with pytest.raises(ValueError, match="ttl"):
        CachePolicy(ttl=0)
    g = Graph(Doc)
    with pytest.raises(GraphError, match="cache_policy must be a CachePolicy"):
        g.add_node("n", lambda s: {}, cache_policy={"ttl": 1})  # type: ignore[arg-type]


async def test_without_a_cache_the_policy_changes_nothing(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    app = two_nodes(calls, "io")
    await app.arun(Doc(text="hello", user="ada"))
    await app.arun(Doc(text="hello", user="ada"))
    assert calls_of(calls) == ["embed:hello", "personalise:ada"] * 2

"""Chat history as state: add_messages against LangGraph's, MessagesState, the native
messages without langchain-core, and messages kept exactly by checkpoints."""

from __future__ import annotations

import asyncio
import copy
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine.messages as messages
from engine.checkpoint import (
    Checkpointer,
    MemoryCheckpointer,
    PostgresCheckpointer,
    SqliteCheckpointer,
    codec,
)
from engine.checkpoint.snapshot import RunCodec, Topology
from engine.errors import CheckpointError
from engine.messages import (
    REMOVE_ALL_MESSAGES,
    Message,
    MessagesState,
    RemoveMessage,
    add_messages,
)
from engine.state import StateSchema, Write
from tests.conftest import postgres_dsn

lc = pytest.importorskip("langchain_core.messages")

# -- add_messages, against LangGraph's -------------------------------------------------

KINDS = ["HumanMessage", "AIMessage", "SystemMessage", "ToolMessage"]


def _make(kind: str, text: str, mid: str | None) -> Any:
    extra = {"tool_call_id": "call-1"} if kind == "ToolMessage" else {}
    return getattr(lc, kind)(content=text, id=mid, **extra)


@st.composite
def merges(draw: st.DrawFn) -> tuple[list[Any], Any]:
    """A list of messages with ids, and what a node returns to it."""
    ids = [f"m{i}" for i in range(draw(st.integers(0, 4)))]
    left = [_make(draw(st.sampled_from(KINDS)), f"left {i}", mid) for i, mid in enumerate(ids)]
    right: list[Any] = []
    for j in range(draw(st.integers(0, 5))):
        op = draw(
            st.sampled_from(
                ["new", "new_id", "replace", "remove", "tuple", "text", "dict", "remove_all"]
            )
        )
        if op in ("replace", "remove") and not ids:
            op = "new"
        if op == "new":
            right.append(_make(draw(st.sampled_from(KINDS)), f"right {j}", None))
        elif op == "new_id":
            mid = f"n{draw(st.integers(0, 2))}"
            right.append(_make(draw(st.sampled_from(KINDS)), f"right {j}", mid))
        elif op == "replace":
            right.append(_make("AIMessage", f"replaced {j}", draw(st.sampled_from(ids))))
        elif op == "remove":
            right.append(lc.RemoveMessage(id=draw(st.sampled_from(ids))))
        elif op == "tuple":
            role = draw(st.sampled_from(["user", "human", "assistant", "ai", "system"]))
            right.append((role, f"said {j}"))
        elif op == "text":
            right.append(f"text {j}")
        elif op == "dict":
            right.append({"role": draw(st.sampled_from(["user", "assistant"])), "content": "d"})
        else:
            right.append(lc.RemoveMessage(id=REMOVE_ALL_MESSAGES))
    if draw(st.booleans()) and len(right) == 1:
        return left, right[0]  # one message, not in a list
    return left, right


def _shape(result: list[Any], given_ids: set[str]) -> list[tuple[str, Any, str]]:
    """Class, content and id of each message; a fresh id shows as its kind, not its value."""
    out = []
    for m in result:
        fresh = m.id not in given_ids
        if fresh:
            assert isinstance(m.id, str) and uuid.UUID(m.id).version == 4
        out.append((type(m).__name__, m.content, "<fresh>" if fresh else m.id))
    return out


def _outcome(fn: Any, left: list[Any], right: Any) -> Any:
    try:
        return fn(copy.deepcopy(left), copy.deepcopy(right))
    except Exception as exc:
        return type(exc)


class TestAddMessages:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(case=merges())
    def test_same_as_langgraph(self, case: tuple[list[Any], Any]) -> None:
        """Over generated lists and returns (appends, replacements by id, removals, remove-all,
        tuples, strings, dicts, one message alone): the same messages in the same order, the
        same ids kept and fresh uuid4 ids where LangGraph makes them, or the same error."""
        from langgraph.graph import add_messages as lg_add_messages

        left, right = case
        given_ids = {m.id for m in left} | {
            m.id for m in (right if isinstance(right, list) else [right]) if hasattr(m, "id")
        }
        expected = _outcome(lg_add_messages, left, right)
        actual = _outcome(add_messages, left, right)
        if isinstance(expected, type):
            assert actual is expected
            return
        assert _shape(actual, given_ids) == _shape(expected, given_ids)

    def test_removing_an_unknown_id(self) -> None:
        """A RemoveMessage naming no message is a ValueError that names the id."""
        with pytest.raises(ValueError, match="RemoveMessage\\(id='ghost'\\)"):
            add_messages([lc.HumanMessage("a", id="1")], [lc.RemoveMessage(id="ghost")])

    def test_ids_are_given_in_place_and_lists_are_new(self) -> None:
        """An id-less message gets its id on the object (so a streamed message and the stored
        one agree); neither list is changed."""
        msg = lc.AIMessage("hi")
        left = [lc.HumanMessage("a", id="1")]
        out = add_messages(left, [msg])
        assert out[1] is msg and msg.id is not None and left == [lc.HumanMessage("a", id="1")]

    def test_chunks_become_messages(self) -> None:
        """A streamed chunk is kept as its whole message."""
        out = add_messages([], [lc.AIMessageChunk("x", id="c")])
        assert type(out[0]) is lc.AIMessage and out[0].content == "x"


class TestNative:
    """Without langchain-core the engine's own frozen records do the same."""

    @pytest.fixture(autouse=True)
    def no_langchain(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(messages, "_langchain", lambda: None)

    def test_coercion_and_ids(self) -> None:
        """Tuples, strings and dicts become Messages with roles and fresh ids."""
        out = add_messages(
            [], [("user", "hi"), "plain", {"role": "assistant", "content": "yo", "id": "x"}]
        )
        assert [(m.role, m.content) for m in out] == [
            ("human", "hi"),
            ("human", "plain"),
            ("ai", "yo"),
        ]
        assert out[2].id == "x" and all(isinstance(m.id, str) for m in out)

    def test_replace_remove_and_remove_all(self) -> None:
        """Same rules: replace by id in place, remove, remove everything before."""
        left = [Message("human", "a", "1"), Message("ai", "b", "2")]
        assert add_messages(left, [Message("ai", "B", "2")])[1].content == "B"
        assert [m.id for m in add_messages(left, [RemoveMessage("1")])] == ["2"]
        out = add_messages(left, [RemoveMessage(REMOVE_ALL_MESSAGES), ("user", "new")])
        assert [m.content for m in out] == ["new"]

    def test_bad_items(self) -> None:
        """An unknown role or a non-message is an error that says what is accepted."""
        with pytest.raises(ValueError, match="unknown message role 'robot'"):
            add_messages([], [("robot", "x")])
        with pytest.raises(TypeError, match="cannot make a message of a int"):
            add_messages([], [42])


class TestMessagesState:
    def test_channel(self) -> None:
        """MessagesState's messages start empty and merge with add_messages; input tuples are
        coerced, and a subclass adds keys."""

        class Chat(MessagesState):
            topic: str

        schema = StateSchema.of(Chat)
        assert schema.initial() == {"messages": []}
        assert schema.channels["messages"].reducer is add_messages
        values = schema.start({"messages": [("user", "hi")], "topic": "t"})
        (msg,) = values["messages"]
        assert type(msg) is lc.HumanMessage and msg.content == "hi" and msg.id
        values = schema.apply(
            values, [Write("bot", -1, {"messages": [lc.AIMessage("yo", id="a")]})], 0
        )
        assert [m.content for m in values["messages"]] == ["hi", "yo"]


# -- checkpoints keep messages exactly -----------------------------------------------

TEXT = st.text(max_size=8)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(TEXT, inner, max_size=2),
    max_leaves=4,
)
CONTENT = TEXT | st.lists(
    st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), max_size=2
)


@st.composite
def lc_messages(draw: st.DrawFn) -> Any:
    name = draw(st.sampled_from(codec.LANGCHAIN_MESSAGES))
    cls = getattr(lc, name)
    common: dict[str, Any] = {
        "id": draw(st.none() | TEXT),
        "additional_kwargs": draw(st.dictionaries(TEXT, JSONISH, max_size=2)),
        "response_metadata": draw(st.dictionaries(TEXT, JSONISH, max_size=2)),
        "name": draw(st.none() | TEXT),
    }
    if name == "RemoveMessage":
        return cls(id=draw(TEXT))
    common["content"] = draw(CONTENT)
    if name.startswith("ToolMessage"):
        common["tool_call_id"] = draw(TEXT)
        common["status"] = draw(st.sampled_from(["success", "error"]))
        common["artifact"] = draw(JSONISH)
    if name.startswith("ChatMessage"):
        common["role"] = draw(TEXT)
    if name == "AIMessage":
        common["tool_calls"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"name": TEXT, "args": st.dictionaries(TEXT, JSONISH, max_size=2), "id": TEXT}
                ),
                max_size=2,
            )
        )
        if draw(st.booleans()):
            common["usage_metadata"] = {
                "input_tokens": 1,
                "output_tokens": 2,
                "total_tokens": 3,
            }
    if name == "AIMessageChunk":
        common["chunk_position"] = draw(st.sampled_from([None, "last"]))
    if name.startswith("FunctionMessage"):
        common["name"] = draw(TEXT)
    return cls(**common)


def _round_trip(value: Any) -> Any:
    enc = codec.encode(value)
    assert enc.exact
    return codec.decode(json.loads(codec.dumps(enc.data)))


class TestCodec:
    @settings(max_examples=200, deadline=None)
    @given(msg=lc_messages())
    def test_every_allowed_class_round_trips(self, msg: Any) -> None:
        """Each of langchain-core's message classes comes back as the same class with the
        same fields, through the JSON text a store keeps."""
        back = _round_trip(msg)
        assert type(back) is type(msg)
        assert codec.difference(msg, back) is None
        assert back.model_dump() == msg.model_dump()

    def test_native_messages_and_nested_values(self) -> None:
        """The engine's own messages, and messages inside payloads and interrupt-like values."""
        value = {
            "question": "approve?",
            "tool_call": {"name": "refund", "args": {"amount": 3}, "id": "c1"},
            "history": [Message("human", "hi", "1"), RemoveMessage("1"), lc.AIMessage("x")],
        }
        back = _round_trip(value)
        assert codec.difference(value, back) is None
        assert type(back["history"][0]) is Message

    def test_a_subclass_is_not_kept_exactly(self) -> None:
        """Only the listed classes are: a subclass falls back to plain data (inexact)."""

        class Mine(lc.AIMessage):
            pass

        assert not codec.encode(Mine("x")).exact

    def test_only_listed_names_are_read(self) -> None:
        """A stored name outside the list is refused without importing anything."""
        before = set(sys.modules)
        for name in ("lc:os.system", "lc:BaseMessage", "engine:Graph", "os:system"):
            with pytest.raises(codec.CodecError, match="not a message class"):
                codec.decode({"$message": [name, {}]})
        assert set(sys.modules) == before


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    with asyncio.Runner() as runner:
        cp: Checkpointer
        if request.param == "memory":
            cp = MemoryCheckpointer()
        elif request.param == "sqlite":
            cp = SqliteCheckpointer(tmp_path / "m.sqlite", durable=False)
        else:
            cp = PostgresCheckpointer(postgres_dsn(), pool_size=1)
        runner.run(cp.setup())
        try:
            yield runner, cp
        finally:
            runner.run(cp.aclose())


class TestThroughStores:
    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(history=st.lists(lc_messages(), max_size=4))
    def test_a_chat_state_comes_back_exactly(self, store: Any, history: list[Any]) -> None:
        """A MessagesState with generated messages, a Send payload holding messages and a
        pending write of messages come back as the same classes with the same fields."""
        runner, cp = store
        schema = StateSchema.of(MessagesState, conventions="langgraph")
        run_codec = RunCodec(schema, Topology(frozenset({"agent"}), {}), held="values")

        class _T:
            node, index, has_payload = "agent", 0, True
            payload = {"messages": history}

        thread = f"msg-{uuid.uuid4().hex}"
        saved = run_codec.save(
            thread_id=thread,
            run_id="r",
            step=1,
            state={"messages": history},
            tasks=[_T()],
            fanin={},
            pending={("agent", 0): {"messages": history[:1]}},
            status="failed",
            started_at=None,
        )
        runner.run(cp.put(saved))
        loaded = runner.run(cp.get_latest(thread))
        back = run_codec.load(loaded)
        assert codec.difference({"messages": history}, back.state) is None
        assert codec.difference({"messages": history}, back.tasks[0].payload) is None
        assert codec.difference({"messages": history[:1]}, back.pending[("agent", 0)]) is None

    def test_a_message_subclass_in_state_is_refused(self) -> None:
        """A message of an unlisted class is refused at the save, naming the field."""

        class Mine(lc.AIMessage):
            pass

        schema = StateSchema.of(MessagesState)
        run_codec = RunCodec(schema, Topology(frozenset({"agent"}), {}), held="values")
        with pytest.raises(CheckpointError, match=r"state field 'messages'.*Nothing was saved"):
            run_codec.save(
                thread_id="t",
                run_id="r",
                step=1,
                state={"messages": [Mine("x")]},
                tasks=[],
                fanin={},
                pending={},
                status="done",
                started_at=None,
            )

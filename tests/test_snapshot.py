"""A run's state <-> its checkpoint: every value a schema accepts comes back exactly on
every checkpointer, or the save is refused naming field, node and step; a checkpoint that
names what the graph does not have is refused on load."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import enum
import math
import operator
import pathlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, ValidationError, create_model

from engine import END
from engine.checkpoint import (
    Checkpoint,
    Checkpointer,
    MemoryCheckpointer,
    PendingWrite,
    PostgresCheckpointer,
    SqliteCheckpointer,
    TaskRef,
    codec,
)
from engine.checkpoint.snapshot import RunCodec, Topology
from engine.errors import CheckpointError
from engine.state import StateSchema
from tests.conftest import postgres_dsn


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Inner(BaseModel):
    x: float = 0.0
    tags: list[str] = []


# -- generated schemas and values -------------------------------------------------

#: Strings, with NUL, lone surrogates and a surrogate pair held as two code points.
TEXT = st.lists(
    st.characters(exclude_categories=())
    | st.sampled_from(["\x00", "\ud800", "\udfff", "\ud83d\ude00", "$", "é"]),
    max_size=6,
).map("".join)
ZONES = (
    st.none() | st.timezones() | st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=5), "X")])
)
BIG = st.integers() | st.integers(min_value=-(2**3000), max_value=2**3000)
#: Floats, with what plain JSON loses drawn often.
FLOATS = st.floats() | st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e16, 5e-324])

#: Leaves of ``Any`` values the codec writes exactly.
EXACT_LEAVES = (
    st.none()
    | st.booleans()
    | BIG
    | FLOATS
    | TEXT
    | st.binary(max_size=8)
    | st.datetimes(timezones=ZONES)
    | st.decimals()
    | st.uuids()
    | st.frozensets(st.integers(), max_size=3)
    | st.timedeltas()
)
EXACT_ANY = st.recursive(
    EXACT_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(TEXT, inner, max_size=3)
        | st.dictionaries(st.integers(), inner, max_size=2)
    ),
    max_leaves=8,
)
#: Values an ``Any`` field cannot get back from a checkpoint: no declared type rebuilds them.
LOST_IN_ANY = st.sampled_from(Color) | st.just(pathlib.Path("/tmp/x")) | st.builds(Inner)


@st.composite
def any_values(draw: st.DrawFn) -> tuple[Any, bool]:
    """(a value for an ``Any`` field, whether a checkpoint can keep it)."""
    if draw(st.integers(0, 4)) == 0:
        return [draw(EXACT_ANY), draw(LOST_IN_ANY)], False
    return draw(EXACT_ANY), True


#: name -> (annotation, strategy of values). ``Any`` is drawn apart (any_values).
KINDS: dict[str, tuple[Any, st.SearchStrategy[Any]]] = {
    "float": (float, FLOATS),
    "opt_float": (float | None, st.none() | FLOATS),
    "int": (int, BIG),
    "bool": (bool, st.booleans()),
    "str": (str, TEXT),
    "bytes": (bytes, st.binary(max_size=16)),
    "pair": (tuple[int, str], st.tuples(st.integers(), TEXT)),
    "floats": (tuple[float, ...], st.lists(FLOATS, max_size=4).map(tuple)),
    "int_set": (set[int], st.sets(BIG, max_size=4)),
    "str_frozenset": (frozenset[str], st.frozensets(TEXT, max_size=4)),
    "float_list": (Annotated[list[float], operator.add], st.lists(FLOATS, max_size=4)),
    "str_dict": (
        dict[str, float],
        st.dictionaries(TEXT | st.sampled_from(["$float", "$x"]), FLOATS, max_size=3),
    ),
    "int_dict": (dict[int, str], st.dictionaries(BIG, TEXT, max_size=3)),
    "tuple_keys": (
        dict[tuple[int, int], str],
        st.dictionaries(st.tuples(st.integers(), st.integers()), TEXT, max_size=3),
    ),
    "datetime": (dt.datetime, st.datetimes(timezones=ZONES)),
    "date": (dt.date, st.dates()),
    "time": (dt.time, st.times(timezones=ZONES)),
    "timedelta": (dt.timedelta, st.timedeltas()),
    "decimal": (decimal.Decimal, st.decimals(allow_nan=False, allow_infinity=False)),
    "uuid": (uuid.UUID, st.uuids()),
    "inner": (Inner, st.builds(Inner, x=FLOATS, tags=st.lists(TEXT, max_size=2))),
    "inners": (list[Inner], st.lists(st.builds(Inner, x=FLOATS), max_size=2)),
    "color": (Color, st.sampled_from(Color)),
    "colors": (list[Color] | None, st.none() | st.lists(st.sampled_from(Color), max_size=2)),
    "path": (pathlib.Path, st.sampled_from([pathlib.Path("a/b"), pathlib.Path("/")])),
}


@dataclass
class Case:
    """A generated schema, a state of it, a Send payload and a pending write."""

    model: type[BaseModel]
    state: BaseModel
    payload: Any
    write: dict[str, Any]
    keepable: bool
    lost: str  # what a refusal must name when not keepable


@st.composite
def cases(draw: st.DrawFn) -> Case:
    names = draw(st.lists(st.sampled_from([*KINDS, "any"]), min_size=1, max_size=5, unique=True))
    fields: dict[str, Any] = {}
    values: dict[str, Any] = {}
    keepable, lost = True, ""
    for i, kind in enumerate(names):
        name = f"f{i}_{kind}"
        if kind == "any":
            fields[name] = (Any, Field(default=None))
            values[name], ok = draw(any_values())
            if not ok and keepable:
                keepable, lost = False, f"field {name!r}"
        else:
            annotation, strategy = KINDS[kind]
            fields[name] = (annotation, ...)
            values[name] = draw(strategy)
    model = create_model("Generated", **fields)
    try:
        state = model(**values)
    except ValidationError:
        reject()
    if draw(st.booleans()):
        payload: Any = state
    else:
        payload, ok = draw(any_values())
        if not ok and keepable:
            keepable, lost = False, "the payload of Send 0 to node 'n'"
    # A pending write: raw node output for one field (an enum member, a model...).
    written = draw(st.sampled_from(sorted(values)))
    return Case(model, state, payload, {written: values[written]}, keepable, lost)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[asyncio.Runner, Any]]:
    """One checkpointer per backend, on a loop that outlives hypothesis' examples."""
    with asyncio.Runner() as runner:
        cp: Checkpointer
        if request.param == "memory":
            cp = MemoryCheckpointer()
        elif request.param == "sqlite":
            cp = SqliteCheckpointer(tmp_path / "cp.sqlite", durable=False)
        else:
            cp = PostgresCheckpointer(postgres_dsn(), pool_size=1)
        runner.run(cp.setup())
        try:
            yield runner, cp
        finally:
            runner.run(cp.aclose())


@dataclass(frozen=True)
class _Task:
    node: str
    index: int
    payload: Any
    has_payload: bool


def save(case: Case, codec_: RunCodec, thread_id: str) -> Checkpoint:
    return codec_.save(
        thread_id=thread_id,
        run_id="run",
        step=3,
        state=case.state,
        tasks=[_Task("n", 0, case.payload, True), _Task("m", -1, None, False)],
        fanin={},
        pending={("n", 0): case.write},
        status="failed",
        started_at=None,
    )


class TestExactOrRefused:
    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
        ],
    )
    @given(case=cases())
    def test_save_then_load_gives_the_same_state_or_a_clear_refusal(
        self, store: tuple[asyncio.Runner, Checkpointer], case: Case
    ) -> None:
        """Over generated schemas and values: what a checkpointer gives back is strictly the
        state, Send payload and pending write saved, or the save raised a CheckpointError
        naming what it cannot keep. Never a silent change."""
        runner, cp = store
        codec_ = RunCodec(StateSchema.of(case.model), Topology(frozenset({"n", "m"}), {}))
        thread_id = f"prop-{uuid.uuid4().hex}"
        if not case.keepable:
            with pytest.raises(CheckpointError, match="Nothing was saved") as info:
                save(case, codec_, thread_id)
            assert case.lost in str(info.value)
            return
        runner.run(cp.put(save(case, codec_, thread_id)))
        loaded = runner.run(cp.get_latest(thread_id))
        assert loaded is not None
        back = codec_.load(loaded)
        assert codec.difference(case.state, back.state) is None
        sent = next(t for t in back.tasks if t.index == 0)
        assert codec.difference(case.payload, sent.payload, "payload") is None
        ((field, value),) = case.write.items()
        assert codec.difference(value, back.pending[("n", 0)][field], field) is None


# -- refusals at save ---------------------------------------------------------------


class State(BaseModel):
    notes: Annotated[list[str], operator.add] = []
    score: float = 0.0
    extra: Any = None


def run_codec(nodes: frozenset[str] = frozenset({"a", "b", "join"})) -> RunCodec:
    return RunCodec(
        StateSchema.of(State),
        Topology(nodes, {"a+b->join": frozenset({"a", "b"})}),
    )


class TestRefusedAtSave:
    def test_state_field_names_the_node_and_step_that_wrote_it(self) -> None:
        """An enum in an ``Any`` field: refused, naming field, writer (with its Send index)
        and step; the fix is in the message."""
        with pytest.raises(CheckpointError) as info:
            run_codec().save(
                thread_id="t",
                run_id="r",
                step=4,
                state=State(extra=Color.RED),
                tasks=[],
                fanin={},
                pending={},
                status="running",
                started_at=None,
                written={("a", 2): {"extra": Color.RED}, ("b", -1): {"score": 1.0}},
            )
        text = str(info.value)
        assert "cannot save step 4 of thread 't'" in text
        assert "state field 'extra' (written by node 'a' (Send 2) in step 3)" in text
        assert "is a str, not a Color" in text
        assert "declare the field with the value's own type, not Any" in text
        assert "previous checkpoint is kept" in text

    def test_pending_write_names_node_and_field(self) -> None:
        """A write of a model into ``Any``, in a failed step: refused naming node and field."""
        with pytest.raises(
            CheckpointError, match=r"the write of node 'b' in step 2 to field 'extra'"
        ):
            run_codec().save(
                thread_id="t",
                run_id="r",
                step=2,
                state=State(),
                tasks=[_Task("b", -1, None, False)],
                fanin={},
                pending={("b", -1): {"extra": Inner()}},
                status="failed",
                started_at=None,
            )

    def test_a_task_the_graph_cannot_run_is_never_saved(self) -> None:
        """A cursor naming END (or any node the graph lacks) is an engine bug: refused."""
        for task in (_Task(END, -1, None, False), _Task("ghost", -1, None, False)):
            with pytest.raises(CheckpointError, match=r"bug of the engine.*previous checkpoint"):
                run_codec().save(
                    thread_id="t",
                    run_id="r",
                    step=1,
                    state=State(),
                    tasks=[task],
                    fanin={},
                    pending={},
                    status="running",
                    started_at=None,
                )


# -- refusals at load ---------------------------------------------------------------


def stored(**changes: Any) -> Checkpoint:
    """A checkpoint as a graph with nodes a, b, join and fan-in a+b->join would save."""
    base: dict[str, Any] = {
        "thread_id": "t",
        "run_id": "r",
        "step": 1,
        "state": {"notes": ["x"], "score": 1.0, "extra": None},
        "next_tasks": [TaskRef(node="join")],
        "fanin": {"a+b->join": ["a"]},
        "pending_writes": [],
        "status": "failed",
        "created_at": 0.0,
    }
    base.update(changes)
    return Checkpoint(**base)


class TestRefusedAtLoad:
    @pytest.mark.parametrize(
        ("changes", "message"),
        [
            (
                {"pending_writes": [PendingWrite(node="ghost", updates={"notes": ["evil"]})]},
                "pending write of node 'ghost', a node the graph does not have",
            ),
            (
                {"pending_writes": [PendingWrite(node="a", updates={"notes": ["evil"]})]},
                "pending write of node 'a', which is no task of its step",
            ),
            ({"next_tasks": [TaskRef(node="ghost")]}, "names task 'ghost'"),
            ({"next_tasks": [TaskRef(node=END)]}, "names task '__end__'"),
            (
                {"next_tasks": [TaskRef(node="join", index=0)]},
                "malformed task: node 'join', index 0",
            ),
            ({"fanin": {"x+y->z": ["x"]}}, "fan-in edge 'x\\+y->z', an edge the graph does"),
            ({"fanin": {"a+b->join": ["a", "ghost"]}}, "counts \\['ghost'\\] as sources"),
        ],
    )
    def test_what_the_graph_does_not_have_is_refused(
        self, changes: dict[str, Any], message: str
    ) -> None:
        """Tasks, fan-in bookkeeping or pending writes naming what the graph lacks: a
        CheckpointError that says how to get the thread unstuck, nothing merged."""
        with pytest.raises(CheckpointError, match=message) as info:
            run_codec().load(stored(**changes))
        assert "delete_thread('t')" in str(info.value)

    @pytest.mark.parametrize(
        ("changes", "message"),
        [
            ({"state": {"notes": {"$os.system": "x"}}}, "unknown tag"),
            ({"state": {"score": "high"}}, "ValidationError"),
            (
                {
                    "pending_writes": [
                        PendingWrite(node="join", updates={"nope": 1}),
                    ]
                },
                "unknown field 'nope'",
            ),
            (
                {
                    "pending_writes": [
                        PendingWrite(node="join", updates={"score": 1.0}, typed=["notes"]),
                    ]
                },
                "typed field 'notes' is not in the write",
            ),
        ],
    )
    def test_data_that_does_not_fit_is_refused(self, changes: dict[str, Any], message: str) -> None:
        """Unknown tags, values the schema rejects, writes to unknown fields: refused."""
        with pytest.raises(CheckpointError, match=message):
            run_codec().load(stored(**changes))

    def test_version_1_data_is_read_as_plain_json(self) -> None:
        """A checkpoint of the first layout (plain JSON, no tags) still loads as written:
        a dict that looks like a tag stays a dict."""
        cp = stored(
            schema_version=1,
            state={"notes": ["x"], "score": 2.0, "extra": {"$float": "nan"}},
            pending_writes=[PendingWrite(node="join", updates={"score": 3.0})],
        )
        back = run_codec().load(cp)
        assert back.state == State(notes=["x"], score=2.0, extra={"$float": "nan"})
        assert back.pending == {("join", -1): {"score": 3.0}}
        assert math.isnan(run_codec().load(stored(state={"score": {"$float": "nan"}})).state.score)

    def test_a_write_kept_without_a_goto_loads_with_none(self) -> None:
        """A stored write row of an older engine ({"updates", "typed"} only, no ``goto``):
        it loads, its task with no goto; a row with one gives its names and Sends back."""
        from engine.checkpoint.base import decode, encode
        from engine.spec import Send

        old = decode("t", 1, encode(stored()).data, [("join", -1, '{"updates": {"score": 3.0}}')])
        back = run_codec().load(old)
        assert back.pending == {("join", -1): {"score": 3.0}} and back.gotos == {}
        cp = run_codec().save(
            thread_id="t",
            run_id="r",
            step=1,
            state=State(),
            tasks=[_Task("join", -1, None, False)],
            fanin={},
            pending={("join", -1): {"score": 3.0}},
            status="failed",
            started_at=None,
            gotos={("join", -1): ("a", Send("b", {"n": (1, 2)}))},
        )
        enc = encode(cp)
        again = decode("t", 1, enc.data, enc.writes)
        assert run_codec().load(again).gotos == {("join", -1): ("a", Send("b", {"n": (1, 2)}))}


# -- channel values (every kind of state) -------------------------------------------------


def _typeddict_of(model: type[BaseModel]) -> Any:
    """A TypedDict with the generated model's keys and types (reducers included)."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        ann = info.annotation
        fields[name] = Annotated[(ann, *info.metadata)] if info.metadata else ann
    return TypedDict("GeneratedTD", fields)  # type: ignore[operator]


def _lost(value: Any) -> bool:
    """Whether ``value`` holds an enum member, a Path or a model (LOST_IN_ANY's kinds)."""
    if isinstance(value, Color | pathlib.Path | BaseModel):
        return True
    if isinstance(value, dict):
        return any(_lost(k) or _lost(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return any(_lost(v) for v in value)
    return False


class TestValuesExactOrRefused:
    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
        ],
    )
    @given(case=cases(), drop_first=st.booleans())
    def test_channel_values_come_back_exactly_or_are_refused(
        self, store: tuple[asyncio.Runner, Checkpointer], case: Case, drop_first: bool
    ) -> None:
        """The same generated values held as the channels of a TypedDict state (unvalidated,
        some keys absent): back strictly as saved, absent keys still absent, values without
        an exact form rebuilt by their key's declared type, or a refusal naming them."""
        runner, cp = store
        schema = StateSchema.of(_typeddict_of(case.model))
        codec_ = RunCodec(schema, Topology(frozenset({"n", "m"}), {}), held="values")
        values = {k: getattr(case.state, k) for k in type(case.state).model_fields}
        if drop_first and len(values) > 1:
            values.pop(next(iter(values)))
        payload = case.payload if not isinstance(case.payload, BaseModel) else {"x": 1}
        thread_id = f"vals-{uuid.uuid4().hex}"
        args: dict[str, Any] = {
            "thread_id": thread_id,
            "run_id": "run",
            "step": 3,
            "state": values,
            "tasks": [_Task("n", 0, payload, True), _Task("m", -1, None, False)],
            "fanin": {},
            "pending": {("n", 0): case.write},
            "status": "failed",
            "started_at": None,
        }
        # Lost: a value no declared type rebuilds, in an Any key or in the payload.
        refusal = (
            any(_lost(v) for k, v in values.items() if k.endswith("_any"))
            or _lost(payload)
            or any(_lost(v) for k, v in case.write.items() if k.endswith("_any"))
        )
        try:
            saved = codec_.save(**args)
        except CheckpointError as exc:
            assert refusal, str(exc)
            assert "Nothing was saved" in str(exc)
            return
        assert not refusal
        runner.run(cp.put(saved))
        loaded = runner.run(cp.get_latest(thread_id))
        assert loaded is not None
        back = codec_.load(loaded)
        assert codec.difference(values, back.state) is None
        sent = next(t for t in back.tasks if t.index == 0)
        assert codec.difference(payload, sent.payload, "payload") is None
        ((field, value),) = case.write.items()
        assert codec.difference(value, back.pending[("n", 0)][field], field) is None

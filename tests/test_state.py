"""State schema: reducers, input validation, private copies, the deterministic merge."""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field
from typing import Annotated, Any, NotRequired, TypedDict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, ValidationError

from engine import GraphError, InvalidUpdateError
from engine.lean import StateView
from engine.state import StateSchema, View, Write, input_type_of, kind_of
from engine.state.channels import initial_of


def keep_max(a: int, b: int) -> int:
    return max(a, b)


def refuse_negative(a: int, b: int) -> int:
    if b < 0:
        raise ValueError("negative")
    return a + b


class S(BaseModel):
    items: Annotated[list[str], operator.add] = []
    best: Annotated[int, keep_max] = 0
    tally: Annotated[int, refuse_negative] = 0
    bounded: Annotated[int, Field(ge=0)] = 0
    plain: str = ""
    n: int = 0


class Other(BaseModel):
    n: int = 0
    plain: str = ""


schema = StateSchema.of(S)


class TestSchema:
    def test_reducers_from_annotations(self) -> None:
        """Annotated[T, fn] fields get fn as reducer; plain and constrained fields get none."""
        assert schema.reducers == {
            "items": operator.add,
            "best": keep_max,
            "tally": refuse_negative,
            "bounded": None,
            "plain": None,
            "n": None,
        }
        assert schema.fields == ("items", "best", "tally", "bounded", "plain", "n")

    def test_not_a_model(self) -> None:
        """Only a BaseModel subclass makes a schema."""
        with pytest.raises(GraphError, match="BaseModel subclass"):
            StateSchema.of(int)


class TestValidateInput:
    def test_dict_input(self) -> None:
        """A dict is validated into the model."""
        state = schema.validate_input({"n": "3", "items": ["a"]})
        assert isinstance(state, S) and state.n == 3 and state.items == ["a"]

    def test_instance_is_copied(self) -> None:
        """A state instance is deep-copied: the run never shares the caller's objects."""
        given = S(items=["a"])
        state = schema.validate_input(given)
        assert state == given and state is not given and state.items is not given.items

    def test_other_model_is_converted(self) -> None:
        """Another pydantic model is dumped and validated into this schema."""
        state = schema.validate_input(Other(n=4, plain="p"))
        assert isinstance(state, S) and (state.n, state.plain) == (4, "p")

    def test_bad_input(self) -> None:
        """Input the schema rejects is pydantic's ValidationError, naming the field."""
        with pytest.raises(ValidationError, match="n"):
            schema.validate_input({"n": "many"})


class TestCopy:
    def test_copy_is_deep(self) -> None:
        """A node's copy shares no mutable data with the state."""
        s = S(items=["x"])
        c = schema.copy(s)
        c.items.append("y")
        assert s.items == ["x"] and c.items == ["x", "y"]

    def test_copy_keeps_shared_values_shared_and_extras_private(self) -> None:
        """Two fields holding one list still hold one (copied) list; extra fields and an
        assignment to the copy stay the copy's own."""

        class Open(BaseModel, extra="allow"):
            a: list[int] = []
            b: list[int] = []
            n: int = 0

        one = [1]
        s = Open.model_construct(a=one, b=one, n=3, more=[7])
        c = StateSchema.of(Open).copy(s)
        assert c.a is c.b and c.a is not one and c.a == [1]
        c.a.append(2)
        c.more.append(8)  # type: ignore[attr-defined]
        c.n = 4
        assert one == [1] and s.more == [7] and s.n == 3  # type: ignore[attr-defined]

    def test_shallow_copy_is_pydantics_own_and_defers_to_a_models_copy(self) -> None:
        """``shallow_copy`` gives what ``model_copy()`` gives (fields, extras, which fields
        were set, each the copy's own); a model with private attributes or its own
        ``__copy__`` gets pydantic's copy, or its own."""
        from pydantic import PrivateAttr

        from engine.state.schema import shallow_copy

        class Open(BaseModel, extra="allow"):
            a: list[int] = []
            n: int = 0

        s = Open(a=[1], more=2)
        c = shallow_copy(s)
        assert type(c) is Open and c == s.model_copy()
        assert c.model_fields_set == {"a", "more"} and c.a is s.a  # shallow, as model_copy
        c.n = 5
        c.model_extra["more"] = 3  # type: ignore[index]
        c.model_fields_set.add("n")
        assert s.n == 0 and s.model_extra == {"more": 2} and s.model_fields_set == {"a", "more"}

        class Secret(BaseModel):
            n: int = 0
            _seen: list[int] = PrivateAttr(default_factory=list)

        p = Secret(n=1)
        p._seen.append(1)
        q = shallow_copy(p)
        assert q._seen == [1] and q.__pydantic_private__ is not p.__pydantic_private__

        copied: list[str] = []

        class Own(BaseModel):
            n: int = 0

            def __copy__(self) -> Own:
                copied.append("own")
                return Own(n=self.n)

        assert shallow_copy(Own(n=4)) == Own(n=4) and copied == ["own"]

        class OwnModelCopy(BaseModel):
            n: int = 0

            def model_copy(self, *args: Any, **kwargs: Any) -> OwnModelCopy:
                copied.append("model_copy")
                return super().model_copy(*args, **kwargs)

        assert shallow_copy(OwnModelCopy(n=2)).n == 2 and copied[-1] == "model_copy"

    def test_a_model_input_is_copied_deeply_by_its_own_deepcopy_if_it_has_one(self) -> None:
        """The input a run starts from is a deep copy (the caller's object is never changed
        by the run); a model's own ``__deepcopy__`` makes it; a field that holds the state
        itself holds the copy."""

        class Plain(BaseModel):
            items: list[int] = []
            me: Any = None

        given = Plain(items=[1])
        given.me = given
        got = StateSchema.of(Plain).validate_input(given)
        assert got.items == [1] and got.items is not given.items and got.me is got

        seen: list[str] = []

        class Own(BaseModel):
            items: list[int] = []

            def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Own:
                seen.append("deep")
                return Own(items=list(self.items))

        assert StateSchema.of(Own).validate_input(Own(items=[2])).items == [2]
        assert seen == ["deep"]


class TestCheckUpdate:
    def test_unknown_key(self) -> None:
        """A key that is not a field names node, step and the field, and lists the fields."""
        with pytest.raises(
            InvalidUpdateError, match=r"'a' \(step 1\) wrote unknown field 'nope'"
        ) as e:
            schema.check_update("a", 1, {"nope": 1})
        assert (e.value.node, e.value.step, e.value.field) == ("a", 1, "nope")
        assert "'items'" in str(e.value)

    @pytest.mark.parametrize("value", [5, "text", ["items"]])
    def test_non_dict(self, value: object) -> None:
        """A node must return a dict or None; the message names node, step and the type."""
        kind = type(value).__name__
        with pytest.raises(InvalidUpdateError, match=rf"'a' \(step 4\) returned {kind}") as e:
            schema.check_update("a", 4, value)
        assert (e.value.node, e.value.step) == ("a", 4)

    def test_none_is_empty(self) -> None:
        """None means no updates."""
        assert schema.check_update("a", 0, None) == {}

    def test_state_instance_keeps_only_set_fields(self) -> None:
        """A returned state instance updates only the fields it was built with."""
        assert schema.check_update("a", 0, S(n=2)) == {"n": 2}


class TestMerge:
    def test_reducer_order_is_node_then_index(self) -> None:
        """Writes merge in (node, Send index) order, never in the order given."""
        writes = [
            Write("b", -1, {"items": ["b"]}),
            Write("a", 1, {"items": ["a1"]}),
            Write("a", -1, {"items": ["a"]}),
            Write("a", 0, {"items": ["a0"]}),
        ]
        assert schema.merge(S(), writes, 0).items == ["a", "a0", "a1", "b"]

    def test_reducer_starts_from_current_value(self) -> None:
        """A reducer combines the state's value with the writes."""
        assert schema.merge(S(items=["x"]), [Write("a", -1, {"items": ["y"]})], 0).items == [
            "x",
            "y",
        ]

    def test_custom_reducer(self) -> None:
        """A custom reducer combines parallel writes."""
        writes = [
            Write("a", -1, {"best": 3}),
            Write("b", -1, {"best": 7}),
            Write("c", -1, {"best": 5}),
        ]
        assert schema.merge(S(best=4), writes, 0).best == 7

    def test_failing_reducer(self) -> None:
        """A reducer that raises is an InvalidUpdateError naming node, step and field."""
        with pytest.raises(
            InvalidUpdateError, match=r"field 'tally' failed on the write of node 'b' in step 2"
        ) as e:
            schema.merge(S(), [Write("a", -1, {"tally": 1}), Write("b", -1, {"tally": -1})], 2)
        assert (e.value.node, e.value.field) == ("b", "tally")
        assert isinstance(e.value.__cause__, ValueError)

    def test_plain_field_single_write(self) -> None:
        """One write to a plain field replaces it."""
        assert schema.merge(S(plain="old"), [Write("a", -1, {"plain": "x"})], 0).plain == "x"

    def test_plain_field_two_writers(self) -> None:
        """Two writes to a plain field in one step name both nodes and the field."""
        with pytest.raises(InvalidUpdateError, match=r"'a' and 'b' both wrote field 'plain'") as e:
            schema.merge(S(), [Write("b", -1, {"plain": "y"}), Write("a", -1, {"plain": "x"})], 3)
        assert e.value.nodes == ("a", "b") and e.value.step == 3 and e.value.field == "plain"
        assert "in step 3" in str(e.value)

    def test_two_sends_of_one_node_are_told_apart(self) -> None:
        """Two Sends of one node writing a plain field: the message gives their Send indexes
        and says to let one Send write it."""
        with pytest.raises(InvalidUpdateError) as e:
            schema.merge(S(), [Write("w", 1, {"plain": "y"}), Write("w", 0, {"plain": "x"})], 2)
        text = str(e.value)
        assert "nodes 'w' (Send 0) and 'w' (Send 1) both wrote field 'plain' in step 2" in text
        assert "let only one Send write it per step" in text
        assert (e.value.nodes, e.value.field) == (("w", "w"), "plain")

    def test_rejected_value(self) -> None:
        """A value the schema rejects names node, step and field."""
        with pytest.raises(InvalidUpdateError, match=r"node 'a' \(step 2\).*field 'n'") as e:
            schema.merge(S(), [Write("a", -1, {"n": "not a number"})], 2)
        assert (e.value.node, e.value.step, e.value.field) == ("a", 2, "n")
        assert isinstance(e.value.__cause__, ValidationError)

    def test_rejected_by_constraint(self) -> None:
        """A field constraint is enforced on writes too."""
        with pytest.raises(InvalidUpdateError, match="field 'bounded'"):
            schema.merge(S(), [Write("a", -1, {"bounded": -1})], 0)

    def test_values_are_validated(self) -> None:
        """Merged values are coerced by the schema, as input would be."""
        assert schema.merge(S(), [Write("a", -1, {"n": "7"})], 0).n == 7

    def test_input_state_unchanged(self) -> None:
        """Merging returns a new state and leaves the old one alone."""
        old = S(items=["x"], n=1)
        new = schema.merge(old, [Write("a", -1, {"items": ["y"], "n": 2})], 0)
        assert (old.items, old.n) == (["x"], 1) and (new.items, new.n) == (["x", "y"], 2)

    def test_no_writes(self) -> None:
        """A step without writes leaves the state as it was."""
        old = S(n=1)
        assert schema.merge(old, [Write("a", -1, {})], 0) == old


class TestRoundTrip:
    """Which fields a dump/validate round trip may change, read from the schema."""

    def test_typed_fields_are_sure_and_the_rest_are_not(self) -> None:
        """Closed types are vouched for; Any, bare containers, validators, model unions and
        function-validated types (Path) are checked on every save."""
        import pathlib

        from pydantic import field_validator

        class A(BaseModel):
            x: int = 0

        class B(BaseModel):
            x: int = 0

        class M(BaseModel):
            items: Annotated[list[str], operator.add] = []
            nested: dict[int, tuple[A, ...]] = {}
            maybe: float | None = None
            loose: Any = None
            bare: list = []  # type: ignore[type-arg]
            path: pathlib.Path = pathlib.Path(".")
            either: A | B | None = None
            stripped: str = ""

            @field_validator("stripped")
            @classmethod
            def strip(cls, v: str) -> str:
                return v.strip()

        unsure = StateSchema.of(M).unsure
        assert not unsure.whole
        assert unsure.fields == {"loose", "bare", "path", "either", "stripped"}

    def test_model_level_validators_make_every_field_unsure(self) -> None:
        """A model validator (or extra fields) may change anything: the whole model is checked."""
        from pydantic import ConfigDict, model_validator

        class V(BaseModel):
            n: int = 0

            @model_validator(mode="after")
            def bump(self) -> V:
                return self

        class E(BaseModel):
            model_config = ConfigDict(extra="allow")
            n: int = 0

        assert StateSchema.of(V).unsure.whole and StateSchema.of(E).unsure.whole


# -- TypedDict, dataclass and pydantic states: channels --------------------------------


def add_or_set(a: int | None, b: int) -> int:
    return (a or 0) + b


class TD(TypedDict):
    name: str
    tags: Annotated[list[str], operator.add]
    score: int
    total: NotRequired[Annotated[int | None, add_or_set]]


@dataclass
class DC:
    name: str
    tags: Annotated[list[str], operator.add] = field(default_factory=list)
    score: int = 0


class PD(BaseModel):
    name: str
    tags: Annotated[list[str], operator.add] = []
    score: int = 0


class Question(TypedDict):
    question: str


class Answer(TypedDict):
    answer: str


class Overall(Question, Answer):
    notes: str


class Scratch(TypedDict):
    scratch: str


class TestKinds:
    """The three kinds of state class and what each key becomes."""

    def test_kinds(self) -> None:
        """TypedDicts, dataclasses and pydantic models are state classes; nothing else is."""
        assert [kind_of(t) for t in (TD, DC, PD, dict, int)] == [
            "typeddict",
            "dataclass",
            "pydantic",
            None,
            None,
        ]

    @pytest.mark.parametrize("state", [TD, DC, PD])
    def test_reducers_and_starting_values(self, state: type) -> None:
        """A reducer from Annotated (through NotRequired too); a reducer channel whose type
        can start empty starts with that value, the others start absent."""
        schema = StateSchema.of(state)
        assert schema.reducers["tags"] is operator.add and schema.reducers["score"] is None
        assert schema.initial() == {"tags": []}
        if state is TD:
            assert schema.reducers["total"] is add_or_set
            assert schema.channels["total"].initial is None

    def test_initial_of_types(self) -> None:
        """list/dict/str/int start empty; Optional, Any and models with required fields do
        not."""
        assert [f() for f in map(initial_of, (list[int], dict[str, int], str, int))] == [
            [],
            {},
            "",
            0,
        ]
        assert [initial_of(t) for t in (int | None, Any, PD)] == [None, None, None]

    def test_not_a_state_class(self) -> None:
        """Anything else is a GraphError that says what to pass."""
        with pytest.raises(GraphError, match="TypedDict, a dataclass or a pydantic BaseModel"):
            StateSchema.of(dict)

    def test_only_pydantic_states_have_a_model(self) -> None:
        """A TypedDict state has no model (the model-instance methods need one)."""
        with pytest.raises(GraphError, match="typeddict state, which has no pydantic model"):
            StateSchema.of(TD).model  # noqa: B018

    def test_private_channels_come_from_input_schemas(self) -> None:
        """Keys only an input/output schema or a node's input schema has become channels that
        are not the state's (private)."""
        schema = StateSchema.of(
            Overall, input_schema=Question, output_schema=Answer, node_inputs={"d": Scratch}
        )
        assert list(schema.channels) == ["question", "answer", "notes", "scratch"]
        assert [c.public for c in schema.channels.values()] == [True, True, True, False]
        assert schema.input_keys == ("question",) and schema.output_keys == ("answer",)
        assert schema.fields == ("question", "answer", "notes")

    def test_input_type_of_a_node(self) -> None:
        """A node's first parameter annotated with a state class is its input schema."""

        def a(state: Question) -> None: ...
        def b(state: dict[str, Any]) -> None: ...
        def c(state) -> None: ...  # type: ignore[no-untyped-def]

        assert [input_type_of(f) for f in (a, b, c)] == [Question, None, None]


class TestValues:
    """The run's state as channel values: absent until written."""

    def test_unwritten_keys_are_absent(self) -> None:
        """The input writes only the keys it gives; reducer channels hold their start."""
        for state in (TD, DC, PD):
            values = StateSchema.of(state).start({"name": "Cy"})
            assert values == {"name": "Cy", "tags": []}, state

    def test_input_goes_through_the_reducers(self) -> None:
        """The input is written as ``__start__``'s update: a reducer folds it in."""
        values = StateSchema.of(TD).start({"name": "a", "tags": ["x"], "total": 3})
        assert values == {"name": "a", "tags": ["x"], "total": 3}
        values = StateSchema.of(TD).apply(values, [Write("n", -1, {"total": 4})], 0)
        assert values["total"] == 7

    def test_an_absent_reducer_channel_takes_its_first_write(self) -> None:
        """A reducer channel with no starting value takes its first write as it is."""
        schema = StateSchema.of(TD)
        values = schema.apply(schema.start({"name": "a"}), [Write("n", -1, {"total": 5})], 0)
        assert values["total"] == 5

    def test_apply_returns_new_values(self) -> None:
        """apply never changes the values it is given; they keep channel order."""
        schema = StateSchema.of(TD)
        old = schema.start({"name": "a"})
        new = schema.apply(old, [Write("n", -1, {"score": 1, "tags": ["t"]})], 0)
        assert old == {"name": "a", "tags": []}
        assert list(new) == ["name", "tags", "score"]

    def test_typeddict_values_are_not_validated(self) -> None:
        """A TypedDict's types are hints: a str in an int key flows through (as in
        LangGraph); a pydantic state is validated on input and on every write."""
        assert StateSchema.of(TD).start({"name": "a", "score": "high"})["score"] == "high"
        pd = StateSchema.of(PD)
        with pytest.raises(ValidationError):
            pd.start({"name": "a", "score": "high"})
        with pytest.raises(InvalidUpdateError, match=r"node 'n' \(step 3\).*field 'score'"):
            pd.apply(pd.start({"name": "a"}), [Write("n", -1, {"score": "high"})], 3)
        assert pd.apply(pd.start({"name": "a"}), [Write("n", -1, {"score": "7"})], 0)["score"] == 7

    def test_pydantic_validators_run_on_writes(self) -> None:
        """Field validators run on a write as pydantic runs them on assignment."""
        from pydantic import field_validator

        class Up(BaseModel):
            name: str = ""

            @field_validator("name")
            @classmethod
            def upper(cls, v: str) -> str:
                return v.upper()

        schema = StateSchema.of(Up)
        assert schema.apply({}, [Write("n", -1, {"name": "ada"})], 0) == {"name": "ADA"}

    def test_conflicting_writes(self) -> None:
        """Two writes to a channel without reducer in one step: an InvalidUpdateError."""
        schema = StateSchema.of(TD)
        with pytest.raises(InvalidUpdateError, match="'a' and 'b' both wrote field 'score'"):
            schema.apply({}, [Write("b", -1, {"score": 1}), Write("a", -1, {"score": 2})], 1)

    def test_input_schema_and_output(self) -> None:
        """Keys outside the input schema are ignored; output gives the output schema's keys
        that hold a value, or one key's bare value; all_values shows private channels."""
        schema = StateSchema.of(
            Overall, input_schema=Question, output_schema=Answer, node_inputs={"d": Scratch}
        )
        values = schema.start({"question": "why?", "notes": "ignored"})
        assert values == {"question": "why?"}
        values = schema.apply(values, [Write("r", -1, {"scratch": "s", "answer": "42"})], 0)
        assert schema.output(values) == {"answer": "42"}
        assert schema.output(values, "answer") == "42"
        assert schema.output(values, ["question", "answer"]) == {"question": "why?", "answer": "42"}
        assert schema.all_values(values) == {"question": "why?", "answer": "42", "scratch": "s"}
        assert schema.result(values) == {"question": "why?", "answer": "42"}

    def test_results_per_kind(self) -> None:
        """engine.Graph's result: a model, a dataclass instance (defaults for keys never
        written), or a dict of the TypedDict's keys."""
        inp = {"name": "a", "tags": ["t"]}
        assert StateSchema.of(PD).result(StateSchema.of(PD).start(inp)) == PD(name="a", tags=["t"])
        assert StateSchema.of(DC).result(StateSchema.of(DC).start(inp)) == DC("a", ["t"], 0)
        assert StateSchema.of(TD).result(StateSchema.of(TD).start(inp)) == inp

    def test_instances_as_input(self) -> None:
        """A dataclass instance writes every field; a pydantic one every field under the
        engine's conventions, the set or non-None ones under LangGraph's."""

        class Opt(BaseModel):
            name: str = ""
            opt: str | None = None

        assert StateSchema.of(DC).start(DC("a")) == {"name": "a", "tags": [], "score": 0}
        eng, lg = StateSchema.of(Opt), StateSchema.of(Opt, conventions="langgraph")
        assert eng.start(Opt(name="a")) == {"name": "a", "opt": None}
        assert lg.start(Opt(name="a")) == {"name": "a"}
        assert lg.start(Opt(name="a", opt=None)) == {"name": "a", "opt": None}


class TestConventions:
    def test_unknown_keys(self) -> None:
        """A key that is no channel: an error naming it (engine), dropped (LangGraph)."""
        with pytest.raises(InvalidUpdateError, match="wrote unknown field 'colour'"):
            StateSchema.of(TD).check_update("n", 1, {"colour": "red", "score": 1})
        lg = StateSchema.of(TD, conventions="langgraph")
        assert lg.check_update("n", 1, {"colour": "red", "score": 1}) == {"score": 1}

    def test_returned_instances(self) -> None:
        """A returned state instance writes its fields (as the input would)."""
        assert StateSchema.of(DC).check_update("n", 0, DC("z")) == {
            "name": "z",
            "tags": [],
            "score": 0,
        }
        lg = StateSchema.of(PD, conventions="langgraph")
        assert lg.check_update("n", 0, PD(name="z", score=3)) == {
            "name": "z",
            "tags": [],
            "score": 3,
        }
        assert StateSchema.of(PD).check_update("n", 0, PD(name="z", score=3)) == {
            "name": "z",
            "score": 3,
        }

    def test_non_dict_update(self) -> None:
        """Anything but a dict, None or a state instance names node, step and type."""
        with pytest.raises(InvalidUpdateError, match=r"'n' \(step 2\) returned str"):
            StateSchema.of(TD, conventions="langgraph").check_update("n", 2, "done")


class TestViews:
    """What a node receives: the class it asked for, with the channels it reads."""

    def test_state_views_per_kind(self) -> None:
        """A TypedDict node gets a dict of the keys written; dataclass and pydantic nodes get
        instances with defaults filled in."""
        inp = {"name": "Cy"}
        td, dc, pd = (StateSchema.of(s) for s in (TD, DC, PD))
        assert td.view("n")(td.start(inp)) == {"name": "Cy", "tags": []}
        assert dc.view("n")(dc.start(inp)) == DC("Cy", [], 0)
        assert pd.view("n")(pd.start(inp)) == PD(name="Cy")

    def test_schema_views(self) -> None:
        """A node annotated with another state class gets only that class's keys, built as
        that class (a dict for a TypedDict, whatever kind the state is)."""

        class Name(BaseModel):
            name: str

        @dataclass
        class Tags:
            tags: list[str]

        schema = StateSchema.of(PD, node_inputs={"a": Name, "b": Tags, "c": Scratch})
        values = schema.start({"name": "Ada", "tags": ["x"]})
        assert schema.view("a")(values) == Name(name="Ada")
        assert schema.view("a").construct  # same field types: no second validation
        assert schema.view("b")(values) == Tags(["x"])
        assert schema.view("c")(values) == {}

    def test_missing_required_field(self) -> None:
        """A dataclass view missing a required field is the dataclass's own TypeError (as
        LangGraph builds the node's input)."""
        schema = StateSchema.of(DC)
        with pytest.raises(TypeError, match="missing 1 required positional argument: 'name'"):
            schema.view("n")(schema.start({"score": 3}))

    def test_declared_reads(self) -> None:
        """reads= projects every kind: a dict for a TypedDict state, a read-only view for the
        others; a key no channel has is a GraphError."""
        td, pd = StateSchema.of(TD), StateSchema.of(PD)
        assert td.view("n", reads=["score"])({"name": "a", "score": 1}) == {"score": 1}
        got = pd.view("n", reads=["score"])({"name": "a", "score": 1})
        assert isinstance(got, StateView) and got.score == 1
        # A key nothing wrote yet reads as its default, as the instance would hold it.
        assert pd.view("n", reads=["score", "tags"])({"name": "a"}).model_dump() == {
            "score": 0,
            "tags": [],
        }
        dc = StateSchema.of(DC).view("n", reads=["score"])({"name": "a"})
        assert dc.score == 0
        with pytest.raises(GraphError, match=r"reads= names fields \['nope'\]"):
            td.view("n", reads=["nope"])
        with pytest.raises(GraphError, match="reads= leaves out"):
            StateSchema.of(Overall, node_inputs={"n": Question}).view("n", reads=["notes"])

    def test_views_copy_unless_told_not_to(self) -> None:
        """In-process calls get private copies; a call that pickles anyway does not need one."""
        values = StateSchema.of(TD).start({"name": "a", "tags": ["x"]})
        view = StateSchema.of(TD).view("n")
        mine = view(values)
        mine["tags"].append("y")
        assert values["tags"] == ["x"]
        assert view(values, copy_values=False)["tags"] is values["tags"]

    @pytest.mark.parametrize("state", [TD, DC, PD])
    def test_lean_dispatch_sends_only_what_is_read(self, state: type) -> None:
        """A node reading one small key of a big state pickles to a few hundred bytes, on
        every kind of state (the whole state: over a megabyte)."""
        import cloudpickle

        schema = StateSchema.of(state)
        values = schema.start({"name": "a", "tags": ["x" * 1_000_000]})
        lean = cloudpickle.dumps(schema.view("n", reads=["name"])(values, copy_values=False))
        whole = cloudpickle.dumps(schema.view("n")(values, copy_values=False))
        assert len(lean) < 1_000 < 1_000_000 < len(whole)

    def test_view_describes_itself(self) -> None:
        """describe() says what a node reads and how."""
        assert StateSchema.of(TD).view("n", reads=["name"]).describe() == (
            "reads ['name'] (declared, as a dict)"
        )
        assert isinstance(StateSchema.of(TD).view("n"), View)


# -- the same channel semantics as LangGraph, over generated schemas and steps ---------


@st.composite
def programs(draw: st.DrawFn) -> dict[str, Any]:
    """A state schema of generated keys and a run of steps of nodes with fixed updates."""
    kind = draw(st.sampled_from(["typeddict", "dataclass", "pydantic"]))
    keys = draw(
        st.lists(st.sampled_from(["p", "q", "r", "s"]), min_size=1, max_size=4, unique=True)
    )
    reducing = {k: draw(st.sampled_from(["plain", "add", "first"])) for k in keys}
    steps = []
    for i in range(draw(st.integers(1, 3))):
        nodes = [f"n{i}_{j}" for j in range(draw(st.integers(1, 3)))]
        updates: dict[str, dict[str, Any]] = {n: {} for n in nodes}
        for key in keys:
            writers = draw(st.lists(st.sampled_from(nodes), max_size=2, unique=True))
            if reducing[key] == "plain":
                writers = writers[:1]  # one write per step: no conflict
            for node in writers:
                updates[node][key] = (
                    [draw(st.integers(0, 9))] if reducing[key] == "add" else draw(st.integers(0, 9))
                )
        for node in nodes:
            if draw(st.integers(0, 5)) == 0:
                updates[node]["unknown"] = 1  # dropped by both
        steps.append(updates)
    given_keys = draw(st.lists(st.sampled_from(keys), min_size=1, unique=True))
    inp = {k: [1] if reducing[k] == "add" else 1 for k in given_keys}
    return {"kind": kind, "keys": keys, "reducing": reducing, "steps": steps, "input": inp}


def _first(a: int | None, b: int) -> int:
    return b if a is None else a


def _make_state(kind: str, keys: list[str], reducing: dict[str, str]) -> type:
    anns: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for key in keys:
        if reducing[key] == "add":
            anns[key], defaults[key] = Annotated[list[int], operator.add], []
        elif reducing[key] == "first":
            anns[key], defaults[key] = Annotated[int | None, _first], None
        else:
            anns[key], defaults[key] = int, 0
    if kind == "typeddict":
        return TypedDict("GenTD", anns)  # type: ignore[operator]
    if kind == "dataclass":
        return dataclasses.make_dataclass(
            "GenDC",
            [
                (
                    k,
                    anns[k],
                    field(default_factory=list)
                    if reducing[k] == "add"
                    else field(default=defaults[k]),
                )
                for k in keys
            ],
        )
    from pydantic import create_model

    return create_model("GenPD", **{k: (anns[k], defaults[k]) for k in keys})  # type: ignore[call-overload]


def _seen(state: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(state, dict):
        return "dict", dict(state)
    if isinstance(state, BaseModel):
        return type(state).__name__, state.model_dump()
    return type(state).__name__, dataclasses.asdict(state)


class TestAgainstLangGraph:
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(program=programs())
    def test_values_stream_node_inputs_and_result(self, program: dict[str, Any]) -> None:
        """Over generated schemas (TypedDict, dataclass, pydantic; plain keys, list reducers,
        reducers that start absent) and steps of parallel nodes: the values after each step
        (LangGraph's values stream), what every node receives, and invoke's result are the
        same as LangGraph's."""
        pytest.importorskip("langgraph")
        from langgraph.graph import END, START, StateGraph

        state = _make_state(program["kind"], program["keys"], program["reducing"])
        seen: list[tuple[str, str, dict[str, Any]]] = []

        def node(name: str, update: dict[str, Any]) -> Any:
            def fn(s: Any) -> dict[str, Any]:
                seen.append((name, *_seen(s)))
                return dict(update)

            return fn

        builder = StateGraph(state)
        previous = [START]
        for updates in program["steps"]:
            for name, update in updates.items():
                builder.add_node(name, node(name, update))
                builder.add_edge(previous if len(previous) > 1 else previous[0], name)
            previous = list(updates)
        for name in previous:
            builder.add_edge(name, END)
        graph = builder.compile()
        expected_chunks = list(graph.stream(program["input"], stream_mode="values"))
        expected_seen = sorted(seen)
        expected_result = graph.invoke(program["input"])
        seen.clear()

        schema = StateSchema.of(state, conventions="langgraph")
        values = schema.start(program["input"])
        chunks = [schema.all_values(values)]
        for step, updates in enumerate(program["steps"]):
            writes = []
            for name, update in updates.items():
                seen.append((name, *_seen(schema.view(name)(values))))
                writes.append(Write(name, -1, schema.check_update(name, step, update)))
            if any(w.updates for w in writes):
                values = schema.apply(values, writes, step)
                chunks.append(schema.all_values(values))
        assert chunks == expected_chunks
        assert sorted(seen) == expected_seen
        assert schema.output(values) == expected_result

"""State schema: reducers, input validation, private copies, the deterministic merge."""

from __future__ import annotations

import operator
from typing import Annotated

import pytest
from pydantic import BaseModel, Field, ValidationError

from engine import GraphError, InvalidUpdateError
from engine.state import StateSchema, Write


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
        from typing import Any

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

"""Reducers, deterministic merge and InvalidUpdateError paths."""

from __future__ import annotations

import operator
from typing import Annotated

import pytest
from pydantic import BaseModel

from engine import InvalidUpdateError
from engine.state import StateSchema, Write


def keep_max(a: int, b: int) -> int:
    return max(a, b)


class S(BaseModel):
    items: Annotated[list[str], operator.add] = []
    best: Annotated[int, keep_max] = 0
    plain: str = ""
    n: int = 0


schema = StateSchema.of(S)


class TestMerge:
    def test_reducer_order_is_node_then_index(self) -> None:
        """Writes merge in (node, Send index) order, never in the order given."""
        writes = [
            Write("b", -1, {"items": ["b"]}),
            Write("a", 1, {"items": ["a1"]}),
            Write("a", 0, {"items": ["a0"]}),
        ]
        assert schema.merge(S(), writes, 0).items == ["a0", "a1", "b"]

    def test_custom_reducer(self) -> None:
        """A custom reducer combines parallel writes."""
        writes = [
            Write("a", -1, {"best": 3}),
            Write("b", -1, {"best": 7}),
            Write("c", -1, {"best": 5}),
        ]
        assert schema.merge(S(best=4), writes, 0).best == 7

    def test_plain_field_single_write(self) -> None:
        """One write to a plain field replaces it."""
        assert schema.merge(S(), [Write("a", -1, {"plain": "x"})], 0).plain == "x"

    def test_plain_field_two_writers(self) -> None:
        """Two writes to a plain field in one step name both nodes and the field."""
        with pytest.raises(InvalidUpdateError, match=r"'a' and 'b' both wrote field 'plain'") as e:
            schema.merge(S(), [Write("b", -1, {"plain": "y"}), Write("a", -1, {"plain": "x"})], 3)
        assert e.value.nodes == ("a", "b") and e.value.step == 3

    def test_rejected_value(self) -> None:
        """A value the schema rejects names node, step and field."""
        with pytest.raises(InvalidUpdateError, match=r"node 'a' \(step 2\).*field 'n'") as e:
            schema.merge(S(), [Write("a", -1, {"n": "not a number"})], 2)
        assert e.value.field == "n"

    def test_input_state_unchanged(self) -> None:
        """Merging returns a new state and leaves the old one alone."""
        old = S(items=["x"])
        new = schema.merge(old, [Write("a", -1, {"items": ["y"]})], 0)
        assert old.items == ["x"] and new.items == ["x", "y"]


class TestCheckUpdate:
    def test_unknown_key(self) -> None:
        """A key that is not a field names node, step and the field."""
        with pytest.raises(InvalidUpdateError, match=r"'a' \(step 1\) wrote unknown field 'nope'"):
            schema.check_update("a", 1, {"nope": 1})

    def test_non_dict(self) -> None:
        """A node must return a dict or None."""
        with pytest.raises(InvalidUpdateError, match="returned int"):
            schema.check_update("a", 0, 5)

    def test_none_is_empty(self) -> None:
        """None means no updates."""
        assert schema.check_update("a", 0, None) == {}


def test_copy_is_deep() -> None:
    """A node's copy shares no mutable data with the state."""
    s = S(items=["x"])
    c = schema.copy(s)
    c.items.append("y")
    assert s.items == ["x"]


def test_reducers_found_from_annotations() -> None:
    """Annotated[T, fn] fields get fn as reducer; others none."""
    assert schema.reducers["items"] is operator.add
    assert schema.reducers["best"] is keep_max
    assert schema.reducers["plain"] is None

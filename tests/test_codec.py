"""The checkpoint value codec: every value it writes comes back exactly, as ASCII JSON text;
data it did not write (a hostile or newer checkpoint) is a CodecError, never code run."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import math
import pathlib
import uuid
import zoneinfo
from typing import Any

import pytest
from pydantic import BaseModel

from engine.checkpoint import codec


class Color(enum.Enum):
    RED = "red"


class Inner(BaseModel):
    x: float = 0.0


def round_trip(value: Any) -> Any:
    """``value`` through the codec and its JSON text, as a store keeps it."""
    text = codec.dumps(codec.encode(value).data)
    assert text.isascii()
    return codec.decode(json.loads(text))


EXACT = {
    "nan": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
    "-0.0": -0.0,
    "1e16 (an integral float)": 1e16,
    "tiny float": 5e-324,
    "int past 2**64": 2**64 + 1,
    "int past the str digit limit": -(10**5000) + 7,
    "bool is not int": [True, 1, 1.0],
    "bytes": b"\x00\xff binary",
    "bytearray": bytearray(b"\x01\x02"),
    "NUL and lone surrogates": "a\x00b\ud800c\udfff",
    "a surrogate pair as two code points": "\ud83d\ude00",
    "emoji": "\U0001f600 ünïcode",
    "tuple": (1, "a", (2.5, None)),
    "empty tuple": (),
    "set": {1, 2, 3},
    "frozenset": frozenset({"a", "b"}),
    "set with NaN": {math.nan, 1.0},
    "dict with int keys": {1: "a", 2: "b"},
    "dict with tuple keys": {(1, 2): "x", (3,): "y"},
    "dict key order": {"zeta": 1, "alpha": 2, "mid": 3},
    "dict that looks like a tag": {"$float": "nan"},
    "dict with a tag-like key among others": {"$bytes": 1, "x": 2},
    "nested": {"k": [(1, {2}), {"$tuple": []}, frozenset({(1, 2)})]},
    "complex": complex(math.nan, -0.0),
    "Decimal": decimal.Decimal("1.10"),
    "Decimal NaN": decimal.Decimal("-NaN"),
    "Decimal -0": decimal.Decimal("-0.000"),
    "Decimal exponent": decimal.Decimal("1E+5"),
    "UUID": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "date": dt.date(1, 1, 1),
    "naive datetime": dt.datetime(2024, 2, 29, 23, 59, 59, 999999),
    "datetime with offset and name": dt.datetime(
        2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30), "NST")
    ),
    "datetime in a zone, fold 1": dt.datetime(
        2024, 10, 27, 2, 30, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"), fold=1
    ),
    "time with zone": dt.time(23, 0, 0, 5, tzinfo=dt.UTC),
    "timedelta": dt.timedelta(days=-3, seconds=5, microseconds=7),
    "big structure": {"items": [{"i": i, "f": i / 7, "s": str(i)} for i in range(200)]},
}


class TestRoundTrip:
    @pytest.mark.parametrize("value", EXACT.values(), ids=EXACT.keys())
    def test_every_supported_value_comes_back_exactly(self, value: Any) -> None:
        """Encoded, written as text, read back and decoded: the same value, strictly."""
        assert codec.encode(value).exact
        assert codec.difference(value, round_trip(value)) is None

    def test_text_has_no_nul_nor_surrogate(self) -> None:
        """The text form escapes NUL and surrogates: no store ever sees them raw."""
        text = codec.dumps(codec.encode({"s": "\x00\ud800"}).data)
        assert "\x00" not in text and text.isascii() and "\\u0000" in text
        text.encode("utf-8")  # a lone surrogate would make this raise

    @pytest.mark.parametrize(
        ("value", "path", "kind"),
        [
            (Color.RED, "the value", "Color"),
            ({"p": [pathlib.Path("/tmp")]}, "['p'][0]", "PosixPath"),
            ({"m": Inner(x=math.nan)}, "['m']", "Inner"),
        ],
    )
    def test_values_without_an_exact_form_are_marked(
        self, value: Any, path: str, kind: str
    ) -> None:
        """Enums, paths, models: written as pydantic's plain form and marked inexact, with
        where and what, so that a caller validates them or refuses them."""
        enc = codec.encode(value)
        assert not enc.exact
        assert (enc.inexact_at, enc.inexact_type) == (path, kind)
        codec.dumps(enc.data)  # still JSON (a model's NaN is tagged, not null)

    def test_a_value_pydantic_cannot_dump_either_is_refused(self) -> None:
        """An object with no JSON form at all is a CodecError naming where it is."""
        with pytest.raises(codec.CodecError, match=r"\['lock'\]: a lock has no JSON form"):
            codec.encode({"lock": __import__("threading").Lock()})

    def test_dumps_is_strict(self) -> None:
        """Raw NaN or foreign objects in JSON data are refused, never written as null."""
        with pytest.raises(ValueError, match="Out of range float"):
            codec.dumps({"x": math.nan})
        with pytest.raises(TypeError):
            codec.dumps({"x": b"raw"})


class TestHostileData:
    @pytest.mark.parametrize(
        ("data", "message"),
        [
            ({"$os.system": "rm -rf /"}, "unknown tag '\\$os.system'"),
            ({"$bytes": 5}, "malformed \\$bytes"),
            ({"$bytes": "not base64!"}, "malformed \\$bytes"),
            ({"$set": [[1, 2]]}, "malformed \\$set"),
            ({"$int": "zz"}, "malformed \\$int"),
            ({"$float": "NaN-ish"}, "malformed \\$float"),
            ({"$dict": [[1]]}, "malformed \\$dict"),
            ({"$datetime": ["2024-01-01T00:00:00", {"zone": "../../etc/passwd"}, 0]}, "malformed"),
            ({"$datetime": ["2024-01-01", None, 7]}, "malformed"),
            ({"$timedelta": [1.5, 0, 0]}, "malformed"),
            ({"$complex": ["1", "2"]}, "malformed"),
        ],
    )
    def test_malformed_or_unknown_tags_are_codec_errors(
        self, data: dict[str, Any], message: str
    ) -> None:
        """A tag this engine does not know, or whose content is wrong, is a CodecError."""
        with pytest.raises(codec.CodecError, match=message):
            codec.decode({"outer": [data]})

    def test_error_says_where(self) -> None:
        """The error names the path inside the data."""
        with pytest.raises(codec.CodecError, match=r"^\['a'\]\[1\]: malformed"):
            codec.decode({"a": [0, {"$bytes": 1}]})


class TestDifference:
    @pytest.mark.parametrize(
        ("a", "b", "why"),
        [
            (1, 1.0, "is a float, not a int"),
            (1, True, "is a bool, not a int"),
            (0.0, -0.0, "is -0.0, not 0.0"),
            ([1, 2], (1, 2), "is a tuple, not a list"),
            ({"a": 1, "b": 2}, {"b": 2, "a": 1}, "has keys"),
            (Inner(x=1.0), {"x": 1.0}, "is a dict, not a Inner"),
            (Color.RED, "red", "is a str, not a Color"),
            (decimal.Decimal("1.0"), decimal.Decimal("1.00"), "Decimal"),
            (
                dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
                dt.datetime(2024, 1, 1, tzinfo=zoneinfo.ZoneInfo("UTC")),
                "2024",
            ),
            ({math.nan}, {1.0}, "is {1.0}"),
        ],
    )
    def test_strict_where_equality_is_not(self, a: Any, b: Any, why: str) -> None:
        """Differences ``==`` would miss, or wrongly report, are told strictly."""
        found = codec.difference(a, b, "f")
        assert found is not None and why in found

    def test_nan_is_the_same_as_nan(self) -> None:
        """NaN, unequal to itself, still counts as the same value (also in sets and models)."""
        assert codec.difference([math.nan, {math.nan}], [math.nan, {math.nan}]) is None
        assert codec.difference(Inner(x=math.nan), Inner(x=math.nan)) is None

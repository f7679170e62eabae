"""Comparing two normalised records, entry by entry, with a readable diff.

Records are compared exactly, with one allowance: an exception on the
actual side may derive from *more* builtin classes than on the expected side
(the engine's ``NodeTimeoutError`` is also a ``TimeoutError``): every
``except`` clause that caught the expected error still catches it. Its type
name and, for user errors, its message must still be equal.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from tests.conformance.record import Encoded


def _allow_extra_bases(expected: Encoded, actual: Encoded) -> Encoded:
    """``actual`` with error ``bases`` that are a superset of the expected ones set to those."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        if (
            "<error>" in expected
            and expected.get("<error>") == actual.get("<error>")
            and isinstance(actual.get("bases"), list)
            and set(expected["bases"]) <= set(actual["bases"])
        ):
            actual = {**actual, "bases": expected["bases"]}
        return {
            k: _allow_extra_bases(expected[k], v) if k in expected else v for k, v in actual.items()
        }
    if isinstance(expected, list) and isinstance(actual, list):
        return [_allow_extra_bases(e, a) for e, a in zip(expected, actual, strict=False)] + actual[
            len(expected) :
        ]
    return actual


def _pretty(value: Any) -> list[str]:
    return json.dumps(value, indent=1, sort_keys=True).splitlines()


def differences(expected: list[Encoded], actual: list[Encoded], context: int = 3) -> list[str]:
    """Human-readable differences between two records; empty when they match."""
    problems: list[str] = []
    expected_labels = [label for label, _ in expected]
    actual_labels = [label for label, _ in actual]
    if expected_labels != actual_labels:
        problems.append(
            "entries differ (the program stopped early or recorded other things):\n"
            + "\n".join(difflib.unified_diff(expected_labels, actual_labels, "expected", "actual"))
        )
    actual_by_label = dict((label, value) for label, value in actual)
    for label, want in expected:
        if label not in actual_by_label:
            continue
        got = _allow_extra_bases(want, actual_by_label[label])
        if got != want:
            diff = difflib.unified_diff(
                _pretty(want), _pretty(got), "expected", "actual", n=context, lineterm=""
            )
            problems.append(f"entry {label!r}:\n" + "\n".join(diff))
    return problems


def assert_same(expected: list[Encoded], actual: list[Encoded], what: str) -> None:
    """Fail with every differing entry's diff when the records differ."""
    problems = differences(expected, actual)
    if problems:
        raise AssertionError(f"{what}: {len(problems)} difference(s)\n\n" + "\n\n".join(problems))

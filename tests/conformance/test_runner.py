"""The conformance harness itself: the import switch, the record's encoding and normalisation,
and a run of the engine half against a stand-in made of LangGraph's own objects."""

from __future__ import annotations

import ast
import datetime
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conformance import runner
from tests.conformance.compare import differences
from tests.conformance.record import Encoded, Recorder, encode, normalise
from tests.conformance.runner import (
    TARGET,
    langgraph_imports,
    program_info,
    program_names,
    program_source,
    record,
    required_names,
    switch_imports,
)

REPO = Path(__file__).resolve().parents[2]


class TestSwitchImports:
    def test_only_the_module_of_langgraph_imports_changes(self) -> None:
        """Each ``from langgraph.X import`` points at engine.langgraph; nothing else moves."""
        source = (
            "from langgraph.graph import (\n"
            "    END,\n"
            "    StateGraph as Builder,\n"
            ")\n"
            "from langgraph.types import Send; from langgraph.errors import GraphRecursionError\n"
            "from langchain_core.messages import AIMessage\n"
            "import operator\n"
            'DOC = "from langgraph.graph import START"  # from langgraph.graph import START\n'
            "def f():\n"
            "    from langgraph.config import get_stream_writer\n"
            "    return get_stream_writer\n"
        )
        switched = switch_imports(source)
        assert switched.splitlines() == [
            f"from {TARGET} import (",
            "    END,",
            "    StateGraph as Builder,",
            ")",
            f"from {TARGET} import Send; from {TARGET} import GraphRecursionError",
            "from langchain_core.messages import AIMessage",
            "import operator",
            'DOC = "from langgraph.graph import START"  # from langgraph.graph import START',
            "def f():",
            f"    from {TARGET} import get_stream_writer",
            "    return get_stream_writer",
        ]

    def test_import_statement_is_refused(self) -> None:
        """``import langgraph.graph`` has no one-line rewrite, so programs may not use it."""
        with pytest.raises(ValueError, match="no one-line rewrite"):
            switch_imports("import langgraph.graph\n")

    @pytest.mark.parametrize("name", program_names())
    def test_programs_differ_only_in_their_langgraph_import_lines(self, name: str) -> None:
        """Switched, a program keeps every other line, and imports nothing from langgraph."""
        source = program_source(name)
        switched = switch_imports(source)
        assert len(source.splitlines()) == len(switched.splitlines())
        pairs = zip(source.splitlines(), switched.splitlines(), strict=True)
        changed = [i for i, (a, b) in enumerate(pairs) if a != b]
        import_lines = {
            node.lineno - 1
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("langgraph")
        }
        assert set(changed) == import_lines
        assert not langgraph_imports(switched)


class TestPrograms:
    def test_every_program_says_what_it_covers(self) -> None:
        """A one-line summary heads each program (it names the golden record too)."""
        for name in program_names():
            assert program_info(name).summary, name

    def test_flat_namespace_has_no_collisions(self) -> None:
        """A name imported from two LangGraph modules is one object: one flat module holds it."""
        import importlib

        for name, modules in required_names().items():
            objects = {id(getattr(importlib.import_module(m), name)) for m in modules}
            assert len(objects) == 1, (name, modules)

    def test_migration_guide_lists_every_name_the_suite_imports(self) -> None:
        """docs/migrating.md has a row for each LangGraph name the programs use."""
        guide = (REPO / "docs" / "migrating.md").read_text(encoding="utf-8")
        missing = [name for name in required_names() if f"`{name}`" not in guide]
        assert not missing


class TestRecord:
    def test_tuples_sets_and_objects_encode_structurally(self) -> None:
        """Tuples stay distinct from lists; objects keep their class name and fields only."""
        from dataclasses import dataclass

        @dataclass
        class Point:
            x: int
            y: tuple[int, ...]

        assert encode({"p": Point(1, (2,)), "s": {3, 1}, 2: "k"}) == {
            "<dict>": [  # sorted by their JSON text
                ["p", {"<object>": "Point", "fields": {"x": 1, "y": {"<tuple>": [2]}}}],
                ["s", {"<set>": [1, 3]}],
                [2, "k"],
            ]
        }
        assert encode(["a"]) != encode(("a",))

    def test_unknown_values_are_refused(self) -> None:
        """A value with no rule is an error, never a silent repr."""
        with pytest.raises(TypeError, match="no encoding rule"):
            encode(object())

    def test_errors_keep_type_builtin_bases_and_user_message(self) -> None:
        """A user's error keeps its message; the bases say which ``except`` clauses catch it."""

        class Boom(KeyError):
            pass

        assert encode(Boom("x")) == {
            "<error>": "Boom",
            "bases": ["KeyError", "LookupError"],
            "message": "'x'",
        }
        from langgraph.errors import GraphRecursionError

        assert encode(GraphRecursionError("LangGraph's prose")) == {
            "<error>": "GraphRecursionError",
            "bases": ["RecursionError", "RuntimeError"],
        }

    def test_ids_are_numbered_by_first_appearance_and_keep_identity(self) -> None:
        """Equal ids get equal numbers, across entries and inside longer strings."""
        a, b = "1f0a0000-0000-6000-8000-000000000001", "0123456789abcdef0123456789abcdef"
        when = datetime.datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=datetime.UTC)
        rec = Recorder()
        rec("one", {"checkpoint_id": a, "ns": f"node:{a}", "created_at": when})
        rec("two", [b, a, {b: "keyed by id"}])
        assert normalise(rec.entries) == [
            ["one", {"checkpoint_id": "<id:1>", "created_at": "<ts>", "ns": "node:<id:1>"}],
            ["two", ["<id:2>", "<id:1>", {"<id:2>": "keyed by id"}]],
        ]

    def test_internal_channel_names_are_dropped(self) -> None:
        """Triggers and task paths (LangGraph's channel bookkeeping) are not compared."""
        rec = Recorder()
        rec(
            "m",
            {
                "langgraph_node": "a",
                "langgraph_triggers": ("branch:to:a",),
                "langgraph_path": ("__pregel_pull", "a"),
            },
        )
        assert normalise(rec.entries) == [["m", {"langgraph_node": "a"}]]

    def test_unordered_runs_keep_the_order_between_runs(self) -> None:
        """Only items with the same key, side by side, are compared as a set."""
        rec = Recorder()
        step = {"a": 1, "b": 1, "c": 2}.__getitem__
        rec("in order", ["b", "a", "c"], unordered=step)
        rec("swapped steps", ["c", "a", "b"], unordered=step)
        assert rec.entries == [["in order", ["a", "b", "c"]], ["swapped steps", ["c", "a", "b"]]]

    def test_a_label_is_recorded_once(self) -> None:
        """Two entries with one label would make the comparison ambiguous."""
        rec = Recorder()
        rec("x", 1)
        with pytest.raises(ValueError, match="used twice"):
            rec("x", 2)

    def test_differences_allow_extra_builtin_bases_only(self) -> None:
        """An error may derive from more builtins on the actual side, never from fewer."""
        want = [["e", {"raised": {"<error>": "NodeTimeoutError", "bases": []}}]]
        more = [["e", {"raised": {"<error>": "NodeTimeoutError", "bases": ["TimeoutError"]}}]]
        assert differences(want, more) == []
        assert differences(more, want) != []


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Install the stand-in as engine.langgraph for this test (in process and in phases)."""
    from tests.conformance import standin as module

    def install(**replace: Callable[[object], object]) -> None:
        monkeypatch.setitem(sys.modules, TARGET, module.build(replace))
        monkeypatch.setenv(runner.STANDIN_ENV, "1")

    return install


IN_PROCESS = [n for n in program_names() if not program_info(n).phases and not program_info(n).slow]


class TestEngineHalfAgainstStandin:
    @pytest.mark.parametrize("name", IN_PROCESS)
    def test_switched_program_records_what_langgraph_records(
        self,
        name: str,
        standin: Callable[..., None],
        langgraph_record: Callable[[str], list[Encoded]],
    ) -> None:
        """With LangGraph behind the switched imports, the two halves compare equal."""
        standin()
        assert differences(langgraph_record(name), record(name, "engine")) == []

    def test_phases_run_switched_in_new_processes(
        self, standin: Callable[..., None], langgraph_record: Callable[[str], list[Encoded]]
    ) -> None:
        """A program resumed in a new process compares equal through the switch too."""
        standin()
        name = "subgraph_interrupt_process"
        assert differences(langgraph_record(name), record(name, "engine")) == []

    def test_a_behaviour_difference_is_caught(
        self, standin: Callable[..., None], langgraph_record: Callable[[str], list[Encoded]]
    ) -> None:
        """A message reducer that ignores RemoveMessage shows up as a difference."""

        def ignoring_removals(real: Callable[..., object]) -> Callable[..., object]:
            def reducer(left: object, right: object) -> object:
                kept = [m for m in right if getattr(m, "type", "") != "remove"]  # type: ignore[attr-defined]
                return real(left, kept)

            return reducer

        standin(add_messages=ignoring_removals)
        found = differences(langgraph_record("chatbot_tools"), record("chatbot_tools", "engine"))
        assert any("entry 'invoke'" in problem for problem in found)

"""engine.langgraph has the names LangGraph apps import; a missing feature says so when used."""

from __future__ import annotations

import importlib
import typing

import pytest

import engine.langgraph as facade

#: What apps import, by the LangGraph module they import it from.
IMPORTED = {
    "langgraph.graph": ["StateGraph", "START", "END", "MessagesState", "add_messages"],
    "langgraph.types": [
        "Send", "Command", "interrupt", "RetryPolicy", "CachePolicy", "StreamWriter",
        "StreamMode", "All", "Durability", "Interrupt", "Overwrite",
    ],
    "langgraph.config": ["get_stream_writer", "get_config", "get_store"],
    "langgraph.errors": [
        "GraphRecursionError", "InvalidUpdateError", "GraphInterrupt", "NodeInterrupt",
        "ParentCommand", "EmptyInputError", "GraphBubbleUp",
    ],
    "langgraph.checkpoint.memory": ["InMemorySaver", "MemorySaver"],
    "langgraph.cache.memory": ["InMemoryCache"],
    "langgraph.runtime": ["Runtime", "get_runtime"],
}  # fmt: skip


@pytest.mark.parametrize("module", sorted(IMPORTED))
def test_every_name_an_app_imports_is_there(module: str) -> None:
    theirs = importlib.import_module(module)
    for name in IMPORTED[module]:
        assert hasattr(theirs, name), f"{module}.{name} is not LangGraph's"
        assert name in facade.__all__, f"engine.langgraph lacks {name} (from {module})"


@pytest.mark.parametrize("name", ["StreamMode", "All", "Durability"])
def test_literal_types_have_langgraphs_values(name: str) -> None:
    theirs = getattr(importlib.import_module("langgraph.types"), name)
    assert set(typing.get_args(getattr(facade, name))) == set(typing.get_args(theirs))


def test_error_classes_relate_as_langgraphs() -> None:
    import langgraph.errors as lg

    names = ["GraphBubbleUp", "GraphInterrupt", "NodeInterrupt", "ParentCommand"]
    for a in names:
        for b in names:
            expected = issubclass(getattr(lg, a), getattr(lg, b))
            assert issubclass(getattr(facade, a), getattr(facade, b)) == expected, (a, b)
    assert issubclass(facade.GraphRecursionError, RecursionError)


def test_command_is_the_engines_own_with_langgraphs_fields_and_repr() -> None:
    from typing import Literal

    from langgraph.types import Command as Theirs

    import engine

    assert facade.Command is engine.Command
    for kwargs in ({"goto": "x"}, {"update": {"a": 1}, "goto": ["x"]}, {"resume": 3}, {}):
        assert repr(facade.Command[Literal["x"]](**kwargs)) == repr(Theirs(**kwargs))
    assert facade.Command.PARENT == Theirs.PARENT


def test_interrupt_has_langgraphs_fields_and_repr() -> None:
    """Interrupt prints and compares as LangGraph's; interrupt() outside a run says so."""
    from langgraph.types import Interrupt as Theirs

    ours = facade.Interrupt(value={"q": 1}, id="abc")
    assert repr(ours) == repr(Theirs(value={"q": 1}, id="abc"))
    assert ours == facade.Interrupt(value={"q": 1}, id="abc")
    with pytest.raises(RuntimeError, match="outside of a run"):
        facade.interrupt("ask")


@pytest.mark.parametrize(
    ("use", "name"),
    [
        (lambda: facade.Overwrite([1]), "Overwrite"),
        (lambda: facade.get_store(), "get_store"),
    ],
)
def test_a_feature_not_built_yet_says_so_when_used(use: typing.Any, name: str) -> None:
    with pytest.raises(NotImplementedError, match=f"{name} is not supported by engine.langgraph"):
        use()

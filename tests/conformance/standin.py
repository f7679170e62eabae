"""A stand-in for engine.langgraph made of LangGraph's own objects, to test the runner itself.

Installed as ``engine.langgraph`` it turns the engine half into a run of
LangGraph through the switched imports, so whatever differs from the
LangGraph half is the harness's doing (a bad rewrite, a name collision in
the flat namespace, a value normalised differently when the module name
changes). Never used to judge the engine.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
from collections.abc import Callable
from typing import Any

from tests.conformance.runner import TARGET, required_names


def build(replace: dict[str, Callable[[Any], Any]] | None = None) -> types.ModuleType:
    """The stand-in module; ``replace`` maps a name to a function of LangGraph's object."""
    module = types.ModuleType(TARGET)
    module.__spec__ = importlib.machinery.ModuleSpec(TARGET, None)  # find_spec() sees it
    for name, sources in sorted(required_names().items()):
        # Any of the modules a name is imported from will do: test_runner checks
        # that they all hold the same object.
        obj = getattr(importlib.import_module(min(sources)), name)
        if replace and name in replace:
            obj = replace[name](obj)
        setattr(module, name, obj)
    return module


def install(replace: dict[str, Callable[[Any], Any]] | None = None) -> types.ModuleType:
    """Put the stand-in in ``sys.modules`` as engine.langgraph (the caller undoes it)."""
    module = build(replace)
    sys.modules[TARGET] = module
    return module

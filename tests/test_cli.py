"""The command line: its name, version, help and listing (``engine.cli``)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.cli import _parser, main


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """The CLI configures structlog for itself; give other tests theirs back."""
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def test_version(capsys: Any) -> None:
    """--version prints the engine's version and exits 0."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"engine {engine.__version__}"


@pytest.mark.parametrize(
    ("argv0", "usage"),
    [("engine", "usage: engine "), ("python -m engine", "usage: python -m engine ")],
)
def test_usage_names_the_command_that_was_typed(argv0: str, usage: str) -> None:
    """The console script says 'usage: engine', python -m engine its own name."""
    if argv0 == "engine":
        script = Path(sys.executable).parent / "engine"
        if not script.exists():
            pytest.skip("the engine console script is not installed in this environment")
        cmd = [str(script), "--help"]
    else:
        cmd = [sys.executable, "-m", "engine", "--help"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    assert out.startswith(usage), out


def test_every_argument_has_help() -> None:
    """Each option and positional of every command says what it is for."""
    parser = _parser("engine")
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            if not action.help:
                missing.append(f"{name} {action.dest}")
    assert missing == []


def test_run_lists_the_workloads(capsys: Any) -> None:
    """`run --list` names the built-in workloads and how to name your own graph."""
    assert main(["run", "--list"]) == 0
    out = capsys.readouterr().out
    assert "cpu_fanout" in out and "ceo_delegation" in out and "module:attr" in out


def test_run_without_a_target_is_a_usage_error(capsys: Any) -> None:
    assert main(["run"]) == 2
    assert "run needs a TARGET" in capsys.readouterr().err


def test_micro_times_a_figure_against_its_reference_and_keeps_the_json(tmp_path: Path) -> None:
    """``micro`` runs benchmarks/micro.py: each figure's ratio to its reference, every round
    kept in the JSON, with the target it is judged against."""
    out = tmp_path / "micro.json"
    assert main(["micro", "-k", "chain", "--rounds", "2", "--json", str(out)]) == 0
    import json

    doc = json.loads(out.read_text())
    chain = doc["figures"]["chain"]
    assert list(doc["figures"]) == ["chain"]
    assert len(chain["ratios"]) == 2 and all(r > 1.0 for r in chain["ratios"])
    assert set(chain["rounds"][0]) == {"engine", "reference"}
    assert chain["target"] == ["<=", 8.0]


def test_an_unknown_option_shows_the_commands_usage_and_what_was_meant(capsys: Any) -> None:
    """A mistyped option is the command's usage error (not the top level's), naming the
    option it probably meant."""
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--repeats", "1"], prog="python -m engine")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m engine bench")
    assert "unrecognized arguments: --repeats" in err and "did you mean --repeat?" in err

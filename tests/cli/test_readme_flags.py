"""The README documents every flag of every command, and its Layout lists every module."""

from __future__ import annotations

import argparse
import re

import pytest

from conftest import ROOT
from onnxsplit.cli.main import build_parser

README = (ROOT / "README.md").read_text()


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser by its words (``export triton``), nested ones included."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words = f"{prefix} {name}".strip()
                found[words] = sub
                found.update(_subcommands(sub, words))
    return found


def _commands() -> dict[str, argparse.ArgumentParser]:
    return _subcommands(build_parser())


def _section(command: str) -> str:
    """The README's section of ``onnxsplit COMMAND``, from its heading to the next heading."""
    found = re.search(rf"^### `onnxsplit {command}\b.*?(?=^##)", README, re.S | re.M)
    assert found, f"README has no section for `onnxsplit {command}`"
    return found.group(0)


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_flag_is_in_its_commands_section(command):
    section = _section(command)
    flags = [f for a in _commands()[command]._actions for f in a.option_strings if f not in ("-h", "--help")]
    missing = [f for f in flags if not re.search(rf"`{re.escape(f)}(?![\w-])", section)]
    assert not missing, f"`onnxsplit {command}` flags missing from its README table: {missing}"


def test_global_flags_are_documented():
    commands = README[README.index("## Commands"):README.index("### `onnxsplit split")]
    for flag in ("--version", "-v", "--verbose"):
        assert re.search(rf"`(onnxsplit )?{re.escape(flag)}(?![\w-])", commands), flag


def test_layout_lists_every_module():
    layout = re.search(r"^## Layout\n.*?```\n(.*?)```", README, re.S | re.M).group(1)
    stems = sorted({p.stem for p in (ROOT / "onnxsplit").rglob("*.py") if p.stem != "__init__"})
    missing = [s for s in stems if not re.search(rf"(?<![\w]){re.escape(s)}(?![\w])", layout)]
    assert not missing, f"README Layout does not mention: {missing}"


def test_readme_shows_the_fast_test_command():
    quick = README[README.index("## Quick start"):README.index("## Commands")]
    assert '.venv/bin/python -m pytest -q -m "not slow"' in quick

"""The README cannot drift from the CLI: its commands parse, its flag tables name real flags.

The configuration reference is copied from the programs' own help; this keeps every copied flag (and
every `fedmezo ...` example line) valid as the parsers change. `TBD` may appear only in the section
the lead fills with measured numbers.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from fedmezo.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _sections() -> dict[str, str]:
    parts = re.split(r"^(#{2,3} .+)$", README, flags=re.MULTILINE)
    return {title.strip("# ").strip(): body for title, body in zip(parts[1::2], parts[2::2])}


def _commands() -> list[list[str]]:
    """Every `fedmezo ...` invocation inside sh code blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            line = re.sub(r"^(\.venv/bin/)?", "", line)
            if line.startswith("fedmezo "):
                commands.append(shlex.split(line)[1:])
    return commands


def _option_strings(*path: str) -> set[str]:
    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return {opt for action in parser._actions for opt in action.option_strings}


def test_readme_has_fedmezo_commands() -> None:
    assert len(_commands()) >= 10


@pytest.mark.parametrize("argv", _commands(), ids=lambda argv: " ".join(argv)[:60])
def test_every_readme_command_parses(argv: list[str]) -> None:
    build_parser().parse_args(argv)  # SystemExit (a failed test) on any unknown flag or missing value


@pytest.mark.parametrize(
    ("section", "command"), [("`fedmezo server`", "server"), ("`fedmezo client`", "client")]
)
def test_configuration_tables_name_real_flags(section: str, command: str) -> None:
    body = _sections()[section]
    flags = re.findall(r"^\| `(--[a-z0-9-]+)`", body, flags=re.MULTILINE)
    assert len(flags) > 10
    assert set(flags) <= _option_strings(command)
    missing = _option_strings(command) - set(flags) - {"-h", "--help", "--config"}
    assert not missing, f"flags missing from the README's {command} table: {sorted(missing)}"


def test_tbd_only_in_measured_results() -> None:
    for title, body in _sections().items():
        if title != "Measured results":
            assert "TBD" not in body, title

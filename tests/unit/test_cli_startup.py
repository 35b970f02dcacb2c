"""``lake-mesh`` imports only what the command it runs uses.

Each check runs a fresh interpreter (``sys.modules`` of this process has everything already)
and asks it which modules a parse imported.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest

from lake_mesh_consul.cli import COMMANDS, build_parser

#: Third-party modules the CLI's parsing never needs.
HEAVY = ("requests", "urllib3", "consul", "tenacity", "pybreaker")


def _imported_after(code: str) -> list[str]:
    probe = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))\n"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    modules: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return modules


def _commands_of(module_name: str) -> set[str]:
    subparsers = argparse.ArgumentParser().add_subparsers()
    importlib.import_module(f"lake_mesh_consul.cli.{module_name}").register(subparsers)
    return set(subparsers.choices)


def test_the_command_table_matches_what_the_modules_register() -> None:
    registered = {
        command: module
        for module in sorted(set(COMMANDS.values()))
        for command in _commands_of(module)
    }
    assert registered == COMMANDS
    full = build_parser()  # every cmd_* module: none may be missing from COMMANDS
    with pytest.raises(SystemExit):
        full.parse_args(["no-such-command"])


@pytest.mark.parametrize("command", ["endpoints", "doctor", "config", "agent"])
def test_a_command_imports_only_its_own_module(command: str) -> None:
    modules = _imported_after(
        f"from lake_mesh_consul.cli import build_parser\nbuild_parser([{command!r}, '--help'])"
    )
    commands = [m for m in modules if m.startswith("lake_mesh_consul.cli.cmd_")]
    assert commands == [f"lake_mesh_consul.cli.{COMMANDS[command]}"]
    assert not [m for m in modules if m.split(".")[0] in HEAVY]


def test_version_imports_no_command_module() -> None:
    modules = _imported_after(
        "from lake_mesh_consul.cli import main\n"
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['--version']) == 0\n"
    )
    assert not [m for m in modules if m.startswith("lake_mesh_consul.cli.cmd_")]
    assert not [m for m in modules if m.split(".")[0] in HEAVY]


def test_help_and_unknown_commands_still_list_every_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from lake_mesh_consul.cli import main

    assert main(["--help"]) == 0
    listed = capsys.readouterr().out
    assert all(command in listed for command in COMMANDS)
    assert main(["no-such-command"]) == 2
    error = capsys.readouterr().err
    assert all(repr(command) in error for command in COMMANDS)

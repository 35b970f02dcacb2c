"""The ``lake-mesh`` command line, in the style of Consul's own CLI.

Subcommands live in modules named ``cmd_*.py`` in this package; each defines
``register(subparsers)`` which adds its parsers and sets ``func`` (a callable taking the
parsed namespace and an :class:`~lake_mesh_consul.cli._output.Output`, returning an exit
code). Conventions shared by every command:

* ``--json`` on every command that reads: one JSON document on stdout (``watch``-style
  commands print JSON lines);
* exit code 0 on success, 1 on a failure the user can fix (Consul unreachable, denied,
  not found, invalid input), 2 on bad usage (argparse);
* a user error is one clear line on stderr, never a traceback;
* an unknown service exits 1 on every command that answers about it, and a dead agent
  fails at once (:data:`~lake_mesh_consul.cli._preflight.UNKNOWN_SERVICE_RULE`, printed by
  ``--help``);
* a closed stdout (``lake-mesh ... | head``) ends the command quietly with exit 141
  (128 + SIGPIPE), what the shell reports for ``consul ... | head``.

Start-up cost: a command imports only its own module (:data:`COMMANDS` says which); every
``cmd_*`` module is imported only for ``--help``, no command, or a command that does not
exist (so that argparse lists every choice). ``--version`` imports none.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence

from lake_mesh_consul._version import __version__
from lake_mesh_consul.cli._output import EXIT_USAGE, Output
from lake_mesh_consul.cli._preflight import UNKNOWN_SERVICE_RULE

__all__ = ["COMMANDS", "EXIT_CLOSED_PIPE", "build_parser", "main"]

#: Exit status when stdout was closed by the reader (``| head``): 128 + SIGPIPE, as the
#: shell reports for ``consul``, which dies of SIGPIPE there.
EXIT_CLOSED_PIPE = 141

#: The module (in this package) that registers each command. tests/unit/test_cli_startup.py
#: checks it against what every ``cmd_*`` module really registers.
COMMANDS: dict[str, str] = {
    "agent": "cmd_agent",
    "call": "cmd_mesh",
    "checks": "cmd_register",
    "config": "cmd_config",
    "demo": "cmd_demo",
    "deregister": "cmd_register",
    "doctor": "cmd_doctor",
    "endpoints": "cmd_discovery",
    "explain": "cmd_mesh",
    "maint": "cmd_register",
    "register": "cmd_register",
    "status": "cmd_mesh",
    "version": "cmd_version",
    "watch": "cmd_discovery",
}


def _command_modules(argv: Sequence[str]) -> list[str] | None:
    """The ``cmd_*`` modules ``argv`` needs: [] for ``--version``, None for all of them."""
    for word in argv:
        if word in ("-h", "--help"):
            return None
        if word == "--version":
            return []
        if not word.startswith("-"):
            module = COMMANDS.get(word)
            return [module] if module else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser with the subcommands ``argv`` needs (all when None).

    Only the module of the command named in ``argv`` is imported; ``--help``, no command or
    an unknown one import every ``cmd_*`` module.
    """
    parser = argparse.ArgumentParser(
        prog="lake-mesh",
        description="A client-side service mesh on Consul: register, discover, balance, "
        "fail safely.",
        epilog=UNKNOWN_SERVICE_RULE,
    )
    parser.add_argument("--version", action="version", version=f"lake-mesh {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    names = None if argv is None else _command_modules(argv)
    if names is None:
        package = importlib.import_module(__name__)
        found = pkgutil.iter_modules(package.__path__)
        names = sorted(m.name for m in found if m.name.startswith("cmd_"))
    for name in names:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 1 failure, 2 usage)."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(arguments)
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    except BrokenPipeError:  # `lake-mesh --help | head -1`
        return EXIT_CLOSED_PIPE
    out = Output(json_mode=bool(getattr(args, "json", False)))
    try:
        code: int = args.func(args, out)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader of stdout went away: nothing left to tell it
        return EXIT_CLOSED_PIPE
    except Exception as exc:
        try:
            return out.fail(exc)
        except BrokenPipeError:
            return EXIT_CLOSED_PIPE
    return code


def _entry() -> None:  # pragma: no cover - console-script shim (run by tests as a process)
    code = main()
    if code == EXIT_CLOSED_PIPE:
        _detach_stdout()
    sys.exit(code)


def _detach_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush has nowhere to fail.

    Without it Python prints "Exception ignored ... BrokenPipeError" on its way out (the
    recipe in the ``signal`` module's documentation, "Note on SIGPIPE").
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass

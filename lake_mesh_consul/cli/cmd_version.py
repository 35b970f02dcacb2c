"""``lake-mesh version``: print the library version."""

from __future__ import annotations

import argparse
import platform
from typing import Any

from lake_mesh_consul._version import __version__
from lake_mesh_consul.cli._output import EXIT_OK, Output

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``version`` command."""
    parser = subparsers.add_parser("version", help="print the lake-mesh version")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, out: Output) -> int:
    """Print the version of lake-mesh and Python."""
    info = {"lake_mesh": __version__, "python": platform.python_version()}
    if out.json_mode:
        out.json(info)
    else:
        out.line(f"lake-mesh {info['lake_mesh']} (Python {info['python']})")
    return EXIT_OK

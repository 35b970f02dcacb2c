"""Output helpers shared by every ``lake-mesh`` command: tables, JSON, errors, exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from lake_mesh_consul.errors import ConfigurationError, MeshError

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "Output",
    "add_connection_args",
    "config_from_args",
]

#: Success.
EXIT_OK = 0
#: A failure the user can fix (unreachable agent, denied, not found, invalid input).
EXIT_FAILURE = 1
#: Bad usage (what argparse reports).
EXIT_USAGE = 2


def add_connection_args(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    """Add Consul's connection flags (``-http-addr`` style names kept as aliases)."""
    group = parser.add_argument_group("connection (defaults from CONSUL_* environment)")
    group.add_argument(
        "--http-addr",
        "-http-addr",
        dest="http_addr",
        metavar="ADDR",
        help="agent address (CONSUL_HTTP_ADDR), e.g. 127.0.0.1:8500",
    )
    group.add_argument(
        "--token-file",
        "-token-file",
        dest="token_file",
        metavar="FILE",
        help="file holding the ACL token (CONSUL_HTTP_TOKEN_FILE)",
    )
    group.add_argument(
        "--datacenter", "-datacenter", dest="datacenter", metavar="DC", help="datacenter to query"
    )
    group.add_argument(
        "--ca-file", "-ca-file", dest="ca_file", metavar="FILE", help="CA bundle (CONSUL_CACERT)"
    )
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON")


def config_from_args(args: argparse.Namespace) -> Any:
    """A MeshConfig from the environment, overridden by the connection flags given."""
    from lake_mesh_consul._core.config import MeshConfig

    overrides: dict[str, Any] = {}
    if getattr(args, "http_addr", None):
        overrides["address"] = args.http_addr
        if "://" not in args.http_addr:
            overrides["scheme"] = "http"
    for name in ("token_file", "datacenter", "ca_file"):
        if getattr(args, name, None):
            overrides[name] = getattr(args, name)
    return MeshConfig.from_env(**overrides)


class Output:
    """Where a command writes: human text or JSON on stdout, errors on stderr."""

    def __init__(
        self,
        *,
        json_mode: bool = False,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        self.json_mode = json_mode
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr

    def json(self, value: Any) -> None:
        """Print one JSON document (or one JSON line)."""
        print(json.dumps(value, default=str, sort_keys=True), file=self.stdout, flush=True)

    def line(self, text: str = "") -> None:
        """Print a line of human text."""
        print(text, file=self.stdout, flush=True)

    def info(self, text: str) -> None:
        """Print progress or a note on stderr (keeps stdout clean for JSON)."""
        print(text, file=self.stderr, flush=True)

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Print an aligned table."""
        materialized = [[str(c) for c in row] for row in rows]
        widths = [len(h) for h in headers]
        for row in materialized:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], len(cell))
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        self.line(fmt.format(*headers).rstrip())
        for row in materialized:
            self.line(fmt.format(*row).rstrip())

    def mapping(self, values: Mapping[str, Any]) -> None:
        """Print ``key: value`` lines, aligned."""
        width = max((len(k) for k in values), default=0)
        for key, value in values.items():
            self.line(f"{key + ':':<{width + 1}} {value}")

    def fail(self, exc: BaseException) -> int:
        """Report ``exc`` as one line and return the exit code for it.

        Our own errors and OS errors are user-fixable failures (exit 1) shown without a
        traceback; anything else is a bug, shown with its type so it can be reported.
        """
        if isinstance(exc, MeshError | OSError):
            message = str(exc)
        else:
            message = f"internal error ({type(exc).__name__}): {exc}; please report this"
        if self.json_mode:
            kind = "configuration" if isinstance(exc, ConfigurationError) else type(exc).__name__
            print(json.dumps({"error": message, "kind": kind}), file=self.stdout, flush=True)
        print(f"Error: {message}", file=self.stderr, flush=True)
        return EXIT_FAILURE

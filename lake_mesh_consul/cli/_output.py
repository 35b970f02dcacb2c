"""Helpers shared by every ``lake-mesh`` command: argument types, tables, JSON, errors, exit codes.

The argument types (:func:`positive_seconds`, :func:`positive_int`, :func:`non_negative_int`,
:func:`port_number`, :func:`number_in`) are the one place numeric flags are checked: a bad
value is a usage error (exit 2) with one line naming the flag, the same in every command.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO

from lake_mesh_consul.errors import ConfigurationError, MeshError

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "MAX_INDEX",
    "MAX_SECONDS",
    "Output",
    "add_connection_args",
    "config_from_args",
    "modify_index",
    "non_negative_int",
    "number_in",
    "port_number",
    "positive_int",
    "positive_seconds",
]

#: Success.
EXIT_OK = 0
#: A failure the user can fix (unreachable agent, denied, not found, invalid input).
EXIT_FAILURE = 1
#: Bad usage (what argparse reports).
EXIT_USAGE = 2
#: Longest duration a flag accepts (a week): beyond it, waits overflow the platform's time.
MAX_SECONDS = 7 * 24 * 3600.0


# --- argument types: raise ArgumentTypeError, which argparse turns into exit 2 -----------------


def positive_seconds(text: str) -> float:
    """A duration flag: seconds (``2.5``) or a Consul duration (``250ms``, ``1m30s``).

    Finite, greater than zero and at most :data:`MAX_SECONDS`; returns seconds.

    Raises:
        argparse.ArgumentTypeError: anything else (``abc``, ``0``, ``-1``, ``inf``, ``nan``).
    """
    from lake_mesh_consul._core.durations import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a positive number of seconds or a duration such as '10s' or '250ms', "
            f"got {text!r}"
        )
    if seconds > MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_SECONDS:g} seconds (one week), got {text!r}"
        )
    return seconds


def _whole(text: str) -> int | None:
    try:
        return int(text.strip(), 10)
    except ValueError:
        return None


def positive_int(text: str) -> int:
    """A count flag that must be at least 1.

    Raises:
        argparse.ArgumentTypeError: not a whole number, or below 1.
    """
    value = _whole(text)
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """A count or index flag that may be 0.

    Raises:
        argparse.ArgumentTypeError: not a whole number, or negative.
    """
    value = _whole(text)
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


#: Largest Consul index (``ModifyIndex``, ``--cas``): Consul parses it as a uint64.
MAX_INDEX = 2**64 - 1


def modify_index(text: str) -> int:
    """A Consul index flag (``--cas``): a whole number in 0..2**64-1 (Consul's uint64).

    Raises:
        argparse.ArgumentTypeError: anything else (Consul would answer HTTP 500 for it).
    """
    value = _whole(text)
    if value is None or not 0 <= value <= MAX_INDEX:
        raise argparse.ArgumentTypeError(
            f"expected a Consul index, a whole number in 0..2**64-1, got {text[:40]!r}"
        )
    return value


def port_number(text: str) -> int:
    """A TCP port flag: a whole number in 1..65535.

    Raises:
        argparse.ArgumentTypeError: anything else.
    """
    value = _whole(text)
    if value is None or not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 1..65535, got {text!r}")
    return value


def number_in(low: float, high: float) -> Callable[[str], float]:
    """A type for a finite number flag within ``low..high`` (both included).

    Example: ``parser.add_argument("--rate", type=number_in(1, 1000))``.
    """

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected a number within {low:g}..{high:g}, got {text!r}"
            )
        return value

    number.__name__ = f"number in {low:g}..{high:g}"
    return number


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

"""``lake-mesh demo``: the whole mesh working on this machine, in phases, in under 2 minutes.

Gets a local Consul (the agent at ``CONSUL_HTTP_ADDR``/``--http-addr`` when one answers,
else ``lake-mesh agent up``'s, stopped at the end only if the demo started it), starts three
HTTP instances of ``demo-web`` on loopback, registers them with health checks, and sends a
steady stream of requests through the mesh while one instance fails, one turns slow, the
strategy changes through a KV write and one instance is killed. Ends with a summary.

Exit codes: 0 when the caller saw no failure, 1 when it saw any (or the demo could not run),
2 for bad usage. ``--json`` prints the summary as one JSON document (the phases' log lines
then go to stderr).
"""

from __future__ import annotations

import argparse
from typing import Any

from lake_mesh_consul.cli._output import (
    EXIT_FAILURE,
    EXIT_OK,
    Output,
    number_in,
    positive_seconds,
)

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``demo`` command."""
    from lake_mesh_consul._demo import DEFAULT_DURATION, DEFAULT_RATE

    parser = subparsers.add_parser(
        "demo", help="watch the mesh balance, break, reload and drain on this machine"
    )
    parser.add_argument(
        "--duration",
        type=positive_seconds,
        default=DEFAULT_DURATION,
        metavar="S",
        help=f"seconds of traffic over the five phases (default {DEFAULT_DURATION:g}, min 10)",
    )
    parser.add_argument(
        "--no-live",
        dest="live",
        action="store_false",
        default=None,
        help="plain log lines instead of a table redrawn in place (for CI and logs)",
    )
    parser.add_argument(
        "--rate",
        type=number_in(1, 1000),
        default=DEFAULT_RATE,
        metavar="RPS",
        help=f"requests per second, 1..1000 (default {DEFAULT_RATE:g})",
    )
    parser.add_argument(
        "--http-addr",
        "-http-addr",
        dest="http_addr",
        metavar="ADDR",
        help="use the agent at ADDR (default CONSUL_HTTP_ADDR, else `lake-mesh agent up`)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace, out: Output) -> int:
    """Run the demo; exit 1 if the caller saw any failure."""
    from lake_mesh_consul import _demo

    stream = out.stderr if out.json_mode else out.stdout
    summary = _demo.run_demo(
        duration=args.duration,
        live=False if out.json_mode else args.live,
        address=args.http_addr,
        rate=args.rate,
        out=stream,
        err=out.stderr,
    )
    if out.json_mode:
        out.json(summary.to_dict())
    else:
        endpoints = sorted({e for p in summary.phases for e in p.served} | set(_names()))
        out.line(summary.render(endpoints))
    return EXIT_OK if summary.failures == 0 else EXIT_FAILURE


def _names() -> list[str]:
    from lake_mesh_consul._demo import SERVICE

    return [f"{SERVICE}-{i}" for i in (1, 2, 3)]

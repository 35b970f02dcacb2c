"""``lake-mesh endpoints`` and ``lake-mesh watch``: what discovery sees for a service.

* ``lake-mesh endpoints NAME [--tag T]... [--filter EXPR] [--dc DC] [--all] [--json]``
  prints the eligible instances (passing only unless ``--all``).
* ``lake-mesh watch NAME [--json] [--count N]`` prints one line per real change (the
  first snapshot included; JSON lines with ``--json``) until Ctrl-C or N lines.

Exit codes: 0 ok (a known service with no eligible instance included), 1 for a service
with no instance registered in Consul (``endpoints``; ``watch`` starts from the empty set
and reports the service when it appears), an unreachable agent (at once) or no answer in
time, 2 bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import time
from collections.abc import Iterator, Sequence
from typing import Any

from lake_mesh_consul.cli._output import (
    EXIT_OK,
    Output,
    add_connection_args,
    config_from_args,
    positive_int,
    positive_seconds,
)
from lake_mesh_consul.cli._preflight import reach_agent, require_service

__all__ = ["register"]


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the service name")
    parser.add_argument(
        "--tag", action="append", default=[], metavar="T", help="required tag (repeatable)"
    )
    parser.add_argument("--filter", metavar="EXPR", help="a Consul filter expression")
    parser.add_argument("--dc", metavar="DC", help="datacenter to query")
    parser.add_argument("--all", action="store_true", help="every instance, whatever its health")
    parser.add_argument(
        "--include-warning", action="store_true", help="keep warning instances as well"
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for Consul's first answer: seconds or 250ms, 1m (default 10)",
    )
    add_connection_args(parser)


def register(subparsers: Any) -> None:
    """Add the ``endpoints`` and ``watch`` commands."""
    endpoints = subparsers.add_parser(
        "endpoints", help="list the instances of a service that discovery would route to"
    )
    _add_filters(endpoints)
    endpoints.set_defaults(func=run_endpoints)
    watch = subparsers.add_parser(
        "watch", help="print a line each time the instances of a service change"
    )
    _add_filters(watch)
    watch.add_argument(
        "--count",
        type=positive_int,
        metavar="N",
        help="stop after N lines (the first one included)",
    )
    watch.set_defaults(func=run_watch)


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "tags": tuple(args.tag),
        "filter": args.filter,
        "dc": args.dc,
        "passing_only": not args.all,
        "include_warning": args.include_warning,
    }


def _endpoint_json(endpoint: Any) -> dict[str, Any]:
    from lake_mesh_consul._consul.discovery import endpoint_to_dict

    return endpoint_to_dict(endpoint)


@contextlib.contextmanager
def _discovery(args: argparse.Namespace, *, known: bool) -> Iterator[tuple[Any, Any]]:
    """``(client, discovery)`` once the agent answered (and, with ``known``, knows the name).

    Raises:
        InvalidSetting: the name is not a service name (before any request).
        ConsulUnavailable: the agent cannot be reached (at once, not after ``--timeout``).
        NoEndpointsAvailable: ``known`` and the service has no instance in Consul.
    """
    import random

    from lake_mesh_consul._consul.client import ConsulClient
    from lake_mesh_consul._consul.discovery import ServiceDiscovery
    from lake_mesh_consul._core.names import check_service_name

    check_service_name(args.name, "NAME")
    with ConsulClient(config_from_args(args)) as client:
        reach_agent(client)
        if known:
            require_service(client, args.name, datacenter=args.dc)
        # A private hub (own rng): the CLI's one process needs no sharing.
        with ServiceDiscovery(client, rng=random.Random(), timeout=args.timeout) as discovery:
            yield client, discovery


def run_endpoints(args: argparse.Namespace, out: Output) -> int:
    """Print the eligible instances of a service (exit 1 when Consul has none at all)."""
    with _discovery(args, known=False) as (client, discovery):
        snapshot = discovery.snapshot(args.name, **_filters(args))
        if not snapshot.endpoints:  # none eligible: is the service known at all?
            require_service(client, args.name, datacenter=args.dc)
    if out.json_mode:
        out.json([_endpoint_json(e) for e in snapshot.endpoints])
        return EXIT_OK
    if not snapshot.endpoints:
        out.info(f"no eligible instance of {args.name!r}" + ("" if args.all else " (try --all)"))
        return EXIT_OK
    out.table(
        ["ID", "ADDRESS", "HEALTH", "NODE", "ZONE", "TAGS"],
        [
            (e.id, e.host_port, e.health.value, e.node, e.zone or "-", ",".join(e.tags) or "-")
            for e in snapshot.endpoints
        ],
    )
    return EXIT_OK


def _line(name: str, snapshot: Sequence[Any], diff: Any) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    # An instance is <id>@<node>: the same service ID may be registered on many nodes.
    parts = [f"+{e.instance}" for e in diff.added]
    parts += [f"-{e.instance}" for e in diff.removed]
    parts += [f"~{e.instance}({e.health.value})" for e in diff.changed]
    members = " ".join(f"{e.instance}={e.host_port}({e.health.value})" for e in snapshot)
    return f"{stamp} {name}: {len(snapshot)} endpoint(s) [{' '.join(parts)}] {members}".rstrip()


def run_watch(args: argparse.Namespace, out: Output) -> int:
    """Print one line per change until Ctrl-C or ``--count`` lines."""
    from lake_mesh_consul._consul.discovery import EndpointDiff, with_diff

    changes: queue.Queue[tuple[tuple[Any, ...], EndpointDiff]] = queue.Queue()
    printed = 0
    # Not known=True: a watch reports a service appearing, so it may start before it exists.
    with _discovery(args, known=False) as (_client, discovery):
        filters = _filters(args)
        discovery.endpoints(args.name, **filters)  # DiscoveryTimeout -> exit 1
        discovery.watch(args.name, with_diff(lambda s, d: changes.put((s, d))), **filters)
        try:
            while args.count is None or printed < args.count:
                try:
                    snapshot, diff = changes.get(timeout=0.5)
                except queue.Empty:
                    continue
                if out.json_mode:
                    out.json(
                        {
                            "service": args.name,
                            "time": time.time(),
                            "endpoints": [_endpoint_json(e) for e in snapshot],
                            "added": [e.id for e in diff.added],
                            "removed": [e.id for e in diff.removed],
                            "changed": [e.id for e in diff.changed],
                        }
                    )
                else:
                    out.line(_line(args.name, snapshot, diff))
                printed += 1
        except KeyboardInterrupt:
            pass
    return EXIT_OK

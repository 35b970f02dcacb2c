"""``lake-mesh register``, ``deregister``, ``maint`` and ``checks``: a service's registration.

* ``lake-mesh register NAME --port P [--id ID] [--address A] [--tag T]... [--meta k=v]...
  [--http-check URL] [--tcp-check HOST:PORT] [--ttl 15s] [--interval 10s]
  [--deregister-after 1m]`` registers an instance with the local agent (idempotent: the
  same NAME, address and port give the same id).
* ``lake-mesh deregister ID`` removes it.
* ``lake-mesh maint ID on|off [--reason TEXT]`` turns maintenance mode on or off.
* ``lake-mesh checks NAME [--json]`` prints every check of every instance of NAME.

Every input is validated before anything is sent. Exit codes: 0 ok, 1 failure (agent
unreachable, denied, invalid input; a service with no instance in Consul for ``checks``,
an instance id the agent does not have for ``deregister`` and ``maint``; one line on
stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
from typing import Any

from lake_mesh_consul._core.names import check_service_id, check_service_name
from lake_mesh_consul.cli._output import (
    EXIT_OK,
    Output,
    add_connection_args,
    config_from_args,
)
from lake_mesh_consul.cli._preflight import require_instance, require_service
from lake_mesh_consul.errors import InvalidSetting

__all__ = ["register"]

#: Fields of ServiceMetadata / checks -> the flag a CLI user typed.
_FLAGS = {
    "name": "NAME",
    "port": "--port",
    "id": "--id",
    "address": "--address",
    "tags": "--tag",
    "meta": "--meta",
    "url": "--http-check",
    "interval": "--interval",
    "ttl": "--ttl",
    "deregister_critical_service_after": "--deregister-after",
}


def register(subparsers: Any) -> None:
    """Add the ``register``, ``deregister``, ``maint`` and ``checks`` commands."""
    reg = subparsers.add_parser("register", help="register a service instance with the agent")
    reg.add_argument("name", metavar="NAME", help="the service name")
    reg.add_argument("--port", type=int, required=True, metavar="P", help="the service port")
    reg.add_argument("--id", metavar="ID", help="instance id (default NAME-HOST-PORT)")
    reg.add_argument("--address", metavar="A", help="address to advertise (default: the node's)")
    reg.add_argument("--tag", action="append", default=[], metavar="T", help="tag (repeatable)")
    reg.add_argument(
        "--meta", action="append", default=[], metavar="K=V", help="meta pair (repeatable)"
    )
    reg.add_argument("--http-check", metavar="URL", help="add an HTTP check of URL")
    reg.add_argument("--tcp-check", metavar="HOST:PORT", help="add a TCP check of HOST:PORT")
    reg.add_argument("--ttl", metavar="DURATION", help="add a TTL check (e.g. 15s)")
    reg.add_argument(
        "--interval", default="10s", metavar="DURATION", help="HTTP/TCP check interval (10s)"
    )
    reg.add_argument(
        "--deregister-after",
        metavar="DURATION",
        help="remove the instance after its checks were critical this long (at least 1m)",
    )
    add_connection_args(reg)
    reg.set_defaults(func=run_register)

    dereg = subparsers.add_parser("deregister", help="deregister a service instance")
    dereg.add_argument("id", metavar="ID", help="the instance id")
    add_connection_args(dereg)
    dereg.set_defaults(func=run_deregister)

    maint = subparsers.add_parser("maint", help="turn maintenance mode of an instance on or off")
    maint.add_argument("id", metavar="ID", help="the instance id")
    maint.add_argument("state", choices=("on", "off"), help="on or off")
    maint.add_argument("--reason", default="", metavar="TEXT", help="shown in Consul")
    add_connection_args(maint)
    maint.set_defaults(func=run_maint)

    checks = subparsers.add_parser("checks", help="list the checks of every instance of a service")
    checks.add_argument("name", metavar="NAME", help="the service name")
    add_connection_args(checks)
    checks.set_defaults(func=run_checks)


def _registry(args: argparse.Namespace) -> Any:
    from lake_mesh_consul._consul.registry import ServiceRegistry

    # A command line answers at once: no startup retry, no background thread, no drain.
    return ServiceRegistry(
        config_from_args(args), fail_fast=True, drain_on_close=False, anti_entropy_interval=None
    )


def build_metadata(args: argparse.Namespace) -> Any:
    """The ServiceMetadata the ``register`` flags describe.

    Raises:
        InvalidSetting: naming the flag at fault.
    """
    from lake_mesh_consul._core.registration import (
        Check,
        HttpCheck,
        ServiceMetadata,
        TcpCheck,
        TtlCheck,
    )

    meta: dict[str, str] = {}
    for pair in args.meta:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidSetting("--meta", f"expected KEY=VALUE, got {pair!r}")
        meta[key] = value
    try:
        common: dict[str, Any] = {}
        if args.deregister_after is not None:
            common["deregister_critical_service_after"] = args.deregister_after
        checks: list[Check] = []
        if args.http_check:
            checks.append(HttpCheck(url=args.http_check, interval=args.interval, **common))
        if args.tcp_check:
            try:
                checks.append(TcpCheck(address=args.tcp_check, interval=args.interval, **common))
            except InvalidSetting as exc:
                if exc.setting == "address":
                    raise InvalidSetting("--tcp-check", exc.reason) from None
                raise
        if args.ttl:
            checks.append(TtlCheck(ttl=args.ttl, **common))
        if args.deregister_after is not None and not checks:
            raise InvalidSetting(
                "--deregister-after", "needs a check (--http-check, --tcp-check or --ttl)"
            )
        return ServiceMetadata(
            args.name,
            args.port,
            id=args.id or "",
            address=args.address,
            tags=tuple(args.tag),
            meta=meta,
            checks=tuple(checks),
        )
    except InvalidSetting as exc:
        base = exc.setting.split("[", 1)[0]
        flag = _FLAGS.get(base)
        if flag is None or flag == exc.setting:
            raise
        raise InvalidSetting(flag, exc.reason) from None


def run_register(args: argparse.Namespace, out: Output) -> int:
    """Validate, then register the instance; print its id and checks."""
    from lake_mesh_consul._consul.registry import encode_service

    metadata = build_metadata(args)  # every input checked before any network call
    with _registry(args) as registry:
        registry.register(metadata)
    if out.json_mode:
        body = encode_service(metadata)
        out.json(
            {
                "id": metadata.id,
                "name": metadata.name,
                "port": metadata.port,
                "address": metadata.address,
                "tags": list(metadata.tags),
                "meta": dict(metadata.meta),
                "checks": [
                    {"id": c["CheckID"], "name": c["Name"], "kind": k.kind}
                    for c, k in zip(body["Checks"], metadata.checks, strict=True)
                ],
            }
        )
    else:
        kinds = ", ".join(f"{c.kind} {c.id}" for c in metadata.checks) or "no checks"
        out.line(f"Registered service {metadata.name!r} as {metadata.id!r} ({kinds})")
    return EXIT_OK


def run_deregister(args: argparse.Namespace, out: Output) -> int:
    """Deregister the instance (exit 1 when the agent has no such instance)."""
    check_service_id(args.id, "ID")
    with _registry(args) as registry:
        require_instance(registry.client, args.id)
        registry.deregister(args.id)
    if out.json_mode:
        out.json({"id": args.id, "deregistered": True})
    else:
        out.line(f"Deregistered service {args.id!r}")
    return EXIT_OK


def run_maint(args: argparse.Namespace, out: Output) -> int:
    """Turn maintenance mode on or off."""
    enable = args.state == "on"
    check_service_id(args.id, "ID")
    with _registry(args) as registry:
        require_instance(registry.client, args.id)
        registry.maintenance(args.id, enable, args.reason)
    if out.json_mode:
        out.json({"id": args.id, "maintenance": enable, "reason": args.reason if enable else ""})
    else:
        out.line(f"Maintenance {'on' if enable else 'off'} for service {args.id!r}")
    return EXIT_OK


def run_checks(args: argparse.Namespace, out: Output) -> int:
    """Print every check of every instance of the service (exit 1 when it has none)."""
    check_service_name(args.name, "NAME")
    with _registry(args) as registry:
        require_service(registry.client, args.name)
        checks = registry.health_checks(args.name)
    if out.json_mode:
        out.json(checks)
        return EXIT_OK
    if not checks:
        out.info(f"service {args.name!r} has no checks")
        return EXIT_OK
    out.table(
        ["SERVICE ID", "CHECK ID", "TYPE", "STATUS", "NODE", "OUTPUT"],
        [
            (
                c["service_id"],
                c["check_id"],
                c["type"] or "-",
                c["status"],
                c["node"],
                _one_line(c["output"]),
            )
            for c in checks
        ],
    )
    return EXIT_OK


def _one_line(text: str, width: int = 60) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 3] + "..."

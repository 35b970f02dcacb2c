"""``lake-mesh doctor``: can this machine talk to Consul, and how?

Reports the agent address, the leader, Consul's version, the datacenter, whether ACLs are
enforced and whether the token works, whether TLS is in use, and connections: the agent's
per-client-IP connection limit (``limits.http_max_conns_per_client``, shared by every
process on this host; "unknown" when the agent does not show it), this process's
connections to the agent and the watch engine's budget per process. Exit 0 when everything
needed works, 1 when something does not (each problem is named), and against an agent that
cannot be reached, one line and exit 1.
"""

from __future__ import annotations

import argparse
from typing import Any

from lake_mesh_consul.cli._output import EXIT_FAILURE, EXIT_OK, Output, add_connection_args

__all__ = ["diagnose", "register"]


def register(subparsers: Any) -> None:
    """Add the ``doctor`` command."""
    parser = subparsers.add_parser(
        "doctor", help="check the connection to Consul: leader, version, ACLs, TLS"
    )
    add_connection_args(parser)
    parser.set_defaults(func=run)


def diagnose(client: Any) -> dict[str, Any]:
    """Gather the facts ``doctor`` prints from a ConsulClient.

    Returns a dict with ``address``, ``leader``, ``version``, ``datacenter``, ``node``,
    ``acl`` (``enabled``, ``default_policy``, ``token_set``, ``token_works``, ``token``),
    ``tls`` and ``problems`` (a list of strings; empty when all is well).

    Raises:
        ConsulUnavailable: the agent cannot be reached at all.
    """
    from lake_mesh_consul.errors import ConsulStatusError, PermissionDenied

    config = client.config
    problems: list[str] = []
    leader = client.leader()  # raises ConsulUnavailable for a dead address
    if not leader:
        problems.append("the cluster has no leader (servers down or still electing)")

    version = datacenter = node = default_policy = None
    acl_enabled: bool | None = None
    me: dict[str, Any] = {}
    try:
        me = client.agent_self()
        cfg = me.get("Config") or {}
        debug = me.get("DebugConfig") or {}
        version = cfg.get("Version")
        datacenter = cfg.get("Datacenter")
        node = cfg.get("NodeName")
        if "ACLsEnabled" in debug:
            acl_enabled = bool(debug["ACLsEnabled"])
        elif "ACLEnabled" in debug:
            acl_enabled = bool(debug["ACLEnabled"])
        default_policy = debug.get("ACLDefaultPolicy")
    except PermissionDenied:
        acl_enabled = True  # only an ACL system says no
        problems.append("the token may not read the agent (agent:read): version unknown")

    token_works: bool | None
    token_info: dict[str, Any] | None = None
    try:
        answer = client.request("GET", "/v1/acl/token/self", operation="read own ACL token")
        body = answer.json() or {}
        acl_enabled = True
        token_works = True
        token_info = {
            "accessor_id": body.get("AccessorID"),
            "description": body.get("Description"),
            "policies": sorted(p.get("Name", "") for p in body.get("Policies") or []),
            "local": body.get("Local"),
        }
    except PermissionDenied:
        acl_enabled = True
        token_works = False
    except ConsulStatusError as exc:
        if exc.code in (400, 401) and acl_enabled is not True:
            acl_enabled = False  # "ACL support disabled"
            token_works = None
        else:
            token_works = None
            problems.append(f"cannot tell whether the token works: HTTP {exc.code}")
    if acl_enabled and token_works is False:
        if config.token:
            problems.append("ACLs are enforced and the token was rejected (unknown or expired)")
        else:
            problems.append(
                "ACLs are enforced and no token is set (CONSUL_HTTP_TOKEN or "
                "CONSUL_HTTP_TOKEN_FILE)"
            )
    if datacenter is None:
        try:
            dcs = client.request(
                "GET", "/v1/catalog/datacenters", operation="list datacenters", dc=False
            ).json()
            datacenter = dcs[0] if isinstance(dcs, list) and len(dcs) == 1 else None
        except ConsulStatusError:
            pass
    return {
        "address": config.base_url,
        "leader": leader or None,
        "version": version,
        "datacenter": config.datacenter or datacenter,
        "node": node,
        "acl": {
            "enabled": acl_enabled,
            "default_policy": default_policy,
            "token_set": bool(config.token),
            "token_works": token_works,
            "token": token_info,
        },
        "tls": {
            "in_use": config.scheme == "https",
            "verify": config.verify if config.scheme == "https" else None,
            "ca": config.ca_file or config.ca_path,
            "client_certificate": bool(config.client_cert),
            "server_name": config.tls_server_name,
        },
        "connections": _connections(config, me),
        "problems": problems,
        "ok": not problems,
    }


def _connections(config: Any, agent_self: dict[str, Any]) -> dict[str, Any]:
    """The agent's per-client connection limit, ours, and the watch engine's budget."""
    from lake_mesh_consul._consul.agent_sockets import agent_connection_limit, agent_connections
    from lake_mesh_consul._consul.watch import DEFAULT_DEDICATED

    per_process = DEFAULT_DEDICATED + 2  # dedicated watches + the multiplexer's two loops
    return {
        "agent_limit_per_client": agent_connection_limit(agent_self),
        "this_process": agent_connections(config.host, config.port),
        "watch_budget": {
            "dedicated_watches": DEFAULT_DEDICATED,
            "threads": per_process,
            "connections": per_process,
        },
    }


def _yes_no(value: bool | None, unknown: str = "unknown") -> str:
    return unknown if value is None else ("yes" if value else "no")


def run(args: argparse.Namespace, out: Output) -> int:
    """Run the checks and print them; exit 1 when any problem was found."""
    from lake_mesh_consul._consul.client import ConsulClient
    from lake_mesh_consul.cli._output import config_from_args

    config = config_from_args(args)
    with ConsulClient(config) as client:
        report = diagnose(client)
    from lake_mesh_consul._consul.distribution import consul_client_report  # G: packaging

    consul_client = consul_client_report()
    report["consul_client"] = consul_client.to_json()
    if out.json_mode:
        out.json(report)
    else:
        acl = report["acl"]
        tls = report["tls"]
        token = acl["token"] or {}
        if not acl["token_set"]:
            auth_text = "none set" + (" (not needed)" if acl["enabled"] is False else "")
        else:
            auth_text = {True: "works", False: "REJECTED", None: "not checked"}[acl["token_works"]]
        if token.get("description") or token.get("policies"):
            auth_text += f" ({token.get('description') or ', '.join(token['policies'])})"
        if acl["enabled"] and not acl["token_set"] and acl["token_works"] is False:
            auth_text = "none set (anonymous denied)"
        conns = report["connections"]
        limit = conns["agent_limit_per_client"]
        budget = conns["watch_budget"]
        policy = (
            f", default {acl['default_policy']}" if acl["enabled"] and acl["default_policy"] else ""
        )
        out.mapping(
            {
                "agent": report["address"],
                "leader": report["leader"] or "NONE",
                "version": report["version"] or "unknown",
                "datacenter": report["datacenter"] or "unknown",
                "node": report["node"] or "unknown",
                "acls enforced": _yes_no(acl["enabled"]) + policy,
                "token": auth_text,
                "tls": (
                    f"yes (verify={'on' if tls['verify'] else 'off'}"
                    f"{', client cert' if tls['client_certificate'] else ''})"
                    if tls["in_use"]
                    else "no (http)"
                ),
                "consul client": consul_client.summary,
                "agent limit": (
                    "unknown"
                    if limit is None
                    else f"{limit} connections per client IP (limits.http_max_conns_per_client)"
                ),
                "connections": (
                    "unknown"
                    if conns["this_process"] is None
                    else f"{conns['this_process']} from this process"
                ),
                "watch budget": (
                    f"{budget['connections']} connections, {budget['threads']} threads per "
                    f"process, whatever the number of services ({budget['dedicated_watches']} "
                    "dedicated + 2 multiplexed)"
                ),
            }
        )
        for warning in consul_client.warnings:
            out.info(f"warning: {warning}")
        for problem in report["problems"]:
            out.info(f"problem: {problem}")
        out.line("ok" if report["ok"] else f"{len(report['problems'])} problem(s) found")
    return EXIT_OK if report["ok"] else EXIT_FAILURE

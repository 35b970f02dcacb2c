"""``lake-mesh agent up|down|status|provision``: a local Consul dev agent from nothing.

``up`` tries, in order: Docker with the official image, Docker with an image built FROM
scratch from Debian's consul package, and the package's binary run directly (see
:mod:`lake_mesh_consul.testing._provision`). It prints the ``CONSUL_HTTP_ADDR`` to export;
progress goes to stderr. It never starts a system daemon unless told: a Docker engine is
started only with ``--start-docker`` or ``LAKE_MESH_START_DOCKER=1``; without a running
engine, ``auto`` runs the binary and says so.
"""

from __future__ import annotations

import argparse
from typing import Any

from lake_mesh_consul.cli._output import EXIT_FAILURE, EXIT_OK, Output, port_number

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``agent`` command group."""
    parser = subparsers.add_parser(
        "agent", help="run a local Consul dev agent (Docker image or binary)"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    up = actions.add_parser("up", help="start a local dev agent and print CONSUL_HTTP_ADDR")
    up.add_argument(
        "--mode",
        choices=("auto", "container", "binary"),
        default="auto",
        help="container (Docker), binary, or auto: container where Docker runs (default)",
    )
    up.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    up.add_argument("--port", type=port_number, default=8500, help="HTTP port (default 8500)")
    up.add_argument(
        "--image", help="image to try first (default $CONSUL_IMAGE or the official image)"
    )
    _add_start_docker(up)
    up.add_argument("--json", action="store_true", help="print JSON")
    up.set_defaults(func=run_up)

    down = actions.add_parser("down", help="stop the agent `agent up` started")
    down.add_argument(
        "--keep-docker",
        action="store_true",
        help="leave a Docker engine lake-mesh started running",
    )
    down.add_argument("--json", action="store_true", help="print JSON")
    down.set_defaults(func=run_down)

    status = actions.add_parser("status", help="report the agent `agent up` started")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=run_status)

    provision = actions.add_parser(
        "provision",
        help="fetch what `agent up` needs (binary, image) without starting an agent",
    )
    _add_start_docker(provision)
    provision.add_argument("--json", action="store_true", help="print JSON")
    provision.set_defaults(func=run_provision)


def _add_start_docker(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--start-docker",
        dest="start_docker",
        action="store_true",
        default=None,
        help="start a Docker engine (dockerd, as root) when none runs; "
        "default: $LAKE_MESH_START_DOCKER, else never",
    )
    # The old opt-out, now the default: kept so that existing scripts keep working.
    parser.add_argument(
        "--no-start-docker", dest="start_docker", action="store_false", help=argparse.SUPPRESS
    )


def run_up(args: argparse.Namespace, out: Output) -> int:
    """Start (or find) the agent and print the address to export."""
    from lake_mesh_consul.testing import _provision

    state = _provision.agent_up(
        mode=args.mode,
        host=args.host,
        port=args.port,
        image=args.image,
        start_docker=_provision.start_docker_requested(args.start_docker),
        progress=out.info,
    )
    if out.json_mode:
        out.json({**state.to_json(), "running": True, "notes": state.notes})
        return EXIT_OK
    how = {
        "container": f"container {state.container} ({state.image})",
        "binary": f"binary {state.binary} (pid {state.pid}, log {state.log})",
        "external": "an agent lake-mesh did not start",
    }.get(state.mode, state.mode)
    note = f" [{', '.join(state.notes)}]" if state.notes else ""
    out.info(f"Consul agent up at {state.http_addr}: {how}{note}")
    out.line(f"export CONSUL_HTTP_ADDR={state.http_addr}")
    return EXIT_OK


def run_down(args: argparse.Namespace, out: Output) -> int:
    """Stop the agent and, unless told otherwise, a Docker engine lake-mesh started."""
    from lake_mesh_consul.testing import _provision

    state = _provision.agent_down(progress=out.info)
    docker_stopped = False
    if not args.keep_docker and _provision.docker_available() and not _running_containers():
        docker_stopped = _provision.stop_docker_engine(progress=out.info)
    if out.json_mode:
        out.json(
            {
                "stopped": state is not None,
                "mode": state.mode if state else None,
                "address": state.address if state else None,
                "docker_engine_stopped": docker_stopped,
            }
        )
    elif state is None:
        out.line("no agent started by lake-mesh is up")
    else:
        out.line(f"stopped the {state.mode} agent at {state.http_addr}")
    return EXIT_OK


def _running_containers() -> bool:
    import subprocess

    try:
        result = subprocess.run(
            ["docker", "ps", "-q"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return True  # unsure: leave the engine alone
    return result.returncode != 0 or bool(result.stdout.strip())


def run_status(args: argparse.Namespace, out: Output) -> int:
    """Report the agent; exit 1 when none runs."""
    from lake_mesh_consul.testing import _provision

    info = _provision.agent_status()
    running = bool(info.get("running"))
    if out.json_mode:
        out.json(info)
    elif info.get("mode") is None:
        out.line("no agent started by lake-mesh (run `lake-mesh agent up`)")
    else:
        out.mapping(
            {
                "status": "running" if running else "stopped",
                "mode": info.get("mode"),
                "address": info.get("consul_http_addr"),
                "leader": info.get("leader") or "-",
                "image": info.get("image") or "-",
                "pid": info.get("pid") or "-",
            }
        )
        if running:
            out.line(f"export CONSUL_HTTP_ADDR={info.get('consul_http_addr')}")
    return EXIT_OK if running else EXIT_FAILURE


def run_provision(args: argparse.Namespace, out: Output) -> int:
    """Fetch the binary and, where Docker runs, make an image available."""
    from lake_mesh_consul.testing import _provision

    binary = _provision.ensure_consul_binary(progress=out.info)
    image = None
    engine = (
        _provision.start_docker_engine(progress=out.info)
        if _provision.start_docker_requested(args.start_docker)
        else _provision.docker_available()
    )
    if engine:
        image = _provision.ensure_image(progress=out.info)
    info = {"binary": str(binary), "docker_engine": engine, "image": image}
    if out.json_mode:
        out.json(info)
    else:
        out.mapping({k: v if v is not None else "-" for k, v in info.items()})
    return EXIT_OK

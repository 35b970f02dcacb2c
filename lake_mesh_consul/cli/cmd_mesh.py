"""``lake-mesh call``, ``lake-mesh status`` and ``lake-mesh explain``: the mesh at work.

* ``lake-mesh call SERVICE PATH [--method M] [--data D] [--header 'K: V']... [--strategy S]
  [--json]`` sends one request through the mesh (discovery, balancing, breaker, retries)
  and prints the response and the endpoint that served it. Exit 0 for a response below 400,
  1 for an error response (it is printed anyway) or a failure to get one.
* ``lake-mesh status [SERVICE]... [--json]`` explains every service of the catalog (or
  those named): instances, health, breaker states, ejections, and where the configuration
  comes from (KV prefix, index). Breakers and ejections are this process's own view: a
  client-side mesh keeps them per process, so a fresh CLI starts with every breaker closed.
* ``lake-mesh explain SERVICE [--json]`` tells, for each instance, why it is or is not
  eligible right now.

Exit codes: 0 ok, 1 failure (unreachable agent, no endpoint, error response, a service
with no instance registered in Consul), 2 bad usage. The agent is asked first, so a dead one
fails at once with one line. Anything that waits shows a progress indicator on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any

from lake_mesh_consul.cli._output import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    Output,
    add_connection_args,
    config_from_args,
    positive_seconds,
)
from lake_mesh_consul.cli._preflight import reach_agent, require_service

__all__ = ["progress", "register"]

#: Seconds before a progress indicator shows (quick answers print nothing).
PROGRESS_DELAY = 0.3
#: Longest response body printed by ``call`` in human mode (JSON mode prints it whole).
MAX_BODY = 64 * 1024


@contextlib.contextmanager
def progress(out: Output, message: str) -> Iterator[None]:
    """Show ``message`` on stderr while the block runs longer than a moment.

    On a terminal a spinner turns on the same line and is erased at the end; otherwise one
    line ``message...`` is printed once. Nothing is printed for a block that ends within
    :data:`PROGRESS_DELAY` seconds.
    """
    stream = out.stderr
    tty = bool(getattr(stream, "isatty", lambda: False)())
    done = threading.Event()

    def spin() -> None:
        if done.wait(PROGRESS_DELAY):
            return
        if not tty:
            print(f"{message}...", file=stream, flush=True)
            return
        for frame in itertools.cycle("|/-\\"):
            stream.write(f"\r{message} {frame}")
            stream.flush()
            if done.wait(0.1):
                break
        stream.write("\r" + " " * (len(message) + 2) + "\r")
        stream.flush()

    thread = threading.Thread(target=spin, name="lake-mesh-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(1.0)


def register(subparsers: Any) -> None:
    """Add the ``call``, ``status`` and ``explain`` commands."""
    call = subparsers.add_parser("call", help="send one HTTP request to a service through the mesh")
    call.add_argument("service", metavar="SERVICE", help="the service to call")
    call.add_argument("path", metavar="PATH", help="the path, e.g. /api/items?limit=5")
    call.add_argument("--method", "-X", default="GET", help="HTTP method (default GET)")
    call.add_argument("--data", "-d", metavar="DATA", help="request body ('@FILE' reads a file)")
    call.add_argument(
        "--header",
        "-H",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="request header (repeatable)",
    )
    call.add_argument("--strategy", metavar="NAME", help="balancing strategy for this call")
    call.add_argument(
        "--timeout",
        type=positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="request timeout: seconds or 250ms, 1m (default 10)",
    )
    _add_common(call)
    call.set_defaults(func=run_call)

    status = subparsers.add_parser(
        "status", help="services, instances, health, breakers, ejections, config source"
    )
    status.add_argument(
        "services", nargs="*", metavar="SERVICE", help="services to show (default: all)"
    )
    _add_common(status)
    status.set_defaults(func=run_status)

    explain = subparsers.add_parser(
        "explain", help="why each instance of a service is or is not eligible now"
    )
    explain.add_argument("service", metavar="SERVICE", help="the service")
    _add_common(explain)
    explain.set_defaults(func=run_explain)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--discovery-timeout",
        type=positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for Consul's first answer: seconds or 250ms, 1m (default 10)",
    )
    add_connection_args(parser)


def _quiet_library_logs() -> None:
    """Keep the library's warnings (watch retries) off the terminal: one line per error."""
    logger = logging.getLogger("lake_mesh_consul")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())


def _preflight(args: argparse.Namespace, services: list[str], *, known: bool = True) -> None:
    """Refuse bad names, a dead agent and (``known``) unknown services before any wait.

    ``call`` passes ``known=False``: the mesh itself answers an unknown service with
    MeshNoEndpoints (exit 1, "none registered"), the error its callers already handle.

    Raises:
        InvalidSetting: a name is not a service name.
        ConsulUnavailable: the agent cannot be reached.
        NoEndpointsAvailable: a service has no instance registered in Consul.
    """
    from lake_mesh_consul._consul.client import ConsulClient
    from lake_mesh_consul._core.names import check_service_name

    for name in services:
        check_service_name(name, "SERVICE")
    with ConsulClient(config_from_args(args)) as client:
        reach_agent(client)
        for name in services if known else ():
            require_service(client, name)


def _mesh(args: argparse.Namespace) -> Any:
    from lake_mesh_consul.mesh import Mesh

    _quiet_library_logs()

    mesh = Mesh(
        config_from_args(args),
        discovery_timeout=args.discovery_timeout,
        drain_on_close=False,
    )
    try:
        mesh.start()
    except BaseException:
        mesh.close()
        raise
    return mesh


def _headers(values: list[str]) -> dict[str, str] | None:
    """``NAME: VALUE`` flags as a dict; ``None`` when one is malformed (a usage error).

    A CR, LF or other control character would split or corrupt the request's header block
    (requests refuses it only when sending, after discovery): refused here, before anything.
    """
    from lake_mesh_consul._core.names import check_text
    from lake_mesh_consul.errors import InvalidSetting

    headers: dict[str, str] = {}
    for value in values:
        name, sep, text = value.partition(":")
        if not sep or not name.strip():
            return None
        try:
            check_text(value, "--header", allow="\t")
        except InvalidSetting:
            return None
        headers[name.strip()] = text.strip()
    return headers


def _body(data: str | None) -> bytes | None:
    if data is None:
        return None
    if data.startswith("@"):
        if data == "@-":
            return sys.stdin.buffer.read()
        with open(data[1:], "rb") as handle:
            return handle.read()
    return data.encode()


def run_call(args: argparse.Namespace, out: Output) -> int:
    """Send one request through the mesh and print the response and its endpoint."""
    import time

    from lake_mesh_consul.http import endpoint_of

    headers = _headers(args.header)
    if headers is None:
        out.info("Error: --header takes 'NAME: VALUE' (no control characters)")
        return EXIT_USAGE
    path = args.path if args.path.startswith("/") else "/" + args.path
    body = _body(args.data)
    if args.strategy:  # refused before the mesh starts: one line, not after a progress line
        from lake_mesh_consul._core.config_schema import FIELDS_BY_PATH, check_value
        from lake_mesh_consul.errors import ConfigValidationError, InvalidSetting

        try:
            check_value(FIELDS_BY_PATH["strategy"], args.strategy)
        except ConfigValidationError as exc:
            raise InvalidSetting("--strategy", exc.reason) from None
    _preflight(args, [args.service], known=False)
    with progress(out, f"calling {args.service} through the mesh"):
        mesh = _mesh(args)
        try:
            if args.strategy:
                mesh.set_strategy(args.service, args.strategy)
            with mesh.session() as session:
                started = time.perf_counter()
                response = session.request(
                    args.method.upper(),
                    f"http://{args.service}{path}",
                    data=body,
                    headers=headers,
                    timeout=args.timeout,
                )
                elapsed = time.perf_counter() - started
            endpoint = endpoint_of(response)
        finally:
            mesh.close()
    code = EXIT_OK if response.status_code < 400 else EXIT_FAILURE
    if out.json_mode:
        out.json(
            {
                "service": args.service,
                "method": args.method.upper(),
                "path": path,
                "status": response.status_code,
                "reason": response.reason,
                "endpoint": (
                    {"id": endpoint.id, "node": endpoint.node, "address": endpoint.host_port}
                    if endpoint
                    else None
                ),
                "headers": dict(response.headers),
                "body": response.text,
                "elapsed": elapsed,
            }
        )
        return code
    served = f"{endpoint.instance} ({endpoint.host_port})" if endpoint else "-"
    out.info(f"{response.status_code} {response.reason} from {served} in {elapsed * 1000:.1f} ms")
    text = response.text
    out.line(text[:MAX_BODY] + ("..." if len(text) > MAX_BODY else ""))
    return code


def run_status(args: argparse.Namespace, out: Output) -> int:
    """Explain every service (or the ones named) and the configuration source."""
    _preflight(args, list(args.services))
    with progress(out, "reading the catalog and each service"):
        mesh = _mesh(args)
        try:
            status = mesh.status(args.services or None)
        finally:
            mesh.close()
    if out.json_mode:
        out.json(status.to_dict())
    else:
        out.line(str(status))
    return EXIT_OK


def run_explain(args: argparse.Namespace, out: Output) -> int:
    """Explain why each instance of a service is or is not eligible."""
    _preflight(args, [args.service])
    with progress(out, f"asking Consul about {args.service}"):
        mesh = _mesh(args)
        try:
            explanation = mesh.explain(args.service)
        finally:
            mesh.close()
    if explanation.registered == 0:
        from lake_mesh_consul.errors import NoEndpointsAvailable

        raise NoEndpointsAvailable(args.service, "no instance registered in Consul")
    if out.json_mode:
        out.json(explanation.to_dict())
    else:
        out.line(str(explanation))
    return EXIT_OK

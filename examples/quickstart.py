"""The README's quickstart as a service: register, explain, serve until SIGTERM.

Run a local agent first (``lake-mesh agent up``, then export the CONSUL_HTTP_ADDR it prints),
then::

    python examples/quickstart.py --port 8080 &
    kill -TERM %1      # what systemd, Docker and Kubernetes send

Nothing here handles signals: the Mesh that registered ``orders`` drains it on SIGTERM by
default (maintenance on, ``drain_grace`` seconds for callers to notice, deregistered), stops
every thread, then exits with status 143. ``Mesh.from_env(drain_on_sigterm=False)`` opts out.
"""

from __future__ import annotations

import argparse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lake_mesh_consul import ServiceMetadata
from lake_mesh_consul.checks import HttpCheck
from lake_mesh_consul.mesh import Mesh


class Orders(BaseHTTPRequestHandler):
    """The service itself: ``/health`` for Consul's check, ``/`` for callers."""

    def do_GET(self) -> None:
        body = b"ok\n" if self.path == "/health" else b"orders\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="orders", help="the service name")
    parser.add_argument("--port", type=int, default=8080, help="the port to serve on")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Orders)

    with Mesh.from_env() as mesh:  # CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, ... as Consul's CLI
        mesh.register(
            ServiceMetadata(
                args.name,
                args.port,
                address="127.0.0.1",
                checks=(HttpCheck(url=f"http://127.0.0.1:{args.port}/health", interval="5s"),),
            )
        )
        print(f"registered {args.name} on 127.0.0.1:{args.port}", flush=True)
        print(mesh.explain(args.name), flush=True)  # every instance, and why it is (not) eligible
        server.serve_forever()  # until SIGTERM: drained and deregistered, then exit 143
    # leaving the block (an exception, or SIGTERM): maintenance, grace, deregistered


if __name__ == "__main__":
    main()

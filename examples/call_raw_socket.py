"""``mesh.call`` with a client that is not HTTP: a line protocol over a raw TCP socket.

Run a local agent first (``lake-mesh agent up``, then export CONSUL_HTTP_ADDR), then::

    python examples/call_raw_socket.py

Two instances of an ``echo`` service (a TCP server answering each line in upper case) are
registered with TCP checks. ``mesh.call("echo", fn, idempotent=True)`` picks an instance,
passes its breaker, runs ``fn(endpoint)`` and retries elsewhere on a connection failure.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time

from lake_mesh_consul import ServiceEndpoint, ServiceMetadata
from lake_mesh_consul.checks import TcpCheck
from lake_mesh_consul.mesh import Mesh


class Upper(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline()
        self.wfile.write(line.upper())


def echo_server() -> socketserver.ThreadingTCPServer:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Upper)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def shout(endpoint: ServiceEndpoint, text: str) -> str:
    """One request: send a line, read the answer."""
    with socket.create_connection((endpoint.address, endpoint.port), timeout=2) as sock:
        sock.sendall(text.encode() + b"\n")
        return sock.makefile().readline().strip() + f"  (from {endpoint.id})"


def main() -> None:
    servers = [echo_server(), echo_server()]
    with Mesh.from_env(drain_grace=0.5) as mesh:
        for i, server in enumerate(servers):
            port = server.server_address[1]
            mesh.register(
                ServiceMetadata("example-echo", port, id=f"example-echo-{i}", address="127.0.0.1"),
                TcpCheck(address=f"127.0.0.1:{port}", interval=1.0),
            )
        deadline = time.monotonic() + 15
        while mesh.explain("example-echo").eligible < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        for word in ("hello", "mesh", "over", "tcp"):
            print(mesh.call("example-echo", lambda ep, w=word: shout(ep, w), idempotent=True))
        servers[0].shutdown()
        servers[0].server_close()  # connections are refused now: retried on the other one
        for word in ("still", "answering"):
            print(mesh.call("example-echo", lambda ep, w=word: shout(ep, w), idempotent=True))
    servers[1].shutdown()


if __name__ == "__main__":
    main()

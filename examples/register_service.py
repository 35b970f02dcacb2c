"""Register a small HTTP service with Consul, with an HTTP check and a TTL check.

Run a local agent first (``lake-mesh agent up``, then export the CONSUL_HTTP_ADDR it prints),
then::

    python examples/register_service.py --seconds 30

The service answers on a free loopback port. Its HTTP check is run by the agent every
second; its TTL check is driven by a function of ours (here: "is the disk writable").
Leaving the ``with`` block drains (maintenance, grace) and deregisters it.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lake_mesh_consul import HealthStatus, ServiceMetadata
from lake_mesh_consul.checks import HttpCheck, TtlCheck
from lake_mesh_consul.mesh import Mesh


class Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok" if self.path == "/health" else b"hello from the example\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def disk_writable() -> tuple[HealthStatus, str]:
    with tempfile.TemporaryFile() as handle:
        handle.write(b"x")
    return HealthStatus.PASSING, "disk writable"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="how long to stay registered")
    args = parser.parse_args()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()

    with Mesh.from_env(drain_grace=0.5) as mesh:
        health = mesh.register(
            ServiceMetadata("example-hello", port, address="127.0.0.1", tags=("example",)),
            HttpCheck(url=f"http://127.0.0.1:{port}/health", interval=1.0, timeout=1.0),
            TtlCheck(id="example-hello-disk", ttl=15.0),
            functions=[disk_writable],
        )
        print(f"registered example-hello on 127.0.0.1:{port}; waiting for it to pass")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            explained = mesh.explain("example-hello")
            if explained.eligible:
                break
            time.sleep(0.2)
        print(explained)
        ours = health.snapshot().checks["example-hello-disk"]
        print(f"our TTL check: {ours.status.value} ({ours.last_output})")
        time.sleep(args.seconds)
    server.shutdown()
    print("drained and deregistered")


if __name__ == "__main__":
    main()

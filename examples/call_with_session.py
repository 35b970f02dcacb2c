"""Call another service through the mesh with requests: ``http://greeter/...``.

Run a local agent first (``lake-mesh agent up``, then export CONSUL_HTTP_ADDR), then::

    python examples/call_with_session.py

For a self-contained example it starts two instances of a ``greeter`` service itself and
registers them; in real life they are other processes. The session resolves ``greeter``
through discovery, balances, retries idempotent requests on another instance, and its
errors are requests' errors too.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from lake_mesh_consul import ServiceMetadata
from lake_mesh_consul.checks import HttpCheck
from lake_mesh_consul.http import endpoint_of
from lake_mesh_consul.mesh import Mesh


def greeter(name: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"hello from {name} (Host: {self.headers['Host']})\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    servers = [greeter("greeter-a"), greeter("greeter-b")]
    with Mesh.from_env(drain_grace=0.5) as mesh:
        for server, sid in zip(servers, ("greeter-a", "greeter-b"), strict=True):
            port = server.server_address[1]
            mesh.register(
                ServiceMetadata("greeter", port, id=sid, address="127.0.0.1"),
                HttpCheck(url=f"http://127.0.0.1:{port}/", interval=1.0),
            )
        deadline = time.monotonic() + 15
        while mesh.explain("greeter").eligible < 2 and time.monotonic() < deadline:
            time.sleep(0.2)

        with mesh.session() as http:
            for _ in range(4):
                response = http.get("http://greeter/hello", timeout=2)
                print(response.status_code, endpoint_of(response), response.text.strip())
            servers[0].shutdown()  # one instance dies: requests keep succeeding
            servers[0].server_close()
            for _ in range(4):
                response = http.get("http://greeter.service.consul/hello", timeout=2)
                print(response.status_code, endpoint_of(response), response.text.strip())
            try:
                http.get("http://nobody-is-called-this/", timeout=2)
            except requests.RequestException as exc:  # the mesh's errors are requests' too
                print("caught:", type(exc).__name__, exc)
        print(mesh.explain("greeter"))
    servers[1].shutdown()


if __name__ == "__main__":
    main()

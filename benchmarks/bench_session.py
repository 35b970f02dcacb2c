"""The mesh session's overhead: requests through MeshSession vs a plain requests.Session.

Both send ``GET /`` with ``timeout=5`` to the same local HTTP server (a separate process,
HTTP/1.1 keep-alive, a tiny body), in alternating rounds of the same run, best of several
rounds. The mesh path adds: routing the
URL, the balancer's pick, the breaker permit, the retry path's bookkeeping (budget deposit,
outcome classification), the detector's record and the latency stats. The server is
registered in a real Consul agent (``ctx.consul_address()``) and discovered through it.

Rows:

* ``session.plain``: seconds per request with ``requests.Session``.
* ``session.mesh``: seconds per request with ``MeshSession`` (ratio to plain; target
  <= 1.05).
* ``session.overhead``: mesh minus plain, in microseconds (target <= 30 us); rounds of
  the two alternate so that drift on a shared machine cancels out.
* ``session.mesh_layer``: the mesh layer alone (``MeshAdapter.send`` with an inner adapter
  that answers at once: routing, pick, breaker, retry bookkeeping, detector, stats), in
  microseconds, the part of the overhead that is ours and not noise.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import requests
import requests.adapters
from _common import Context, Row, compare

from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.registration import ServiceMetadata, TtlCheck
from lake_mesh_consul.mesh import Mesh

#: The server, run in its own process so that it does not compete for our GIL.
SERVER = """
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a pooled client expects
    wbufsize = -1  # headers and body in one segment (no 40 ms delayed-ACK stall)
    disable_nagle_algorithm = True

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def _start_server() -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.strip().isdigit():
        process.kill()
        raise RuntimeError("the benchmark's HTTP server did not start")
    return process, int(line)


#: Both sides send with this timeout, as production clients should (a timeout changes how
#: urllib3 reads the socket, so giving it to one side only would skew the comparison).
TIMEOUT = 5.0


def _timed(session: requests.Session, url: str, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        session.get(url, timeout=TIMEOUT)
    return (time.perf_counter() - start) / n


def _interleaved(  # noqa: PLR0917 - two sessions and their URLs
    plain: requests.Session,
    plain_url: str,
    meshed: requests.Session,
    mesh_url: str,
    n: int,
    rounds: int,
) -> tuple[float, float]:
    """Best-of-``rounds`` seconds per request of each, rounds alternating (drift cancels)."""
    for _ in range(50):  # warm both pools
        plain.get(plain_url)
        meshed.get(mesh_url)
    best_plain = best_mesh = float("inf")
    for _ in range(rounds):
        best_plain = min(best_plain, _timed(plain, plain_url, n))
        best_mesh = min(best_mesh, _timed(meshed, mesh_url, n))
    return best_plain, best_mesh


class _Canned(requests.adapters.HTTPAdapter):
    """An inner adapter that answers at once: isolates the mesh layer's own cost."""

    def send(self, request: Any, *args: Any, **kwargs: Any) -> requests.Response:
        response = requests.Response()
        response.status_code = 200
        response._content = b"ok"
        response.request = request
        return response


def _adapter_cost(mesh: Mesh, name: str, n: int, rounds: int) -> float:
    """Seconds per MeshAdapter.send with a canned inner adapter (no network)."""
    from lake_mesh_consul.http import MeshAdapter

    adapter = MeshAdapter(mesh, inner=_Canned())
    request = requests.Request("GET", f"http://{name}/").prepare()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            adapter.send(request, timeout=5)
        best = min(best, (time.perf_counter() - start) / n)
    return best


def run(ctx: Context) -> Iterator[Row]:
    n, rounds = (300, 3) if ctx.quick else (2000, 5)
    process, port = _start_server()
    name = f"bench-session-{uuid.uuid4().hex[:8]}"
    config = MeshConfig(address=ctx.consul_address(), kv_prefix=name)
    try:
        with Mesh(config, drain_grace=0.0) as mesh, mesh.session() as meshed:
            mesh.register(
                ServiceMetadata(name, port, id=name, address="127.0.0.1"),
                TtlCheck(ttl=600.0, status=HealthStatus.PASSING),
            )
            deadline = time.monotonic() + 10
            while mesh.balancer(name).stats().eligible < 1:
                if time.monotonic() > deadline:
                    raise RuntimeError("the benchmark service never became eligible")
                time.sleep(0.05)
            with requests.Session() as plain:
                plain_s, mesh_s = _interleaved(
                    plain, f"http://127.0.0.1:{port}/", meshed, f"http://{name}/", n, rounds
                )
            layer_s = _adapter_cost(mesh, name, n * 5, rounds)
            yield Row("session.plain", plain_s * 1e6, "us/req")
            yield compare("session.mesh", mesh_s * 1e6, plain_s * 1e6, "us/req", target=1.05)
            yield Row("session.overhead", (mesh_s - plain_s) * 1e6, "us/req", extra={"target": 30})
            yield Row("session.mesh_layer", layer_s * 1e6, "us/req", extra={"target": 30})
    finally:
        process.kill()
        process.wait(5)

"""Availability after a blip: how long callers keep failing once the backends are healthy.

Four real backends on loopback (one separate process, four HTTP servers) are registered in
the agent; two caller threads send GETs through ``mesh.session()`` with the default
settings. Then every backend answers 503 for one second (issue 13's blip) and recovers.

* ``blip.failure_after_recovery``: seconds from the backends' recovery to the last request a
  caller saw fail (0 when none failed after recovery; target <= 2 s). Observation stops 20 s
  after recovery (3 s in the quick run): a figure at that cap is censored (``censored``).
* ``blip.failed_after_recovery``: requests that failed after recovery, of ``n`` sent then;
  ``blip.failed_during_blip``: those that failed during the blip (that it was felt at all).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import requests
from _common import Context, Row, quiet_mesh_options

from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul.mesh import Mesh

BACKENDS = 4
BLIP_SECONDS = 1.0

#: Four HTTP servers in one process; GET /__blip?s=1 makes all of them answer 503 for 1 s.
SERVER = r"""
import sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

failing_until = [0.0]

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1
    disable_nagle_algorithm = True

    def do_GET(self):
        if self.path.startswith("/__blip"):
            failing_until[0] = time.monotonic() + float(self.path.split("s=", 1)[1])
            code = 200
        else:
            code = 503 if time.monotonic() < failing_until[0] else 200
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass

servers = []
for _ in range(int(sys.argv[1])):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    servers.append(server)
print(" ".join(str(s.server_address[1]) for s in servers), flush=True)
sys.stdin.read()  # until the benchmark closes our stdin
"""


def _callers(session_get: object, url: str, stop: threading.Event) -> list[tuple[float, bool]]:
    """Run two caller threads until ``stop``; every request's (monotonic end, ok)."""
    results: list[tuple[float, bool]] = []
    lock = threading.Lock()

    def loop() -> None:
        while not stop.is_set():
            try:
                ok = session_get(url, timeout=2).status_code < 500  # type: ignore[operator]
            except Exception:
                ok = False
            with lock:
                results.append((time.monotonic(), ok))
            time.sleep(0.01)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(5)
    return results


def run(ctx: Context) -> Iterator[Row]:
    cap = 3.0 if ctx.quick else 20.0
    address = ctx.consul_address()
    name = f"bench-blip-{uuid.uuid4().hex[:6]}"
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(BACKENDS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    assert server.stdin is not None
    ports = [int(p) for p in server.stdout.readline().split()]
    http = requests.Session()
    http.trust_env = False
    try:
        for i, port in enumerate(ports):
            body = {"Name": name, "ID": f"{name}-{i}", "Port": port, "Address": "127.0.0.1"}
            http.put(f"http://{address}/v1/agent/service/register", json=body, timeout=10)
        with Mesh(MeshConfig(address=address), **quiet_mesh_options()) as mesh:
            deadline = time.monotonic() + 10
            while len(mesh.balancer(name).endpoints) < BACKENDS:
                if time.monotonic() > deadline:
                    raise RuntimeError("the mesh never saw the backends")
                time.sleep(0.05)
            session = mesh.session()
            stop = threading.Event()
            box: list[list[tuple[float, bool]]] = []
            runner = threading.Thread(
                target=lambda: box.append(_callers(session.get, f"http://{name}/", stop)),
                daemon=True,
            )
            runner.start()
            time.sleep(1.0)  # steady traffic first
            http.get(f"http://127.0.0.1:{ports[0]}/__blip?s={BLIP_SECONDS}", timeout=5)
            recovered = time.monotonic() + BLIP_SECONDS
            time.sleep(BLIP_SECONDS + cap)
            stop.set()
            runner.join(10)
            session.close()
    finally:
        for i in range(len(ports)):
            http.put(f"http://{address}/v1/agent/service/deregister/{name}-{i}", timeout=10)
        http.close()
        server.stdin.close()
        server.wait(5)
    results = box[0] if box else []
    during = [ok for t, ok in results if recovered - BLIP_SECONDS <= t < recovered]
    after = [(t, ok) for t, ok in results if t >= recovered]
    failed = [t for t, ok in after if not ok]
    outage = (max(failed) - recovered) if failed else 0.0
    yield Row(
        "blip.failure_after_recovery",
        outage,
        "s",
        n=len(after),
        extra={"censored": outage >= cap - 0.5, "cap_s": cap, "target_s": 2.0},
    )
    yield Row("blip.failed_after_recovery", len(failed), "req", n=len(after))
    # That the blip was felt at all (retries may hide part of it from callers).
    yield Row("blip.failed_during_blip", during.count(False), "req", n=len(during))

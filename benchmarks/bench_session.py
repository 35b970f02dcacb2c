"""The mesh session's overhead: requests through MeshSession vs a plain requests.Session.

Both send ``GET /`` with ``timeout=5`` to the same local HTTP server (a separate process,
HTTP/1.1 keep-alive, a tiny body) over warm pooled connections. The mesh path adds: routing
the URL, the balancer's pick, the breaker permit, the retry path's bookkeeping (budget
deposit, outcome classification), the detector's record and the latency stats. The server
is registered in a real Consul agent (``ctx.consul_address()``) and discovered through it.

Fairness: both sessions are warmed up with the same requests (same timeout) and measured in
many short rounds whose order alternates (plain-mesh, mesh-plain, ...), so drift and noise
of a shared machine hit both alike; the overhead is the median of the per-round
differences (a paired comparison), not the difference of two independent bests.

Rows:

* ``session.plain``: microseconds per request with ``requests.Session`` (median round).
* ``session.mesh``: the same with ``MeshSession`` (ratio to plain; target <= 1.05).
* ``session.overhead``: the median per-round difference, mesh minus plain, in
  microseconds of wall time (target <= 30 us).
* ``session.overhead_cpu``: the same in CPU time of the calling thread: what the mesh
  costs the caller, without the scheduling noise of the server's process.
* ``session.overhead_like_for_like`` (and ``_cpu``): against a ``requests.Session`` that
  also skips the environment's proxy lookup, as MeshSession does for mesh URLs (proxies
  never apply to them; requests scans ``os.environ`` twice per request for it, a large
  part of a plain request's cost): the mesh layer's own cost in situ, with nothing saved
  elsewhere hiding it.
* ``session.mesh_layer``: the mesh layer alone (``MeshAdapter.send`` with an inner adapter
  that answers at once, minus that adapter's own cost: routing, pick, breaker, retry
  bookkeeping, detector, stats) in a tight loop, in microseconds (``session.mesh_layer_cpu``:
  the same in CPU time of the calling thread).
* ``mesh.call.overhead`` (and ``_cpu``): ``Mesh.call(service, fn)`` where ``fn`` sends the
  same GET with a lean ``requests.Session`` to the endpoint it is given, against calling
  ``fn`` on that endpoint directly; alternated rounds, median per-round difference, in
  microseconds per call: what the mesh's request path (pick, breaker permit, detector,
  budget, retry bookkeeping) costs over the call itself, on a real discovered endpoint.
  ``mesh.call.in_process``: the same with an ``fn`` that does no I/O (the layer in a tight
  loop, cache-warm), over a bare call of that ``fn``; ``mesh.call.in_process_cpu`` in CPU
  time of the calling thread (what a shared, loaded machine's scheduling does not inflate).
* ``session.throughput.threads=<k>``: requests per second of k threads (one session each)
  through ``MeshSession`` against the same number of threads with a lean plain session
  (it skips the proxy lookup too), same server, alternated rounds (target >= 0.95).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import requests
import requests.adapters
from _common import Context, Row, alternate, compare, compare_alternated

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


def _timed(session: requests.Session, url: str, n: int) -> tuple[float, float]:
    """Seconds per request of wall time and of this thread's CPU time."""
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(n):
        session.get(url, timeout=TIMEOUT)
    return (time.perf_counter() - wall) / n, (time.thread_time() - cpu) / n


class _LeanSession(requests.Session):
    """A plain Session without the environment lookups of merge_environment_settings."""

    def merge_environment_settings(self, url: Any, *args: Any) -> Any:
        trust, self.trust_env = self.trust_env, False  # single-threaded benchmark
        try:
            return super().merge_environment_settings(url, *args)
        finally:
            self.trust_env = trust


def _paired(
    sessions: dict[str, tuple[requests.Session, str]], n: int, rounds: int
) -> dict[str, list[tuple[float, float]]]:
    """Per-round ``(wall, cpu)`` seconds per request of each session; the order rotates."""
    names = list(sessions)
    for _ in range(100):  # warm every pool, exactly as they are measured
        for session, url in sessions.values():
            session.get(url, timeout=TIMEOUT)
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for i in range(rounds):
        order = names[i % len(names) :] + names[: i % len(names)]
        if i // len(names) % 2:
            order.reverse()
        for name in order:
            session, url = sessions[name]
            figures[name].append(_timed(session, url, n))
    return figures


def _gap(figures: dict[str, list[tuple[float, float]]], a: str, b: str, which: int) -> float:
    """Median over rounds of ``a - b`` (a paired difference), in microseconds."""
    pairs = zip(figures[a], figures[b], strict=True)
    return statistics.median(x[which] - y[which] for x, y in pairs) * 1e6


class _Canned(requests.adapters.HTTPAdapter):
    """An inner adapter that answers at once: isolates the mesh layer's own cost."""

    def send(self, request: Any, *args: Any, **kwargs: Any) -> requests.Response:
        response = requests.Response()
        response.status_code = 200
        response._content = b"ok"
        response.request = request
        return response


def _adapter_cost(
    mesh: Mesh, name: str, n: int, rounds: int, timer: Callable[[], float] = time.perf_counter
) -> float:
    """Seconds per MeshAdapter.send with a canned inner adapter, minus the canned send.

    ``timer``: wall time by default; ``time.thread_time`` gives the calling thread's CPU
    time, which a shared machine's scheduling does not inflate.
    """
    from lake_mesh_consul.http import MeshAdapter

    canned = _Canned()
    adapter = MeshAdapter(mesh, inner=canned)
    request = requests.Request("GET", f"http://{name}/").prepare()
    bare = requests.Request("GET", "http://127.0.0.1/").prepare()
    best = best_canned = float("inf")
    for _ in range(rounds):
        start = timer()
        for _ in range(n):
            adapter.send(request, timeout=TIMEOUT)
        best = min(best, (timer() - start) / n)
        start = timer()
        for _ in range(n):
            canned.send(bare, timeout=TIMEOUT)
        best_canned = min(best_canned, (timer() - start) / n)
    return best - best_canned


def _mesh_call(mesh: Mesh, name: str, n: int, rounds: int) -> Iterator[Row]:
    """Mesh.call over real endpoints against the same call made directly (paired rounds)."""
    endpoint = mesh.balancer(name).pick()
    with _LeanSession() as lean:

        def get(ep: Any) -> requests.Response:
            return lean.get(f"http://{ep.host_port}/", timeout=TIMEOUT)

        def through_mesh() -> tuple[float, float]:
            wall, cpu = time.perf_counter(), time.thread_time()
            for _ in range(n):
                mesh.call(name, get, idempotent=True)
            return (time.perf_counter() - wall) / n, (time.thread_time() - cpu) / n

        def direct() -> tuple[float, float]:
            wall, cpu = time.perf_counter(), time.thread_time()
            for _ in range(n):
                get(endpoint)
            return (time.perf_counter() - wall) / n, (time.thread_time() - cpu) / n

        for _ in range(50):
            get(endpoint)
            mesh.call(name, get, idempotent=True)
        xs: list[tuple[float, float]] = []
        ys: list[tuple[float, float]] = []
        for i in range(rounds):
            pair = (through_mesh, direct) if i % 2 == 0 else (direct, through_mesh)
            first, second = pair[0](), pair[1]()
            x, y = (first, second) if i % 2 == 0 else (second, first)
            xs.append(x)
            ys.append(y)
    for which, suffix in ((0, ""), (1, "_cpu")):
        gap = statistics.median(x[which] - y[which] for x, y in zip(xs, ys, strict=True)) * 1e6
        yield Row(
            f"mesh.call.overhead{suffix}",
            gap,
            "us/call",
            baseline=statistics.median(y[which] for y in ys) * 1e6,
            n=rounds,
            extra={"baseline_is": "the same fn called directly on the endpoint", "target": 5},
        )

    def noop(ep: Any) -> int:
        return 1

    loop = 5_000 if n < 200 else 20_000

    def in_process(timer: Callable[[], float]) -> tuple[list[float], list[float]]:
        def layer() -> float:
            start = timer()
            for _ in range(loop):
                mesh.call(name, noop, idempotent=True)
            return (timer() - start) / loop * 1e6

        def bare() -> float:
            start = timer()
            for _ in range(loop):
                noop(endpoint)
            return (timer() - start) / loop * 1e6

        return alternate(layer, bare, max(3, rounds // 3))

    base = "fn(endpoint) called bare"
    xs_w, ys_w = in_process(time.perf_counter)
    xs_c, ys_c = in_process(time.thread_time)
    wall = compare_alternated("mesh.call.in_process", xs_w, ys_w, "us/call", baseline_is=base)
    cpu = compare_alternated("mesh.call.in_process_cpu", xs_c, ys_c, "us/call", baseline_is=base)
    for row, xs_l, ys_l, time_is in (
        (wall, xs_w, ys_w, "wall time"),
        (cpu, xs_c, ys_c, "CPU time of the calling thread"),
    ):
        row.value = statistics.median(x - y for x, y in zip(xs_l, ys_l, strict=True))
        row.extra["measures"] = "Mesh.call minus the bare call, fn without I/O, per call"
        row.extra["time"] = time_is
        yield row


def _throughput(session_factory: Any, url: str, threads: int, seconds: float) -> float:
    """Requests per second of ``threads`` threads, one session each, for ``seconds``."""
    import threading

    stop = threading.Event()
    counts = [0] * threads
    sessions = [session_factory() for _ in range(threads)]
    for session in sessions:
        session.get(url, timeout=TIMEOUT)

    def work(i: int) -> None:
        session = sessions[i]
        while not stop.is_set():
            session.get(url, timeout=TIMEOUT)
            counts[i] += 1

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join(10)
    elapsed = time.perf_counter() - started
    for session in sessions:
        session.close()
    return sum(counts) / elapsed


def _throughputs(mesh: Mesh, name: str, port: int, ctx: Context) -> Iterator[Row]:
    seconds, rounds = (0.3, 2) if ctx.quick else (1.5, 4)
    for threads in (1, 4, 16):
        ours, theirs = alternate(
            lambda t=threads: _throughput(mesh.session, f"http://{name}/", t, seconds),
            lambda t=threads: _throughput(_LeanSession, f"http://127.0.0.1:{port}/", t, seconds),
            rounds,
        )
        yield compare_alternated(
            f"session.throughput.threads={threads}",
            ours,
            theirs,
            "req/s",
            baseline_is="lean plain requests.Session per thread, same server",
            target=0.95,
        )


def run(ctx: Context) -> Iterator[Row]:
    n, rounds = (100, 6) if ctx.quick else (400, 24)
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
            direct = f"http://127.0.0.1:{port}/"
            with requests.Session() as plain, _LeanSession() as lean:
                figures = _paired(
                    {
                        "plain": (plain, direct),
                        "lean": (lean, direct),
                        "mesh": (meshed, f"http://{name}/"),
                    },
                    n,
                    rounds,
                )
            yield from _mesh_call(mesh, name, n, rounds)
            yield from _throughputs(mesh, name, port, ctx)
            sizes = (2000, 3) if ctx.quick else (5000, 5)
            layer_s = _adapter_cost(mesh, name, *sizes)
            layer_cpu_s = _adapter_cost(mesh, name, *sizes, timer=time.thread_time)
            plain_us = statistics.median(w for w, _ in figures["plain"]) * 1e6
            mesh_us = statistics.median(w for w, _ in figures["mesh"]) * 1e6
            target = {"target": 30}
            yield Row("session.plain", plain_us, "us/req", n=rounds)
            yield compare("session.mesh", mesh_us, plain_us, "us/req", n=rounds, target=1.05)
            yield Row(
                "session.overhead",
                _gap(figures, "mesh", "plain", 0),
                "us/req",
                extra=target,
                n=rounds,
            )
            yield Row(
                "session.overhead_cpu",
                _gap(figures, "mesh", "plain", 1),
                "us/req",
                extra=target,
                n=rounds,
            )
            yield Row(
                "session.overhead_like_for_like",
                _gap(figures, "mesh", "lean", 0),
                "us/req",
                extra=target,
                n=rounds,
            )
            yield Row(
                "session.overhead_like_for_like_cpu",
                _gap(figures, "mesh", "lean", 1),
                "us/req",
                extra=target,
                n=rounds,
            )
            yield Row("session.mesh_layer", layer_s * 1e6, "us/req", extra=target)
            yield Row(
                "session.mesh_layer_cpu",
                layer_cpu_s * 1e6,
                "us/req",
                extra={**target, "time": "CPU time of the calling thread"},
            )
    finally:
        process.kill()
        process.wait(5)

"""The httpx transports and the async path: the mesh against plain httpx, same server.

Both sides send ``GET /`` to the same local HTTP server (a separate process: an asyncio
HTTP/1.1 keep-alive responder with a tiny body) over warm pooled connections with the same
pool limits and timeout. The mesh side goes through ``AsyncMeshTransport`` (or
``MeshTransport``) with the server registered in a real Consul agent and discovered through
it: URL routing, the balancer's pick, the breaker permit, the retry loop's bookkeeping, the
detector's record and the latency figures. Rounds alternate (plain-mesh, mesh-plain, ...) so
that a shared machine's drift hits both sides alike; ratios are medians of per-pair ratios.

Rows:

* ``async.throughput.concurrency=<c>``: requests per second of ``c`` coroutines (one shared
  ``httpx.AsyncClient`` through ``AsyncMeshTransport``) against a plain
  ``httpx.AsyncClient`` with the same number of coroutines (target ratio >= 0.95).
* ``sync.throughput.httpx``: one thread, ``httpx.Client(transport=MeshTransport(mesh))``
  against a plain ``httpx.Client`` (target ratio >= 0.95).
* ``httpx.transport.layer`` (and ``_cpu``): ``MeshTransport`` over httpx's ``MockTransport``
  minus a client on that ``MockTransport`` directly: the mesh layer's cost per request in
  microseconds with no network noise (routing, pick, permit, retry bookkeeping, record).
* ``async.acall.in_process`` (and ``_cpu``): ``await mesh.acall(service, fn)`` with an
  ``fn`` that does no I/O, minus awaiting ``fn`` bare: the async success path's overhead
  per call, in microseconds (wall time; ``_cpu``: CPU time of the process's thread).
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from _common import Context, Row, compare_alternated

from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.registration import ServiceMetadata, TtlCheck
from lake_mesh_consul.httpx import AsyncMeshTransport, MeshTransport
from lake_mesh_consul.mesh import Mesh

#: The server, in its own process (no GIL shared with the client): an asyncio HTTP/1.1
#: keep-alive responder answering every GET with a 2-byte body. One thread serves 256
#: connections (a thread-per-connection server on a loaded 2-core machine measures the
#: server's threads, not the client); it parses only what a GET without a body needs.
SERVER = """
import asyncio

ANSWER = b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nContent-Type: text/plain\\r\\n\\r\\nok"

async def serve(reader, writer):
    try:
        while True:
            await reader.readuntil(b"\\r\\n\\r\\n")
            writer.write(ANSWER)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


def _start_server() -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.strip().isdigit():
        process.kill()
        raise RuntimeError("the benchmark's HTTP server did not start")
    return process, int(line)


#: Both sides' timeout (generous: a loaded shared machine stalls) and pool limits (256 in
#: flight need 256 connections).
TIMEOUT = 30.0
LIMITS = httpx.Limits(max_connections=300, max_keepalive_connections=300)
TARGET = {"target": 0.95}


async def _rate(client: httpx.AsyncClient, url: str, concurrency: int, seconds: float) -> float:
    """Requests per second of ``concurrency`` coroutines sending for ``seconds``."""
    count = 0
    end = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < end:  # bounded by the clock
            response = await client.get(url)
            response.raise_for_status()
            count += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - start)


async def _async_rows(mesh: Mesh, name: str, port: int, ctx: Context) -> list[Row]:
    seconds, rounds = (0.3, 2) if ctx.quick else (1.5, 6)
    rows = []
    meshed = httpx.AsyncClient(
        transport=AsyncMeshTransport(mesh, inner=httpx.AsyncHTTPTransport(limits=LIMITS)),
        timeout=TIMEOUT,
    )
    plain = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(limits=LIMITS), timeout=TIMEOUT)
    ours_url, theirs_url = f"http://{name}/", f"http://127.0.0.1:{port}/"
    async with meshed, plain:
        for concurrency in (1, 256):
            await _rate(meshed, ours_url, concurrency, 0.2)  # warm: connections, caches
            await _rate(plain, theirs_url, concurrency, 0.2)
            xs: list[float] = []
            ys: list[float] = []
            for i in range(rounds):
                if i % 2:
                    ys.append(await _rate(plain, theirs_url, concurrency, seconds))
                    xs.append(await _rate(meshed, ours_url, concurrency, seconds))
                else:
                    xs.append(await _rate(meshed, ours_url, concurrency, seconds))
                    ys.append(await _rate(plain, theirs_url, concurrency, seconds))
            rows.append(
                compare_alternated(
                    f"async.throughput.concurrency={concurrency}",
                    xs,
                    ys,
                    "req/s",
                    baseline_is="plain httpx.AsyncClient, same server, same pool limits",
                    **TARGET,
                )
            )
        rows.extend(await _acall_rows(mesh, name, 2_000 if ctx.quick else 10_000, rounds))
    return rows


async def _acall_rows(mesh: Mesh, name: str, loop: int, rounds: int) -> list[Row]:
    """``mesh.acall`` with a no-I/O coroutine function against awaiting it bare."""
    endpoint = (await mesh.aroute(name)).balancer.pick()

    async def noop(ep: ServiceEndpoint) -> int:
        return 1

    async def layer(timer: Callable[[], float]) -> float:
        start = timer()
        for _ in range(loop):
            await mesh.acall(name, noop, idempotent=True)
        return (timer() - start) / loop * 1e6

    async def bare(timer: Callable[[], float]) -> float:
        start = timer()
        for _ in range(loop):
            await noop(endpoint)
        return (timer() - start) / loop * 1e6

    rows = []
    for suffix, timer, time_is in (
        ("", time.perf_counter, "wall time"),
        ("_cpu", time.thread_time, "CPU time of the calling thread"),
    ):
        await layer(timer)
        xs: list[float] = []
        ys: list[float] = []
        for i in range(max(3, rounds)):
            if i % 2:
                ys.append(await bare(timer))
                xs.append(await layer(timer))
            else:
                xs.append(await layer(timer))
                ys.append(await bare(timer))
        row = compare_alternated(
            f"async.acall.in_process{suffix}",
            xs,
            ys,
            "us/call",
            baseline_is="await fn(endpoint) bare",
        )
        row.value = statistics.median(x - y for x, y in zip(xs, ys, strict=True))
        row.extra["measures"] = "await mesh.acall minus the bare await, fn without I/O"
        row.extra["time"] = time_is
        rows.append(row)
    return rows


def _rate_sync(client: httpx.Client, url: str, seconds: float) -> float:
    count = 0
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:  # bounded by the clock
        client.get(url).raise_for_status()
        count += 1
    return count / (time.perf_counter() - start)


def _sync_rows(mesh: Mesh, name: str, port: int, ctx: Context) -> Iterator[Row]:
    seconds, rounds = (0.3, 2) if ctx.quick else (1.5, 6)
    pool: dict[str, Any] = {"limits": LIMITS}
    with (
        httpx.Client(
            transport=MeshTransport(mesh, inner=httpx.HTTPTransport(**pool)), timeout=TIMEOUT
        ) as meshed,
        httpx.Client(transport=httpx.HTTPTransport(**pool), timeout=TIMEOUT) as plain,
    ):
        ours_url, theirs_url = f"http://{name}/", f"http://127.0.0.1:{port}/"
        _rate_sync(meshed, ours_url, 0.2)
        _rate_sync(plain, theirs_url, 0.2)
        xs: list[float] = []
        ys: list[float] = []
        for i in range(rounds):
            if i % 2:
                ys.append(_rate_sync(plain, theirs_url, seconds))
                xs.append(_rate_sync(meshed, ours_url, seconds))
            else:
                xs.append(_rate_sync(meshed, ours_url, seconds))
                ys.append(_rate_sync(plain, theirs_url, seconds))
        yield compare_alternated(
            "sync.throughput.httpx",
            xs,
            ys,
            "req/s",
            baseline_is="plain httpx.Client, one thread, same server",
            **TARGET,
        )


def _layer_rows(mesh: Mesh, name: str, ctx: Context) -> Iterator[Row]:
    """The transport layer alone: MeshTransport over httpx's MockTransport against a client
    on that MockTransport directly (no network: what the mesh adds per request, in situ)."""
    mock = httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok"))
    n, rounds = (500, 4) if ctx.quick else (2_000, 8)

    def per_request(client: httpx.Client, url: str, timer: Callable[[], float]) -> float:
        start = timer()
        for _ in range(n):
            client.get(url)
        return (timer() - start) / n * 1e6

    with (
        httpx.Client(transport=MeshTransport(mesh, inner=mock)) as meshed,
        httpx.Client(transport=mock) as plain,
    ):
        for suffix, timer, time_is in (
            ("", time.perf_counter, "wall time"),
            ("_cpu", time.thread_time, "CPU time of the calling thread"),
        ):
            per_request(meshed, f"http://{name}/", timer)
            per_request(plain, "http://127.0.0.1:1/", timer)
            xs: list[float] = []
            ys: list[float] = []
            for i in range(rounds):
                if i % 2:
                    ys.append(per_request(plain, "http://127.0.0.1:1/", timer))
                    xs.append(per_request(meshed, f"http://{name}/", timer))
                else:
                    xs.append(per_request(meshed, f"http://{name}/", timer))
                    ys.append(per_request(plain, "http://127.0.0.1:1/", timer))
            row = compare_alternated(
                f"httpx.transport.layer{suffix}",
                xs,
                ys,
                "us/req",
                baseline_is="httpx.Client on the same MockTransport",
            )
            row.value = statistics.median(x - y for x, y in zip(xs, ys, strict=True))
            row.extra["measures"] = "MeshTransport minus the plain client, per request"
            row.extra["time"] = time_is
            yield row


def run(ctx: Context) -> Iterator[Row]:
    process, port = _start_server()
    name = f"bench-async-{uuid.uuid4().hex[:8]}"
    config = MeshConfig(address=ctx.consul_address(), kv_prefix=name)
    try:
        with Mesh(config, drain_grace=0.0) as mesh:
            mesh.register(
                ServiceMetadata(name, port, id=name, address="127.0.0.1"),
                TtlCheck(ttl=600.0, status=HealthStatus.PASSING),
            )
            deadline = time.monotonic() + 10
            while mesh.balancer(name).stats().eligible < 1:
                if time.monotonic() > deadline:
                    raise RuntimeError("the benchmark service never became eligible")
                time.sleep(0.05)
            yield from asyncio.run(_async_rows(mesh, name, port, ctx))
            yield from _sync_rows(mesh, name, port, ctx)
            yield from _layer_rows(mesh, name, ctx)
    finally:
        process.kill()
        process.wait(5)

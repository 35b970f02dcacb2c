"""The mesh inside an event loop: a real agent, real HTTP backends (subprocesses) on loopback.

``async with Mesh(...)``, ``AsyncMeshTransport`` and ``MeshTransport`` end to end: balance,
retry elsewhere, idempotency, the half-open breaker's K probes under 200 concurrent tasks,
cancellation under load, and a loop in debug mode that must never report a slow callback.
"""

from __future__ import annotations

import asyncio
import logging
import select
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from lake_mesh_consul._core.breaker import BreakerState
from lake_mesh_consul._core.config import (
    BreakerSettings,
    DetectorSettings,
    MeshConfig,
    ServiceConfig,
)
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.registration import ServiceMetadata, TtlCheck
from lake_mesh_consul._core.route import Route
from lake_mesh_consul.errors import MeshError
from lake_mesh_consul.httpx import AsyncMeshTransport, MeshTransport, endpoint_of
from lake_mesh_consul.mesh import Mesh

pytestmark = pytest.mark.integration

BACKEND = Path(__file__).with_name("_http_backend.py")
#: Connections an attempt may open at once (httpx's default of 100 would queue half of 200).
LIMITS = httpx.Limits(max_connections=512, max_keepalive_connections=512)


class Backend:
    """One backend instance: ``_http_backend.py`` in its own process."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(BACKEND), name], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20.0)
        assert ready, f"backend {name} did not start"
        self.port = int(self.proc.stdout.readline())
        self.base = f"http://127.0.0.1:{self.port}"

    def control(self, **settings: Any) -> None:
        httpx.post(f"{self.base}/_control", params=settings, timeout=5).raise_for_status()

    async def acontrol(self, client: httpx.AsyncClient, **settings: Any) -> None:
        (await client.post(f"{self.base}/_control", params=settings)).raise_for_status()

    def hits(self) -> int:
        return int(httpx.get(f"{self.base}/_hits", timeout=5).json()["hits"])

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def backends(unique_name: str) -> Iterator[list[Backend]]:
    started = [Backend(f"{unique_name}-{i}") for i in range(1, 4)]
    try:
        yield started
    finally:
        for backend in started:
            backend.kill()


def _settings(name: str, **breaker: Any) -> dict[str, ServiceConfig]:
    """Round robin, the breaker as given, the detector's ejection out of the way."""
    return {
        name: ServiceConfig(
            strategy="round_robin",
            breaker=BreakerSettings(**breaker),
            detector=DetectorSettings(consecutive_failures=10_000),
        )
    }


@asynccontextmanager
async def async_mesh(
    config: MeshConfig, name: str, backends: list[Backend], **breaker: Any
) -> AsyncIterator[tuple[Mesh, Route]]:
    """``async with Mesh``: the backends registered from a thread, all eligible."""
    mesh = Mesh(
        config.replace(kv_prefix=name),
        drain_grace=0.0,
        services=_settings(name, consecutive_failures=1000, **breaker)
        if "consecutive_failures" not in breaker
        else _settings(name, **breaker),
    )
    async with mesh:
        for backend in backends:
            await asyncio.to_thread(
                mesh.register,
                ServiceMetadata(name, backend.port, id=backend.name, address="127.0.0.1"),
                TtlCheck(ttl=60.0, status=HealthStatus.PASSING),
            )
        route = await mesh.aroute(name)
        for _ in range(400):  # bounded: 20 s
            if route.balancer.stats().eligible == len(backends):
                break
            await asyncio.sleep(0.05)
        assert route.balancer.stats().eligible == len(backends)
        yield mesh, route


def _endpoint(route: Route, backend: Backend) -> ServiceEndpoint:
    return next(e for e in route.endpoints if e.id == backend.name)


def _assert_settled(route: Route) -> None:
    for instance in route.explain().instances:
        assert instance.balancer.outstanding == 0, instance
    for endpoint in route.endpoints:
        breaker = route.detector.breaker(endpoint)
        if breaker is not None:
            assert breaker.snapshot().probes_in_flight == 0


def test_async_transport_balances_and_keeps_the_logical_url(mesh_config, unique_name, backends):
    async def main() -> None:
        async with (
            async_mesh(mesh_config, unique_name, backends) as (mesh, route),
            httpx.AsyncClient(transport=AsyncMeshTransport(mesh), timeout=5) as http,
        ):
            served: Counter[str] = Counter()
            for i in range(30):
                url = f"http://{unique_name}/items?n={i}"
                if i % 2:
                    url = f"http://{unique_name}.service.consul/items?n={i}"
                response = await http.get(url)
                assert response.status_code == 200
                answer = response.json()
                served[answer["instance"]] += 1
                assert str(response.url) == url
                assert answer["host"] == url.split("/")[2]
                endpoint = endpoint_of(response)
                assert endpoint is not None
                assert endpoint.id == answer["instance"]
            assert served == {b.name: 10 for b in backends}
            direct = await http.get(f"{backends[0].base}/direct")
            assert endpoint_of(direct) is None
            # acall: any async client through the same route.
            ports = [await mesh.acall(unique_name, _port_of, idempotent=True) for _ in range(3)]
            assert sorted(ports) == sorted(b.port for b in backends)
            _assert_settled(route)
        assert mesh.closed

    asyncio.run(main())


async def _port_of(endpoint: ServiceEndpoint) -> int:
    await asyncio.sleep(0)
    return endpoint.port


def test_retries_elsewhere_on_503_and_never_resends_a_post(mesh_config, unique_name, backends):
    bad = backends[1]
    bad.control(status=503)

    async def main() -> None:
        async with (
            async_mesh(mesh_config, unique_name, backends) as (mesh, route),
            httpx.AsyncClient(transport=AsyncMeshTransport(mesh), timeout=5) as http,
        ):
            for _ in range(12):
                response = await http.get(f"http://{unique_name}/read")
                assert response.status_code == 200
                assert response.json()["instance"] != bad.name
            before = [b.hits() for b in backends]
            statuses = Counter()
            for _ in range(6):
                response = await http.post(f"http://{unique_name}/write", content=b"x")
                statuses[response.status_code] += 1
            after = [b.hits() for b in backends]
            assert sum(after) - sum(before) == 6  # one send per POST: none retried
            assert statuses[503] == after[1] - before[1] >= 1  # bad's 503s came back as is
            _assert_settled(route)

    asyncio.run(main())


def test_the_sync_transport_follows_the_same_route(mesh_config, unique_name, backends):
    backends[0].control(status=503)
    with (
        Mesh(
            mesh_config.replace(kv_prefix=unique_name),
            drain_grace=0.0,
            services=_settings(unique_name, consecutive_failures=1000),
        ) as mesh,
        httpx.Client(transport=MeshTransport(mesh), timeout=5) as http,
    ):
        for backend in backends:
            mesh.register(
                ServiceMetadata(unique_name, backend.port, id=backend.name, address="127.0.0.1"),
                TtlCheck(ttl=60.0, status=HealthStatus.PASSING),
            )
        route = mesh.route(unique_name)
        for _ in range(400):
            if route.balancer.stats().eligible == 3:
                break
            time.sleep(0.05)
        served = Counter(http.get(f"http://{unique_name}/x").json()["instance"] for _ in range(20))
        assert set(served) == {backends[1].name, backends[2].name}
        with pytest.raises(httpx.TransportError) as caught:
            http.get(f"http://{unique_name}-nowhere/x")
        assert isinstance(caught.value, MeshError)
        _assert_settled(route)


def test_half_open_admits_exactly_k_probes_under_200_concurrent_tasks(
    mesh_config, unique_name, backends
):
    k = 2
    bad = backends[0]
    bad.control(status=503)

    async def main() -> None:
        async with (
            async_mesh(
                mesh_config,
                unique_name,
                backends,
                consecutive_failures=3,
                reset_timeout=1.0,
                half_open_max_calls=k,
                half_open_successes=k,
            ) as (mesh, route),
            httpx.AsyncClient(
                transport=AsyncMeshTransport(mesh, inner=httpx.AsyncHTTPTransport(limits=LIMITS)),
                timeout=10,
            ) as http,
        ):
            breaker = route.detector.breaker(_endpoint(route, bad))
            assert breaker is not None
            for _ in range(30):  # bounded: 3 failures in a row on bad open its breaker
                assert (await http.get(f"http://{unique_name}/")).status_code == 200
                if breaker.state is BreakerState.OPEN:
                    break
            assert breaker.state is BreakerState.OPEN
            await bad.acontrol(http, status=200, delay=0.5)  # healthy again, and slow
            await asyncio.sleep(1.2)  # past reset_timeout: the next admission is a probe
            hits = bad.hits()
            tasks = [
                asyncio.ensure_future(http.get(f"http://{unique_name}/probe")) for _ in range(200)
            ]
            await asyncio.sleep(0.2)  # every task admitted; the probes are still in flight
            assert breaker.state is BreakerState.HALF_OPEN
            assert breaker.snapshot().probes_in_flight == k
            responses = await asyncio.gather(*tasks)
            assert [r.status_code for r in responses] == [200] * 200
            served_by_bad = [r for r in responses if endpoint_of(r) == _endpoint(route, bad)]
            assert len(served_by_bad) == k
            assert bad.hits() - hits == k
            assert breaker.state is BreakerState.CLOSED  # the K probes succeeded
            _assert_settled(route)

    asyncio.run(main())


def test_cancellation_under_load_leaks_no_permit_and_records_nothing(
    mesh_config, unique_name, backends
):
    for backend in backends:
        backend.control(delay=0.5)

    async def main() -> None:
        async with (
            async_mesh(mesh_config, unique_name, backends) as (mesh, route),
            httpx.AsyncClient(
                transport=AsyncMeshTransport(mesh, inner=httpx.AsyncHTTPTransport(limits=LIMITS)),
                timeout=10,
            ) as http,
        ):
            requests_before = sum(s.requests for s in route.detector.states(unique_name))
            tasks = [
                asyncio.ensure_future(http.get(f"http://{unique_name}/slow")) for _ in range(200)
            ]
            for _ in range(200):  # bounded: 2 s for every task to be admitted
                outstanding = sum(i.balancer.outstanding for i in route.explain().instances)
                if outstanding == 200:
                    break
                await asyncio.sleep(0.01)
            assert outstanding == 200
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) for r in results)
            _assert_settled(route)
            after = sum(s.requests for s in route.detector.states(unique_name))
            assert after == requests_before  # a cancelled request records no outcome
            for endpoint in route.endpoints:
                breaker = route.detector.breaker(endpoint)
                assert breaker is None or breaker.state is BreakerState.CLOSED
            for backend in backends:
                await backend.acontrol(http, delay=0)
            assert (await http.get(f"http://{unique_name}/after")).status_code == 200
            _assert_settled(route)

    asyncio.run(main())


class _SlowCallbacks(logging.Handler):
    """Collects asyncio's debug-mode "Executing <handle> took N seconds" warnings, by phase."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.phase = "setup"
        self.found: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "took" in message and "seconds" in message:
            self.found.append((self.phase, message))

    def count(self, phase: str) -> int:
        return sum(1 for p, _ in self.found if p == phase)


async def _noop_call(endpoint: ServiceEndpoint) -> int:
    await asyncio.sleep(0)
    return endpoint.port


def _non_blocking(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """A wait with a zero timeout only polls (the executor's idle-worker check does)."""
    if name != "wait":
        return False
    timeout = kwargs.get("timeout", args[1] if len(args) > 1 else None)
    return timeout is not None and timeout <= 0


def _starting_a_thread() -> bool:
    """Whether ``Thread.start`` is on the stack: its start-up handshake (to_thread's worker
    starting) waits microseconds on a Condition, and is the standard library's, not ours."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "start" and frame.f_code.co_filename.endswith("threading.py"):
            return True
        frame = frame.f_back
    return False


class _BlockingOnLoop:
    """Records every blocking call made on the loop's thread: an HTTP request through
    requests (all Consul traffic goes through it), ``time.sleep``, ``Event.wait`` and
    ``Condition.wait`` (the mesh's first-use and start-up flights wait on those)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.loop_thread: int | None = None
        self.calls: list[str] = []
        import requests.adapters

        def wrap(owner: Any, name: str) -> None:
            original = getattr(owner, name)

            def guarded(*args: Any, **kwargs: Any) -> Any:
                if (
                    threading.get_ident() == self.loop_thread
                    and not _non_blocking(name, args, kwargs)
                    and not _starting_a_thread()
                ):
                    self.calls.append(f"{getattr(owner, '__name__', owner)}.{name}")
                return original(*args, **kwargs)

            monkeypatch.setattr(owner, name, guarded)

        wrap(requests.adapters.HTTPAdapter, "send")
        wrap(time, "sleep")
        wrap(threading.Event, "wait")
        wrap(threading.Condition, "wait")


def test_the_loop_never_blocks_in_debug_mode(mesh_config, unique_name, backends, monkeypatch):
    """Debug mode, ``slow_callback_duration = 0.01``: the mesh never blocks the loop.

    Lifecycle: ``async with Mesh`` (start, KV read), registration and deregistration from
    worker threads, the first use of the service (waits for Consul in a thread),
    ``mesh.acall`` under load (50 in flight) while discovery changes and a KV reload lands,
    and close. Checked exactly: no Consul request, sleep or thread wait ever runs on the
    loop's thread.

    Transport: AsyncMeshTransport against plain httpx to the same backends, alternated
    rounds of 8 in flight, slow-callback warnings counted for each side. On this project's
    loaded 2-core machines plain httpx alone has debug-mode steps over 10 ms (a traceback
    is captured for every future, the CPU is shared), so an absolute "none" would measure
    the machine: the check is that the mesh's side has no more than about the baseline's.
    """
    blocking = _BlockingOnLoop(monkeypatch)

    # One-time imports (anyio's asyncio backend, httpcore's async pool) happen before the
    # debug loop: they are not the mesh's work.
    async def warm_up() -> None:
        async with httpx.AsyncClient() as client:
            await client.get(f"{backends[0].base}/warm")

    asyncio.run(warm_up())
    slow = _SlowCallbacks()
    logger = logging.getLogger("asyncio")
    logger.addHandler(slow)
    # Built outside the loop: httpx builds TLS contexts at construction (not mesh work).
    plain = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(limits=LIMITS), timeout=10)
    inner = httpx.AsyncHTTPTransport(limits=LIMITS)

    async def calls(mesh: Mesh) -> None:
        ports = await asyncio.gather(
            *(mesh.acall(unique_name, _noop_call, idempotent=True) for _ in range(50))
        )
        assert len(ports) == 50

    async def main() -> None:
        blocking.loop_thread = threading.get_ident()
        asyncio.get_running_loop().slow_callback_duration = 0.01
        slow.phase = "lifecycle"
        mesh = Mesh(
            mesh_config.replace(kv_prefix=unique_name),
            drain_grace=0.0,
            services=_settings(unique_name, consecutive_failures=1000),
        )
        transport = AsyncMeshTransport(mesh, inner=inner)
        async with mesh, httpx.AsyncClient(transport=transport, timeout=10) as http:
            for backend in backends:
                await asyncio.to_thread(
                    mesh.register,
                    ServiceMetadata(
                        unique_name, backend.port, id=backend.name, address="127.0.0.1"
                    ),
                    TtlCheck(ttl=60.0, status=HealthStatus.PASSING),
                )
            route = await mesh.aroute(unique_name)  # first use: waits for Consul in a thread
            for _ in range(400):  # bounded: 20 s
                if route.balancer.stats().eligible == 3:
                    break
                await asyncio.sleep(0.05)
            await calls(mesh)
            change = asyncio.ensure_future(asyncio.to_thread(mesh.deregister, backends[2].name))
            for _ in range(400):  # bounded: discovery changes under load
                await calls(mesh)
                if change.done() and route.balancer.stats().eligible == 2:
                    break
            await change
            store = mesh.store
            key = store.layout.service_key(unique_name)
            write = asyncio.ensure_future(
                asyncio.to_thread(store.set, key, {"strategy": "least_request"})
            )
            for _ in range(400):  # bounded: a KV reload under load
                await calls(mesh)
                if write.done() and route.settings.strategy == "least_request":
                    break
            await write
            assert route.settings.strategy == "least_request"
            slow.phase = "transport.setup"
            for backend in backends[:2]:  # warm both sides' pools
                await plain.get(f"{backend.base}/warm")
            await http.get(f"http://{unique_name}/warm")
            for i in range(20):
                for side in ("mesh", "plain") if i % 2 else ("plain", "mesh"):
                    slow.phase = f"transport.{side}"
                    if side == "mesh":
                        urls = [f"http://{unique_name}/m{i}"] * 8
                        client = http
                    else:
                        urls = [f"{backends[j % 2].base}/p{i}" for j in range(8)]
                        client = plain
                    responses = await asyncio.gather(*(client.get(u) for u in urls))
                    assert all(r.status_code == 200 for r in responses)
            slow.phase = "lifecycle"
        await plain.aclose()
        assert mesh.closed

    try:
        asyncio.run(main(), debug=True)
    finally:
        logger.removeHandler(slow)
    assert blocking.calls == []

    async def block() -> None:  # the guard itself: a sleep on the loop's thread is seen
        blocking.loop_thread = threading.get_ident()
        time.sleep(0.001)

    asyncio.run(block())
    assert blocking.calls == ["time.sleep"]
    mesh_slow, plain_slow = slow.count("transport.mesh"), slow.count("transport.plain")
    assert mesh_slow <= 2 * plain_slow + 5, (mesh_slow, plain_slow)


@pytest.mark.fault
def test_a_hung_agent_never_stalls_the_loop(
    dedicated_consul_agent, unique_name, backends, monkeypatch
):
    """The agent SIGSTOPped mid-run: known services keep answering from their snapshots,
    a first use of another service fails after discovery_timeout in a worker thread while
    the loop serves on, close returns in bounded time, and nothing blocks the loop."""
    agent = dedicated_consul_agent
    blocking = _BlockingOnLoop(monkeypatch)

    async def main() -> None:
        blocking.loop_thread = threading.get_ident()
        mesh = Mesh(
            MeshConfig(address=agent.address, kv_prefix=unique_name),
            drain_grace=0.0,
            discovery_timeout=2.0,
            services=_settings(unique_name, consecutive_failures=1000),
        )
        await mesh.astart()
        http = httpx.AsyncClient(transport=AsyncMeshTransport(mesh), timeout=5)
        try:
            for backend in backends:
                await asyncio.to_thread(
                    mesh.register,
                    ServiceMetadata(
                        unique_name, backend.port, id=backend.name, address="127.0.0.1"
                    ),
                    TtlCheck(ttl=60.0, status=HealthStatus.PASSING),
                )
            route = await mesh.aroute(unique_name)
            for _ in range(400):  # bounded: 20 s
                if route.balancer.stats().eligible == 3:
                    break
                await asyncio.sleep(0.05)
            await asyncio.to_thread(agent.pause)  # the harness's own waits, off the loop
            try:
                # A first use waits for Consul in a worker thread; the loop serves meanwhile.
                unknown = asyncio.ensure_future(http.get(f"http://{unique_name}-other/"))
                served = 0
                for _ in range(400):  # bounded: while the discovery wait runs
                    if unknown.done():
                        break
                    responses = await asyncio.gather(
                        *(http.get(f"http://{unique_name}/x") for _ in range(5))
                    )
                    assert all(r.status_code == 200 for r in responses)
                    served += len(responses)
                with pytest.raises(httpx.TransportError) as caught:
                    await unknown
                assert isinstance(caught.value, MeshError)
                assert served >= 5  # the loop answered while discovery waited
                started = time.monotonic()
                await asyncio.wait_for(mesh.aclose(), 10)  # drains against a hung agent
                assert time.monotonic() - started < 5
            finally:
                await asyncio.to_thread(agent.resume)
        finally:
            await http.aclose()
            await mesh.aclose()

    asyncio.run(main())
    assert blocking.calls == []


def test_aregister_runs_async_check_functions_on_the_loop(mesh_config, unique_name, backends):
    healthy = True
    loops: list[asyncio.AbstractEventLoop] = []

    async def db_ping() -> bool:  # uses the service's own loop, as a database pool would
        loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        return healthy

    async def main() -> None:
        nonlocal healthy
        mesh = Mesh(mesh_config.replace(kv_prefix=unique_name), drain_grace=0.0)
        async with mesh:
            backend = backends[0]
            await mesh.aregister(
                ServiceMetadata(unique_name, backend.port, id=backend.name, address="127.0.0.1"),
                TtlCheck(ttl=3.0),
                functions=(db_ping,),
                interval=0.3,
            )
            route = await mesh.aroute(unique_name)
            for _ in range(200):  # bounded: 10 s for the first passing report
                if route.balancer.stats().eligible == 1:
                    break
                await asyncio.sleep(0.05)
            assert route.balancer.stats().eligible == 1
            assert loops
            assert all(loop is asyncio.get_running_loop() for loop in loops)
            healthy = False
            for _ in range(200):  # bounded: the failing check reaches Consul and discovery
                if route.balancer.stats().eligible == 0:
                    break
                await asyncio.sleep(0.05)
            assert route.balancer.stats().eligible == 0

    asyncio.run(main())

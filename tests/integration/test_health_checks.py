"""Every check kind driven through passing -> critical -> passing against a real agent.

Each transition is observed through Consul's own ``/v1/health/checks/<service>`` API. The
HTTP, TCP and gRPC targets are small servers on loopback started here (gRPC: the standard
grpc.health.v1 service from grpcio-health-checking, a test-only dependency); TTL checks are
driven by HealthCheckManager check functions.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul._consul.health_checks import HealthCheckManager
from lake_mesh_consul._consul.registry import ServiceRegistry
from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul._core.health import HealthStatus, Transition
from lake_mesh_consul._core.registration import (
    AliasCheck,
    GrpcCheck,
    HttpCheck,
    ScriptCheck,
    ServiceMetadata,
    TcpCheck,
    TtlCheck,
)
from lake_mesh_consul.errors import ConsulStatusError
from lake_mesh_consul.testing._agent import DevAgent, find_consul_binary
from lake_mesh_consul.testing._tls import create_tls_material

pytestmark = pytest.mark.integration

P, W, C = HealthStatus.PASSING, HealthStatus.WARNING, HealthStatus.CRITICAL


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> float:
    """Poll until ``predicate`` holds; return the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def consul_status(client: ConsulClient, service: str, check_id: str) -> tuple[str, str]:
    """Status and output of ``check_id`` as Consul's /v1/health API reports it."""
    for entry in client.request(
        "GET", f"/v1/health/checks/{service}", operation="read checks"
    ).json():
        if entry["CheckID"] == check_id:
            return entry["Status"], entry["Output"]
    return "absent", ""


def expect(client: ConsulClient, service: str, check_id: str, status: str) -> str:
    """Wait until Consul reports ``status`` for the check; return its output."""
    out: list[str] = [""]

    def ok() -> bool:
        got, out[0] = consul_status(client, service, check_id)
        return got == status

    wait_for(ok, 10, f"{check_id} {status}")
    return out[0]


class HealthServer:
    """An HTTP server on loopback whose /health answers ``code``."""

    def __init__(self) -> None:
        self.code = 200
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(owner.code)
                self.end_headers()
                self.wfile.write(b"ok" if owner.code == 200 else b"broken")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/health"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TcpServer:
    """A TCP listener on loopback that can go away and come back on the same port."""

    def __init__(self) -> None:
        self.port = 0
        self.sock: socket.socket | None = None
        self.open()

    def open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(16)
        self.port = sock.getsockname()[1]
        self.sock = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class GrpcHealthServer:
    """A gRPC server on a free loopback port serving the standard grpc.health.v1 Health.

    ``cert``/``key`` (PEM files) make it a TLS server. grpcio is a test-only dependency.
    """

    def __init__(self, *, cert: Path | None = None, key: Path | None = None) -> None:
        grpc = pytest.importorskip("grpc")
        health = pytest.importorskip("grpc_health.v1.health")
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        self._serving = health_pb2.HealthCheckResponse.SERVING
        self._not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        self.servicer = health.HealthServicer()
        self.server = grpc.server(ThreadPoolExecutor(max_workers=4))
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, self.server)
        if cert is not None and key is not None:
            creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
            self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        else:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        assert self.port, "gRPC server could not bind a loopback port"
        self.server.start()
        self._stopped = False

    def set(self, service: str, *, serving: bool) -> None:
        self.servicer.set(service, self._serving if serving else self._not_serving)

    def close(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.servicer.enter_graceful_shutdown()
            self.server.stop(grace=None).wait(2)


@pytest.fixture
def client(mesh_config: MeshConfig) -> Iterator[ConsulClient]:
    with ConsulClient(mesh_config) as c:
        yield c


@pytest.fixture
def registry(mesh_config: MeshConfig) -> Iterator[ServiceRegistry]:
    with ServiceRegistry(mesh_config, drain_on_close=False, anti_entropy_interval=0.5) as r:
        yield r
        for meta in r.registered:
            r.deregister(meta.id)


def test_http_check_transitions(
    registry: ServiceRegistry, client: ConsulClient, unique_name: str
) -> None:
    server = HealthServer()
    try:
        check = HttpCheck(id=f"{unique_name}-http", url=server.url, interval=1, timeout=1)
        registry.register(ServiceMetadata(unique_name, 8080, checks=(check,)))
        expect(client, unique_name, check.id or "", "passing")
        server.code = 500
        assert "500" in expect(client, unique_name, check.id or "", "critical")
        server.code = 200
        expect(client, unique_name, check.id or "", "passing")
    finally:
        server.close()


def test_tcp_check_transitions(
    registry: ServiceRegistry, client: ConsulClient, unique_name: str
) -> None:
    server = TcpServer()
    try:
        check = TcpCheck(id=f"{unique_name}-tcp", address=f"127.0.0.1:{server.port}", interval=1)
        registry.register(ServiceMetadata(unique_name, server.port, checks=(check,)))
        expect(client, unique_name, check.id or "", "passing")
        server.close()
        assert "refused" in expect(client, unique_name, check.id or "", "critical")
        server.open()
        expect(client, unique_name, check.id or "", "passing")
    finally:
        server.close()


def test_grpc_check_transitions(
    registry: ServiceRegistry, client: ConsulClient, unique_name: str
) -> None:
    # A real grpc.health.v1 server; the target names one service ("host:port/service", the
    # agent asks Health/Check about that name). A second check asks about another service
    # on the same server, which stays SERVING: the service part of the target is honoured.
    ours, other = f"{unique_name}.Api", f"{unique_name}.Other"
    server = GrpcHealthServer()
    try:
        server.set(ours, serving=True)
        server.set(other, serving=True)
        check = GrpcCheck(
            id=f"{unique_name}-grpc",
            target=f"127.0.0.1:{server.port}/{ours}",
            use_tls=False,
            interval=1,
            timeout=1,
        )
        bystander = GrpcCheck(
            id=f"{unique_name}-grpc-other",
            target=f"127.0.0.1:{server.port}/{other}",
            use_tls=False,
            interval=1,
            timeout=1,
        )
        registry.register(ServiceMetadata(unique_name, server.port, checks=(check, bystander)))
        cid, oid = check.id or "", bystander.id or ""
        service_id = registry.registered[0].id
        agent_view = registry.agent_checks(service_id)
        assert agent_view[cid]["Type"] == "grpc"
        expect(client, unique_name, cid, "passing")
        expect(client, unique_name, oid, "passing")
        server.set(ours, serving=False)
        assert "didn't report service healthy" in expect(client, unique_name, cid, "critical")
        assert consul_status(client, unique_name, oid)[0] == "passing"
        server.set(ours, serving=True)
        expect(client, unique_name, cid, "passing")
        # The server going away is critical too (a connection error, not a health answer).
        server.close()
        expect(client, unique_name, cid, "critical")
    finally:
        server.close()


def test_grpc_check_with_tls(
    registry: ServiceRegistry,
    client: ConsulClient,
    unique_name: str,
    tmp_path: Path,
) -> None:
    # A TLS gRPC server with a certificate from `consul tls cert create` (signed by a CA the
    # agent does not trust): use_tls + tls_skip_verify follows the server's health; without
    # skip-verify the handshake fails, and plaintext against a TLS port fails.
    binary = find_consul_binary()
    if binary is None:
        pytest.skip("no consul binary to make certificates with")
    tls = create_tls_material(binary, tmp_path / "tls")
    name = f"{unique_name}.Api"
    server = GrpcHealthServer(cert=tls.server_cert, key=tls.server_key)
    try:
        server.set(name, serving=True)
        target = f"127.0.0.1:{server.port}/{name}"
        check = GrpcCheck(
            id=f"{unique_name}-grpcs",
            target=target,
            use_tls=True,
            tls_skip_verify=True,
            interval=1,
            timeout=1,
        )
        verified = GrpcCheck(id=f"{unique_name}-verify", target=target, use_tls=True, interval=1)
        plain = GrpcCheck(id=f"{unique_name}-plain", target=target, use_tls=False, interval=1)
        registry.register(
            ServiceMetadata(unique_name, server.port, checks=(check, verified, plain))
        )
        cid = check.id or ""
        expect(client, unique_name, cid, "passing")
        server.set(name, serving=False)
        assert "didn't report service healthy" in expect(client, unique_name, cid, "critical")
        server.set(name, serving=True)
        expect(client, unique_name, cid, "passing")
        service_id = registry.registered[0].id

        def probed_and_refused() -> bool:
            view = registry.agent_checks(service_id)
            return all(
                view[c.id or ""]["Status"] == "critical"
                and "rpc error" in view[c.id or ""]["Output"]
                for c in (verified, plain)
            )

        wait_for(probed_and_refused, what="the unverified and the plaintext probes to fail")
        view = registry.agent_checks(service_id)
        assert "certificate" in view[verified.id or ""]["Output"]
    finally:
        server.close()


def test_ttl_check_driven_by_a_function_and_metrics_match(
    registry: ServiceRegistry, client: ConsulClient, unique_name: str
) -> None:
    meta = ServiceMetadata(unique_name, 8080, checks=(TtlCheck(id=f"{unique_name}-ttl", ttl=3),))
    healthy = threading.Event()
    healthy.set()
    seen: list[Transition] = []
    with HealthCheckManager(registry, meta, interval=0.2) as health:
        health.subscribe(seen.append)
        health.add_function(lambda: (P, "all good") if healthy.is_set() else (C, "db down"))
        health.start()
        check_id = meta.ttl_checks[0].id or ""
        assert expect(client, unique_name, check_id, "passing") == "all good"
        healthy.clear()
        assert expect(client, unique_name, check_id, "critical") == "db down"
        healthy.set()
        expect(client, unique_name, check_id, "passing")
        wait_for(lambda: health.snapshot().checks[check_id].status is P)
        snap = health.snapshot()
    app = snap.checks[check_id]
    check_transitions = [t for t in seen if t.check_id == check_id]
    # critical (initial) -> passing -> critical -> passing
    assert [t.current for t in check_transitions] == [P, C, P]
    assert app.transitions == len(check_transitions) == 3
    assert snap.service.transitions == len([t for t in seen if t.check_id is None]) == 3
    assert app.ttl_updates_sent >= app.results >= 3
    assert app.ttl_updates_failed == 0
    assert app.last_check_duration is not None
    assert app.last_check_duration < 0.2


def test_alias_check_follows_the_aliased_service(
    registry: ServiceRegistry, client: ConsulClient, unique_name: str
) -> None:
    target = ServiceMetadata(
        f"{unique_name}-db", 5432, checks=(TtlCheck(id=f"{unique_name}-db-ttl", ttl=30),)
    )
    registry.register(target)
    alias = AliasCheck(id=f"{unique_name}-alias", service_id=target.id)
    registry.register(ServiceMetadata(unique_name, 8080, checks=(alias,)))
    ttl_id = target.ttl_checks[0].id or ""
    registry.update_ttl(ttl_id, P, "db up")
    expect(client, unique_name, alias.id or "", "passing")
    registry.update_ttl(ttl_id, C, "db down")
    expect(client, unique_name, alias.id or "", "critical")
    registry.update_ttl(ttl_id, P, "db up")
    expect(client, unique_name, alias.id or "", "passing")


def test_script_check_needs_the_agent_to_allow_it(
    registry: ServiceRegistry, unique_name: str
) -> None:
    check = ScriptCheck(args=("/bin/true",), interval=1)
    with pytest.raises(ConsulStatusError, match="enable_script_checks") as info:
        registry.register(ServiceMetadata(unique_name, 8080, checks=(check,)))
    assert info.value.code == 500


def test_script_check_transitions_where_allowed(unique_name: str, tmp_path: Path) -> None:
    binary = find_consul_binary()
    if binary is None:
        pytest.skip("no consul binary")
    flag = tmp_path / "healthy"
    flag.touch()
    with DevAgent(binary, extra_args=["-hcl", "enable_script_checks = true"]) as agent:
        config = MeshConfig(address=agent.address)
        with ServiceRegistry(config, drain_on_close=False) as registry, ConsulClient(config) as c:
            check = ScriptCheck(
                id="script", args=("/bin/sh", "-c", f"test -e {flag} || exit 2"), interval=1
            )
            registry.register(ServiceMetadata(unique_name, 8080, checks=(check,)))
            expect(c, unique_name, "script", "passing")
            flag.unlink()
            expect(c, unique_name, "script", "critical")
            flag.touch()
            expect(c, unique_name, "script", "passing")


def test_function_that_raises_is_critical_with_its_text(
    registry: ServiceRegistry, client: ConsulClient, unique_name: str
) -> None:
    # Initially passing, so that going critical is a status change: Consul syncs a change
    # of output alone to the catalog lazily (check_update_interval), a status change at once.
    ttl = TtlCheck(id=f"{unique_name}-ttl", ttl=3, status=P)
    meta = ServiceMetadata(unique_name, 8080, checks=(ttl,))

    def broken() -> bool:
        raise ConnectionError("database refused the connection")

    with HealthCheckManager(registry, meta, interval=0.2) as health:
        health.add_function(broken)
        health.start()
        output = expect(client, unique_name, meta.ttl_checks[0].id or "", "critical")
    assert output == "ConnectionError: database refused the connection"


def test_function_that_hangs_is_cut_off(
    registry: ServiceRegistry, client: ConsulClient, unique_name: str
) -> None:
    ttl = TtlCheck(id=f"{unique_name}-ttl", ttl=3, status=P)
    meta = ServiceMetadata(unique_name, 8080, checks=(ttl,))
    release = threading.Event()
    calls: list[int] = []

    def hangs() -> bool:
        calls.append(1)
        release.wait(30)
        return True

    check_id = meta.ttl_checks[0].id or ""
    try:
        with HealthCheckManager(registry, meta, interval=0.2, check_timeout=0.3) as health:
            health.add_function(hangs, name="hangs")
            started = time.monotonic()
            health.start()
            assert time.monotonic() - started < 0.5  # the heartbeat never blocks the caller
            assert "timed out after 0.3s" in expect(client, unique_name, check_id, "critical")
            wait_for(lambda: health.snapshot().checks[check_id].results >= 3)
            agent_view = registry.agent_checks(meta.id)[check_id]
            assert "still running" in agent_view["Output"]
            assert len(calls) == 1  # a hung function is not started again
            release.set()
            expect(client, unique_name, check_id, "passing")
            closing = time.monotonic()
        assert time.monotonic() - closing < 1.0
    finally:
        release.set()

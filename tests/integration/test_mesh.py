"""Mesh end to end against a real agent: register, call, explain, live reload, close."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter

import pytest
from _mesh_support import mesh_with_instances, wait_for

from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul._core.breaker import BreakerState
from lake_mesh_consul._core.config import (
    BreakerSettings,
    DetectorSettings,
    MeshConfig,
    ServiceConfig,
)
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.registration import HttpCheck, ServiceMetadata
from lake_mesh_consul._demo import DemoInstance
from lake_mesh_consul.errors import MeshError, NoEndpointsAvailable, RetryExhausted
from lake_mesh_consul.mesh import Explanation, Mesh

pytestmark = pytest.mark.integration


def _raw_get(endpoint: ServiceEndpoint, path: str = "/raw") -> dict[str, object]:
    """A non-HTTP-library client: HTTP/1.0 over a bare socket."""
    with socket.create_connection((endpoint.address, endpoint.port), timeout=2) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if status >= 500:
        raise ConnectionResetError(f"HTTP {status}")  # a transport-like failure, retriable
    result: dict[str, object] = json.loads(body)
    return result


def test_register_call_and_close_drains(mesh_config, unique_name):
    config = mesh_config.replace(kv_prefix=unique_name)
    instances = [DemoInstance(f"{unique_name}-{i}") for i in range(3)]
    try:
        with Mesh(config, drain_grace=0.2) as mesh:
            for inst in instances:
                manager = mesh.register(
                    ServiceMetadata(unique_name, inst.port, id=inst.name, address=inst.host),
                    HttpCheck(url=f"http://{inst.host}:{inst.port}/health", interval=0.5),
                )
                assert manager is mesh.health(inst.name)
            wait_for(lambda: mesh.explain(unique_name).eligible == 3, what="3 passing")
            served = Counter(mesh.call(unique_name, _raw_get)["instance"] for _ in range(30))
            assert served == {inst.name: 10 for inst in instances}  # round robin (default)
            # A failing instance: not idempotent, the failure reaches the caller ...
            instances[0].failing = True
            errors = []
            for _ in range(3):  # round robin: one of three lands on it
                try:
                    mesh.call(unique_name, _raw_get)
                except RetryExhausted as exc:
                    errors.append(exc)
            assert len(errors) == 1
            assert errors[0].reason == "not idempotent"
            assert len(errors[0].attempts) == 1
            # ... idempotent, it is retried on another instance.
            for _ in range(10):
                assert mesh.call(unique_name, _raw_get, idempotent=True)["instance"] != (
                    instances[0].name
                )
            assert mesh.retry_budget(unique_name).balance() > 0
            assert mesh.retry_policy(unique_name).attempts == 3
        assert mesh.closed
        with ConsulClient(mesh_config) as client:
            left = client.request("GET", f"/v1/health/service/{unique_name}", operation="read")
            assert left.json() == []  # drained and deregistered on close
        with pytest.raises(MeshError):
            mesh.balancer(unique_name)
    finally:
        for inst in instances:
            inst.kill()


def _instances(explanation: Explanation) -> dict[str, object]:
    return {i.id: i for i in explanation.instances}


def test_explain_tells_the_truth_in_each_state(mesh_config, unique_name):
    services = {
        unique_name: ServiceConfig(
            strategy="round_robin",
            detector=DetectorSettings(consecutive_failures=2, base_ejection_time=30.0),
        )
    }
    with mesh_with_instances(mesh_config, unique_name, services=services) as (mesh, instances):
        a, b, c = (inst.name for inst in instances)
        explained = mesh.explain(unique_name)
        assert (explained.registered, explained.eligible, explained.panic) == (3, 3, False)
        assert explained.strategy == "round_robin"
        assert explained.strategy_source == "code"
        assert not explained.stale
        assert explained.age is not None
        assert explained.retry_budget_left == mesh.retry_budget(unique_name).balance()
        assert "3/3 eligible" in str(explained)

        # critical: a TTL check reported critical
        mesh.health(a).report(None, HealthStatus.CRITICAL, "disk full")
        wait_for(lambda: _instances(mesh.explain(unique_name))[a].health == "critical")
        state = _instances(mesh.explain(unique_name))[a]
        assert not state.eligible
        assert state.reasons[0].startswith("critical")

        # maintenance
        mesh.registry.maintenance(b, True, "upgrade")
        wait_for(lambda: _instances(mesh.explain(unique_name))[b].health == "maintenance")
        explained = mesh.explain(unique_name)
        assert _instances(explained)[b].reasons == ("maintenance",)
        # one eligible of two routable (maintenance is never routable): panic mode
        assert explained.eligible == 1
        assert explained.panic is False  # 1 of 2 routable is not below 50%
        mesh.registry.maintenance(b, False)
        mesh.health(a).report(None, HealthStatus.PASSING)
        wait_for(lambda: mesh.explain(unique_name).eligible == 3, what="all back")

        # ejected: two failures in a row (the detector's threshold here)
        instances[2].failing = True
        for _ in range(12):
            mesh.call(unique_name, _raw_get, idempotent=True)
        state = _instances(mesh.explain(unique_name))[c]
        assert not state.eligible
        assert state.ejected_until is not None
        assert state.ejected_until > time.time() + 20
        assert any(r.startswith("ejected until") for r in state.reasons)
        assert "consecutive_failures" in " ".join(state.reasons)

        # panic: two of three critical -> below 50%, the balancer uses every routable one
        instances[2].failing = False
        mesh.health(a).report(None, HealthStatus.CRITICAL)
        mesh.health(b).report(None, HealthStatus.CRITICAL)
        wait_for(lambda: mesh.explain(unique_name).panic, what="panic mode")
        explained = mesh.explain(unique_name)
        assert explained.eligible == 0 or explained.panic
        assert "PANIC" in str(explained)


def test_live_reload_keeps_state(mesh_config, unique_name):
    with mesh_with_instances(mesh_config, unique_name) as (mesh, instances):
        balancer = mesh.balancer(unique_name)
        for _ in range(9):
            mesh.call(unique_name, _raw_get)
        before = {s.endpoint.id: s.requests for s in balancer.stats().endpoints}
        assert sum(before.values()) == 9
        store = mesh.store
        store.set(
            store.layout.service_key(unique_name),
            {"strategy": "least_request", "panic_threshold": 30, "retry": {"attempts": 2}},
        )
        wait_for(lambda: mesh.explain(unique_name).strategy == "least_request", what="the reload")
        assert mesh.balancer(unique_name) is balancer  # the same balancer, reconfigured
        assert balancer.panic_threshold == pytest.approx(0.3)
        assert mesh.retry_policy(unique_name).attempts == 2
        explained = mesh.explain(unique_name)
        assert explained.strategy_source == f"kv:{store.layout.service_key(unique_name)}"
        after = {s.endpoint.id: s.requests for s in balancer.stats().endpoints}
        assert after == before  # request counts and latency state survived the swap

        # an endpoint drained through KV takes no new requests
        drained = instances[0].name
        store.set(store.layout.endpoint_key(unique_name, drained), {"drained": True})
        wait_for(
            lambda: "drained by config" in _instances(mesh.explain(unique_name))[drained].reasons,
            what="the drain",
        )
        served = Counter(mesh.call(unique_name, _raw_get)["instance"] for _ in range(20))
        assert served[drained] == 0
        # a bad write is rejected; the last good configuration stays in force
        client = store.client
        client.request(
            "PUT",
            f"/v1/kv/{store.layout.service_key(unique_name)}",
            operation="write",
            data=b'{"strategy": "fastest"}',
        )
        wait_for(lambda: any(e.kind == "rejected" for e in store.events), what="rejection")
        assert mesh.explain(unique_name).strategy == "least_request"


def test_breaker_thresholds_reload_into_breakers_that_exist(mesh_config, unique_name):
    services = {
        unique_name: ServiceConfig(
            strategy="round_robin",
            detector=DetectorSettings(consecutive_failures=100),  # no ejection in the way
            breaker=BreakerSettings(consecutive_failures=10),
        )
    }
    with mesh_with_instances(mesh_config, unique_name, services=services) as (mesh, instances):
        for _ in range(6):  # every endpoint gets its breaker
            mesh.call(unique_name, _raw_get)
        target = instances[0].name
        endpoint = next(e for e in mesh.balancer(unique_name).endpoints if e.id == target)
        detector = mesh.detector(unique_name)
        breaker = detector.breaker(endpoint)
        assert breaker is not None
        assert breaker.policy.consecutive_failures == 10

        store = mesh.store
        store.set(store.layout.service_key(unique_name), {"breaker": {"consecutive_failures": 2}})
        wait_for(lambda: breaker.policy.consecutive_failures == 2, what="the reload")
        assert detector.breaker(endpoint) is breaker  # reconfigured in place, not replaced

        def reset_on_target(ep: ServiceEndpoint) -> str:
            if ep.id == target:
                raise ConnectionResetError("reset")  # sent, then broken: never retried below
            return "ok"

        failures = 0
        for _ in range(30):  # round robin: every third call lands on the target
            try:
                mesh.call(unique_name, reset_on_target)  # not idempotent: one attempt each
            except RetryExhausted:
                failures += 1
            if breaker.state is not BreakerState.CLOSED:
                break
        assert breaker.state is BreakerState.OPEN
        assert failures == 2  # the new threshold (the old one was 10)
        state = _instances(mesh.explain(unique_name))[target]
        assert state.breaker == "open"
        assert not state.eligible


def test_unknown_service_and_stale_snapshot(dedicated_consul_agent, unique_name):
    config = MeshConfig(address=dedicated_consul_agent.address, kv_prefix=unique_name)
    with mesh_with_instances(config, unique_name, count=2, config_start_mode="defaults") as (
        mesh,
        _,
    ):
        with pytest.raises(NoEndpointsAvailable, match="none registered"):
            mesh.call(f"{unique_name}-nobody", _raw_get)
        assert mesh.explain(f"{unique_name}-nobody").registered == 0
        dedicated_consul_agent.stop()
        explained = wait_for(
            lambda: (e := mesh.explain(unique_name)).stale and e, timeout=15, what="stale"
        )
        assert explained.eligible == 2  # the last known instances are still served
        assert "STALE" in str(explained)
        time.sleep(0.3)
        later = mesh.explain(unique_name)
        assert later.age is not None
        assert explained.age is not None
        assert later.age > explained.age
        assert mesh.call(unique_name, _raw_get)["instance"]  # calls still work

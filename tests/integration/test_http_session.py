"""MeshSession end to end: a real agent, real HTTP servers on loopback, real requests."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import requests
from _mesh_support import mesh_with_instances, wait_for

from lake_mesh_consul._core.breaker import BreakerState
from lake_mesh_consul._core.config import BreakerSettings, DetectorSettings, ServiceConfig
from lake_mesh_consul.errors import MeshError, NoEndpointsAvailable, RetryExhausted
from lake_mesh_consul.http import (
    MeshNoEndpoints,
    MeshRetryExhausted,
    MeshRetryTimeout,
    MeshSession,
    endpoint_of,
)

pytestmark = pytest.mark.integration


def _no_ejection(name: str, **breaker: object) -> dict[str, ServiceConfig]:
    """Service settings: round robin, the breaker as given, the detector out of the way."""
    return {
        name: ServiceConfig(
            strategy="round_robin",
            breaker=BreakerSettings(**breaker),  # type: ignore[arg-type]
            detector=DetectorSettings(consecutive_failures=10_000),
        )
    }


def test_resolves_balances_and_keeps_the_requests_api(mesh_config, unique_name):
    with mesh_with_instances(mesh_config, unique_name) as (mesh, instances):
        hooked: list[int] = []
        with mesh.session() as http:
            served = Counter()
            for i in range(30):
                url = f"http://{unique_name}/items?n={i}"
                if i % 2:
                    url = f"http://{unique_name}.service.consul/items?n={i}"
                response = http.get(
                    url,
                    headers={"X-Test": "yes"},
                    auth=("user", "pw"),
                    hooks={"response": lambda r, *a, **k: hooked.append(r.status_code)},
                    timeout=5,
                )
                assert response.status_code == 200
                answer = response.json()
                served[answer["instance"]] += 1
                assert response.url == url  # the logical URL stays
                assert endpoint_of(response) is not None
                assert endpoint_of(response).id == answer["instance"]
                assert answer["headers"]["X-Test"] == "yes"
                assert answer["headers"]["Authorization"].startswith("Basic ")
                assert answer["host"] == url.split("/")[2]  # Host: the logical name
                assert answer["path"] == f"/items?n={i}"
            assert served == {inst.name: 10 for inst in instances}  # round robin
            assert hooked == [200] * 30
            # Streaming works through the mesh too.
            with http.get(f"http://{unique_name}/stream", stream=True, timeout=5) as response:
                body = b"".join(response.iter_content(16))
            assert json.loads(body)["path"] == "/stream"
            # An explicit Host header wins; a non-mesh URL is left alone.
            answer = http.get(f"http://{unique_name}/", headers={"Host": "custom"}).json()
            assert answer["host"] == "custom"
            direct = http.get(f"http://127.0.0.1:{instances[0].port}/direct", timeout=5)
            assert endpoint_of(direct) is None
            assert direct.json()["instance"] == instances[0].name
        with MeshSession(mesh, preserve_host=False) as http:
            answer = http.get(f"http://{unique_name}/").json()
            assert answer["host"].startswith("127.0.0.1:")


def test_retries_on_another_endpoint_only_when_idempotent(mesh_config, unique_name):
    services = _no_ejection(unique_name, consecutive_failures=1000)
    with mesh_with_instances(mesh_config, unique_name, services=services) as (mesh, instances):
        bad = instances[1]
        bad.failing = True  # 503: a gateway error, retriable for idempotent methods
        with mesh.session() as http:
            for _ in range(30):
                response = http.get(f"http://{unique_name}/read", timeout=5)
                assert response.status_code == 200
                assert response.json()["instance"] != bad.name
            hits = bad.hits
            assert hits >= 5  # round robin kept sending it its share, and retries hid it
            statuses = Counter(
                http.post(f"http://{unique_name}/write", data=b"x", timeout=5).status_code
                for _ in range(30)
            )
            # Not retried: every POST that landed on the failing instance came back as 503.
            assert statuses[503] == bad.hits - hits
            assert statuses[503] >= 5
            assert statuses[200] == 30 - statuses[503]
            # A refused connection never reached the server: retried even for POST.
            bad.failing = False
            instances[2].kill()
            for _ in range(12):
                assert http.post(f"http://{unique_name}/write", data=b"x").status_code == 200


def test_breaker_opens_then_closes(mesh_config, unique_name):
    services = _no_ejection(unique_name, consecutive_failures=3, reset_timeout=0.5)
    with mesh_with_instances(mesh_config, unique_name, services=services) as (mesh, instances):
        bad = instances[0]
        bad.failing = True
        with mesh.session() as http:
            for _ in range(15):
                assert http.get(f"http://{unique_name}/", timeout=5).status_code == 200
            endpoint = next(e for e in mesh.balancer(unique_name).endpoints if e.id == bad.name)
            breaker = mesh.detector(unique_name).breaker(endpoint)
            assert breaker is not None
            assert breaker.state is BreakerState.OPEN
            assert bad.hits == 3  # three failures, then nothing while open
            explained = {i.id: i for i in mesh.explain(unique_name).instances}[bad.name]
            assert explained.breaker == "open"
            assert not explained.eligible
            assert any(r.startswith("breaker open") for r in explained.reasons)

            bad.failing = False
            served = Counter()

            def recovered() -> bool:
                served[http.get(f"http://{unique_name}/", timeout=5).json()["instance"]] += 1
                return breaker.state is BreakerState.CLOSED and served[bad.name] >= 3

            wait_for(recovered, timeout=10, what="the breaker to close and traffic to return")
            assert mesh.explain(unique_name).eligible == 3


def test_errors_are_requests_errors_and_ours(mesh_config, unique_name):
    with (
        mesh_with_instances(mesh_config, unique_name, count=2) as (mesh, instances),
        mesh.session() as http,
    ):
        with pytest.raises(requests.RequestException) as caught:
            http.get(f"http://{unique_name}-nobody/", timeout=5)
        assert isinstance(caught.value, MeshNoEndpoints)
        assert isinstance(caught.value, NoEndpointsAvailable)
        assert isinstance(caught.value, requests.ConnectionError)
        assert caught.value.request is not None
        assert "none registered" in str(caught.value)

        for inst in instances:
            inst.delay = 0.5
        with pytest.raises(requests.Timeout) as timed_out:
            http.get(f"http://{unique_name}/slow", timeout=0.1)
        assert isinstance(timed_out.value, MeshRetryTimeout)
        assert isinstance(timed_out.value, MeshError)
        assert len(timed_out.value.attempts) >= 2  # retried elsewhere before giving up

        for inst in instances:
            inst.kill()
        with pytest.raises(requests.ConnectionError) as refused:
            http.get(f"http://{unique_name}/", timeout=5)
        assert isinstance(refused.value, MeshRetryExhausted)
        assert isinstance(refused.value, RetryExhausted)
        assert {a.endpoint for a in refused.value.attempts} == {i.name for i in instances}


def test_retry_after_is_honoured(mesh_config, unique_name):
    services = {unique_name: ServiceConfig(strategy="round_robin")}
    with mesh_with_instances(mesh_config, unique_name, count=1, services=services) as (
        mesh,
        (only,),
    ):
        only.failing = True
        only.retry_after = "0"
        with mesh.session() as http:
            response = http.get(f"http://{unique_name}/", timeout=5)
        # One instance: the retries went back to it (after Retry-After), then the last 503.
        assert response.status_code == 503
        assert only.hits == 3
        assert response.headers["Retry-After"] == "0"

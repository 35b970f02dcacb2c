"""Pure parts of the mesh and its requests integration: URL routing, timeouts, errors,
re-picks that avoid tried endpoints, explanations. No Consul, no sockets."""

from __future__ import annotations

import pytest
import requests

from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul.errors import (
    Attempt,
    CircuitOpen,
    DeadlineExceeded,
    MeshError,
    NoEndpointsAvailable,
    RetryExhausted,
)
from lake_mesh_consul.http import (
    MeshAdapter,
    MeshCircuitOpen,
    MeshDeadlineExceeded,
    MeshNoEndpoints,
    MeshRetryExhausted,
    MeshRetryTimeout,
    MeshSession,
    _cap,
    _mapped,
    service_of,
)
from lake_mesh_consul.mesh import Explanation, InstanceExplanation, Mesh


@pytest.mark.parametrize(
    ("url", "service"),
    [
        ("http://orders/api/items", "orders"),
        ("https://orders/", "orders"),
        ("http://ORDERS?x=1", "orders"),
        ("http://orders.service.consul/a", "orders"),
        ("http://user:pw@orders/a", "orders"),
        ("http://localhost/", None),
        ("http://orders:8080/", None),
        ("http://127.0.0.1/", None),
        ("http://[::1]/", None),
        ("http://api.example.com/", None),
        ("ftp://orders/", None),
        ("orders/x", None),
    ],
)
def test_service_of(url, service):
    assert service_of(url) == service


def test_service_allow_list():
    assert service_of("http://orders/", ["orders"]) == "orders"
    assert service_of("http://billing/", ["orders"]) is None
    assert service_of("http://billing.service.consul/", ["orders"]) == "billing"


@pytest.mark.parametrize(
    ("timeout", "attempt", "expected"),
    [
        (None, None, None),
        (None, 2.0, 2.0),
        (5, 2.0, 2.0),
        (1, 2.0, 1.0),
        ((3, 10), 2.0, (2.0, 2.0)),
        ((1, None), 2.0, (1.0, 2.0)),
        (7, None, 7),
    ],
)
def test_timeout_is_capped_by_the_attempt(timeout, attempt, expected):
    assert _cap(timeout, attempt) == expected


def test_errors_are_in_both_trees():
    request = requests.Request("GET", "http://orders/").prepare()
    cases = [
        (NoEndpointsAvailable("orders", "all critical"), MeshNoEndpoints, requests.ConnectionError),
        (CircuitOpen("orders-1", 3.0), MeshCircuitOpen, requests.ConnectionError),
        (DeadlineExceeded(1.0, ()), MeshDeadlineExceeded, requests.Timeout),
        (
            RetryExhausted([Attempt(1, "a", requests.ConnectionError("refused"), 0.01)]),
            MeshRetryExhausted,
            requests.ConnectionError,
        ),
        (
            RetryExhausted([Attempt(1, "a", requests.ReadTimeout("slow"), 0.01)]),
            MeshRetryTimeout,
            requests.Timeout,
        ),
    ]
    for original, cls, foreign in cases:
        mapped = _mapped(original, request)
        assert type(mapped) is cls
        assert isinstance(mapped, foreign)
        assert isinstance(mapped, requests.RequestException)
        assert isinstance(mapped, MeshError)
        assert isinstance(mapped, type(original))
        assert mapped.request is request
        assert str(mapped) == str(original)
    assert _mapped(ValueError("x"), request) is None


def test_session_routes_only_mesh_urls():
    mesh = Mesh(MeshConfig(address="127.0.0.1:1"), watch_config=False)  # no I/O yet
    try:
        with MeshSession(mesh, services=["orders"]) as session:
            assert isinstance(session.get_adapter("http://orders/x"), MeshAdapter)
            assert isinstance(session.get_adapter("http://orders.service.consul/"), MeshAdapter)
            assert not isinstance(session.get_adapter("http://billing/"), MeshAdapter)
            assert not isinstance(session.get_adapter("http://localhost:8500/"), MeshAdapter)
            with pytest.raises(requests.exceptions.InvalidURL):
                session.mesh_adapter.send(requests.Request("GET", "http://a.b/").prepare())
    finally:
        mesh.close()


# The retry path's re-picks and single recording moved with the request path into the
# Route (tests/unit/test_route.py, test_retries_repick_untried_endpoints_and_record_...).


def test_explanation_renders_every_state():
    instance = InstanceExplanation(
        id="web-1",
        address="10.0.0.1:80",
        health="passing",
        eligible=False,
        reasons=("ejected until 12:00:00 (30.0s left; consecutive_failures, ejection #1)",),
        breaker="open",
        breaker_retry_after=3.0,
        ejected_until=1.0,
        ejection_reason="consecutive_failures",
        outstanding=0,
        latency_ms=12.0,
        requests=10,
        failures=5,
        weight=0.0,
        slow_start=1.0,
    )
    explained = Explanation(
        service="web",
        strategy="peak_ewma",
        strategy_source="kv:lake-mesh/services/web",
        registered=1,
        eligible=0,
        panic=False,
        panic_threshold=50.0,
        reason="all ejected or circuit open",
        stale=True,
        age=12.5,
        snapshot_source="consul",
        discovery_error="connection refused",
        retry_budget_left=7,
        retry_attempts=3,
        per_try_timeout=None,
        deadline=15.0,
        config_stale=False,
        config_index=9,
        instances=(instance,),
        at=0.0,
    )
    text = str(explained)
    assert "0/1 eligible" in text
    assert "STALE snapshot (12.5s old; connection refused)" in text
    assert "a pick would fail: all ejected or circuit open" in text
    assert "retry budget 7 left" in text
    assert "ejected until 12:00:00" in text
    data = explained.to_dict()
    assert data["instances"][0]["reasons"] == list(instance.reasons)
    assert data["strategy_source"] == "kv:lake-mesh/services/web"

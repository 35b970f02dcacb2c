"""The httpx transports' own logic: routing, rewriting, retries, errors (no network).

The mesh is a fake of the two things the transports ask of it (``route``/``aroute`` and
``clock``) around a real Consul-free Route on a FakeClock; the wire is httpx's MockTransport.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest

from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.retry import RetryPolicy
from lake_mesh_consul._core.route import Route, RouteSettings
from lake_mesh_consul.errors import MeshError, NoEndpointsAvailable, RetryExhausted
from lake_mesh_consul.httpx import (
    AsyncMeshTransport,
    MeshNoEndpoints,
    MeshRetryExhausted,
    MeshTransport,
    endpoint_of,
)
from lake_mesh_consul.testing import FakeClock


class FakeMesh:
    """What the transports use of a Mesh: one route per service, and the clock."""

    def __init__(self, routes: dict[str, Route], clock: FakeClock) -> None:
        self.routes = routes
        self.clock = clock

    def route(self, service: str) -> Route:
        return self.routes[service]

    async def aroute(self, service: str) -> Route:
        return self.routes[service]


def _mesh(n: int = 3) -> tuple[Any, list[ServiceEndpoint]]:
    clock = FakeClock(autojump=True)
    endpoints = [
        ServiceEndpoint.create(f"e{i}", "10.0.0.1", 8000 + i, service="orders") for i in range(n)
    ]
    settings = RouteSettings(
        strategy="round_robin", retry=RetryPolicy(attempts=3, backoff_base=0.0, backoff_max=0.0)
    )
    route = Route("orders", settings, endpoints=endpoints, clock=clock, rng=random.Random(1))
    empty = Route("empty", settings, clock=clock)
    return FakeMesh({"orders": route, "empty": empty}, clock), endpoints


def _echo(status_of: dict[str, int] | None = None) -> tuple[list[dict[str, Any]], Any]:
    """A handler answering JSON about what it received; ``seen`` keeps each as sent."""
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        host = f"{request.url.host}:{request.url.port}"
        answer = {
            "to": host,
            "url_host": request.url.host,
            "host": request.headers["Host"],
            "timeout": dict(request.extensions.get("timeout", {})),
        }
        seen.append(answer)
        return httpx.Response((status_of or {}).get(host, 200), json=answer)

    return seen, handler


@pytest.mark.parametrize(
    ("url", "routed"),
    [
        ("http://orders/api?x=1", True),
        ("http://orders.service.consul/api", True),
        ("http://ORDERS/api", True),
        ("http://localhost/api", False),
        ("http://orders:8080/api", False),
        ("http://api.example.com/", False),
        ("http://127.0.0.1/", False),
    ],
)
def test_routes_exactly_the_mesh_urls(url: str, routed: bool) -> None:
    mesh, _ = _mesh()
    seen, handler = _echo()
    with httpx.Client(transport=MeshTransport(mesh, inner=httpx.MockTransport(handler))) as c:
        response = c.get(url)
    assert response.status_code == 200
    sent = seen[-1]
    assert (sent["url_host"] == "10.0.0.1") is routed
    assert (endpoint_of(response) is not None) is routed
    assert str(response.request.url) == str(httpx.URL(url))  # the logical URL stays


def test_host_header_is_the_logical_name_and_timeouts_are_capped() -> None:
    mesh, _ = _mesh()
    mesh.routes["orders"].configure(
        RouteSettings(strategy="round_robin", retry=RetryPolicy(per_try_timeout=0.5))
    )
    seen, handler = _echo()
    transport = MeshTransport(mesh, inner=httpx.MockTransport(handler))
    with httpx.Client(transport=transport, timeout=5.0) as c:
        answer = c.get("http://orders.service.consul/x").json()
    assert answer["host"] == "orders.service.consul"
    assert set(seen[-1]["timeout"].values()) == {0.5}
    other = MeshTransport(mesh, inner=httpx.MockTransport(handler), preserve_host=False)
    with httpx.Client(transport=other) as c:
        assert c.get("http://orders/x").json()["host"].startswith("10.0.0.1:")
        assert c.get("http://orders/x", headers={"Host": "mine"}).json()["host"] == "mine"


def test_a_503_is_retried_on_another_endpoint_and_the_others_closed() -> None:
    mesh, endpoints = _mesh()
    bad = endpoints[0].host_port
    _, handler = _echo({bad: 503})
    with httpx.Client(transport=MeshTransport(mesh, inner=httpx.MockTransport(handler))) as c:
        for _ in range(6):
            response = c.get("http://orders/x")
            assert response.status_code == 200
            assert response.json()["to"] != bad


def test_a_post_is_not_retried_after_it_was_sent() -> None:
    mesh, _ = _mesh()
    sent: list[str] = []

    def reset(request: httpx.Request) -> httpx.Response:
        sent.append(request.method)
        raise httpx.ReadError("connection reset", request=request)

    with httpx.Client(transport=MeshTransport(mesh, inner=httpx.MockTransport(reset))) as c:
        with pytest.raises(httpx.ReadError):  # not retried: raised as httpx raised it
            c.post("http://orders/x", content=b"order")
        assert sent == ["POST"]


def test_errors_belong_to_both_trees() -> None:
    mesh, _ = _mesh()

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request) from ConnectionRefusedError()

    with httpx.Client(transport=MeshTransport(mesh, inner=httpx.MockTransport(refuse))) as c:
        with pytest.raises(MeshRetryExhausted) as caught:
            c.get("http://orders/x")
        assert isinstance(caught.value, httpx.TransportError)
        assert isinstance(caught.value, RetryExhausted)
        assert len(caught.value.attempts) == 3
        assert caught.value.request.url.host == "orders"
        with pytest.raises(MeshNoEndpoints) as none:
            c.get("http://empty/x")
        assert isinstance(none.value, httpx.ConnectError)
        assert isinstance(none.value, NoEndpointsAvailable)
        assert isinstance(none.value, MeshError)


def test_the_async_transport_follows_the_same_rules() -> None:
    mesh, endpoints = _mesh()
    bad = endpoints[1].host_port
    _, handler = _echo({bad: 503})

    async def main() -> None:
        transport = AsyncMeshTransport(mesh, inner=httpx.MockTransport(handler))
        async with httpx.AsyncClient(transport=transport) as c:
            answers = [await c.get("http://orders/x") for _ in range(6)]
            assert all(r.status_code == 200 and r.json()["to"] != bad for r in answers)
            assert {endpoint_of(r) for r in answers} == {endpoints[0], endpoints[2]}
            direct = await c.get("http://localhost/x")
            assert endpoint_of(direct) is None
            with pytest.raises(MeshNoEndpoints):
                await c.get("http://empty/x")

    asyncio.run(main())
    for instance in mesh.routes["orders"].explain().instances:
        assert instance.balancer.outstanding == 0


def test_retry_after_is_honoured_between_attempts() -> None:
    mesh, _ = _mesh()

    def busy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": "2"}, content=b"busy")

    with httpx.Client(transport=MeshTransport(mesh, inner=httpx.MockTransport(busy))) as c:
        response = c.get("http://orders/x")
    assert response.status_code == 503  # attempts ran out on a status: the last response
    assert len(mesh.clock.sleeps) == 2
    assert all(wait >= 2.0 for wait in mesh.clock.sleeps)  # at least the server's 2 s

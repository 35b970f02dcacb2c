"""The error tree and how the adapter maps foreign errors onto it (no agent needed)."""

from __future__ import annotations

import inspect

import pytest
import requests
import requests.adapters

from lake_mesh_consul import errors
from lake_mesh_consul._consul.client import ConsulClient, ConsulResponse
from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul.errors import (
    ConfigurationError,
    ConsulError,
    ConsulNotFound,
    ConsulStatusError,
    ConsulTLSError,
    ConsulUnavailable,
    InvalidSetting,
    MeshError,
    PermissionDenied,
    ProvisioningError,
)

TOKEN = "9a8b7c6d-aaaa-bbbb-cccc-ddddeeeeffff"


class FakeAdapter(requests.adapters.BaseAdapter):
    """Answers every request with a fixed status/body, or raises a fixed exception."""

    def __init__(self, status=200, body=b"", headers=None, exc=None):
        super().__init__()
        self.status, self.body, self.headers, self.exc = status, body, headers or {}, exc
        self.requests: list[requests.PreparedRequest] = []

    def send(self, request, **kwargs):
        self.requests.append(request)
        self.kwargs = kwargs
        if self.exc is not None:
            raise self.exc
        response = requests.Response()
        response.status_code = self.status
        response._content = self.body
        response.headers.update(self.headers)
        response.url = request.url
        response.request = request
        return response

    def close(self):
        pass


def client_with(adapter, **config):
    client = ConsulClient(MeshConfig(address="127.0.0.1:8500", token=TOKEN, **config))
    client.session.mount("http://", adapter)
    client.session.mount("https://", adapter)
    return client


# --- the tree ------------------------------------------------------------------------------


def test_every_error_is_a_mesh_error_and_in_the_docstring_tree():
    classes = [
        obj
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == errors.__name__
    ]
    assert {c.__name__ for c in classes} <= set(errors.__all__)
    for cls in classes:
        assert issubclass(cls, MeshError)
        assert cls.__name__ in errors.__doc__, cls
        assert cls.__doc__


def test_configuration_errors_are_value_errors():
    assert issubclass(InvalidSetting, ConfigurationError)
    assert issubclass(InvalidSetting, ValueError)
    assert str(InvalidSetting("CONSUL_HTTP_ADDR", "bad")) == "CONSUL_HTTP_ADDR: bad"


def test_messages_carry_what_a_caller_needs():
    unavailable = ConsulUnavailable("http://127.0.0.1:8500", "connection refused")
    assert "http://127.0.0.1:8500" in str(unavailable)
    assert "connection refused" in str(unavailable)
    denied = PermissionDenied("register service 'web'")
    assert "register service 'web'" in str(denied)
    status = ConsulStatusError(500, "x" * 2000, "read key 'k'")
    assert status.code == 500
    assert len(status.body) == 2000
    assert len(str(status)) < 700
    assert "read key 'k'" in str(status)
    assert isinstance(ConsulNotFound(404, "", ""), ConsulStatusError)
    assert isinstance(ConsulTLSError("a", "b"), ConsulUnavailable)
    assert isinstance(ProvisioningError("x"), MeshError)


# --- the adapter's mapping -----------------------------------------------------------------


def test_403_is_permission_denied_naming_the_operation_not_the_token():
    with client_with(FakeAdapter(403, b"Permission denied")) as client:
        with pytest.raises(PermissionDenied) as denied:
            client.request("PUT", "/v1/kv/x", operation="write key 'x'", data=b"1")
        assert "write key 'x'" in str(denied.value)
        assert TOKEN not in str(denied.value)
        assert TOKEN not in repr(denied.value)
        with pytest.raises(PermissionDenied) as mapped:
            client.call("read key 'x'", client.consul.kv.get, "x")
    assert isinstance(mapped.value.__cause__, Exception)
    assert TOKEN not in str(mapped.value)


def test_404_is_not_found_unless_allowed():
    with client_with(FakeAdapter(404, b"")) as client:
        with pytest.raises(ConsulNotFound):
            client.request("GET", "/v1/kv/x", operation="read")
        assert client.request("GET", "/v1/kv/x", operation="read", allow_404=True).status == 404


@pytest.mark.parametrize("status", [400, 409, 429, 500, 503])
def test_other_statuses_are_status_errors_with_code_and_body(status):
    with (
        client_with(FakeAdapter(status, b"rpc error: no leader")) as client,
        pytest.raises(ConsulStatusError) as info,
    ):
        client.request("GET", "/v1/health/service/web", operation="read service 'web'")
    assert info.value.code == status
    assert info.value.body == "rpc error: no leader"
    assert "read service 'web'" in str(info.value)


def test_python_consul2_status_errors_are_mapped():
    with client_with(FakeAdapter(500, b"boom")) as client, pytest.raises(ConsulStatusError) as info:
        client.call("read key", client.consul.kv.get, "x")
    assert info.value.code == 500
    assert info.value.__cause__ is not None


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (requests.exceptions.ConnectionError("Connection refused"), "connection refused"),
        (requests.exceptions.ConnectTimeout("slow"), "connect timed out"),
        (requests.exceptions.ReadTimeout("slow"), "no answer in time"),
        (requests.exceptions.ConnectionError("Connection reset by peer"), "connection reset"),
    ],
)
def test_transport_failures_are_consul_unavailable_naming_the_address(exc, words):
    with client_with(FakeAdapter(exc=exc)) as client:
        with pytest.raises(ConsulUnavailable) as info:
            client.request("GET", "/v1/status/leader", operation="read leader")
        with pytest.raises(ConsulUnavailable):
            client.call("read agent self", client.consul.agent.self)
    assert info.value.address == "http://127.0.0.1:8500"
    assert words in str(info.value)
    assert "read leader" in str(info.value)
    assert info.value.__cause__ is exc


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("certificate verify failed", "CONSUL_CACERT"),
        ("wrong version number", "not serving HTTPS"),
        ("tlsv13 alert certificate required", "CONSUL_CLIENT_CERT"),
    ],
)
def test_tls_failures_are_tls_errors_with_a_hint(text, hint):
    with (
        client_with(FakeAdapter(exc=requests.exceptions.SSLError(text))) as client,
        pytest.raises(ConsulTLSError) as info,
    ):
        client.request("GET", "/v1/status/leader", operation="read leader")
    assert hint in str(info.value)


def test_token_travels_in_the_header_only():
    adapter = FakeAdapter(200, b"{}")
    with client_with(adapter) as client:
        client.call("read agent self", client.consul.agent.self)
        client.request("GET", "/v1/status/leader", operation="read leader")
    for request in adapter.requests:
        assert request.headers["X-Consul-Token"] == TOKEN
        assert TOKEN not in request.url


def test_blocking_wait_derives_the_read_timeout():
    adapter = FakeAdapter(200, b"[]", headers={"X-Consul-Index": "42"})
    with client_with(adapter) as client:
        response = client.request(
            "GET", "/v1/kv/x", operation="watch", params={"index": 7}, wait=60
        )
        assert "wait=60s" in adapter.requests[-1].url
        assert adapter.kwargs["timeout"][1] > 60 + 60 / 16
        client.call("watch", client.consul.kv.get, "x", index=7, wait="120s")
        assert adapter.kwargs["timeout"][1] > 120 + 120 / 16
    assert response.index == 42


def test_response_headers_are_parsed_defensively():
    raw = requests.Response()
    raw.status_code = 200
    raw._content = b"{}"
    raw.headers.update(
        {"X-Consul-Index": "bogus", "X-Consul-KnownLeader": "true", "X-Consul-LastContact": "250"}
    )
    parsed = ConsulResponse.from_requests(raw)
    assert parsed.index == 0
    assert parsed.known_leader is True
    assert parsed.last_contact == 0.25
    assert parsed.json() == {}


def test_consul_error_hierarchy_catches_all_adapter_errors():
    for exc in (
        ConsulUnavailable("a"),
        PermissionDenied("op"),
        ConsulStatusError(500, ""),
        ConsulNotFound(404, ""),
    ):
        assert isinstance(exc, ConsulError)

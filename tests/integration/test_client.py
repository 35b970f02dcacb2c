"""The adapter against a real agent: self, leader, KV, blocking queries, ACLs, dead agents."""

from __future__ import annotations

import threading
import time

import pytest

from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul.errors import ConsulNotFound, ConsulUnavailable, PermissionDenied
from lake_mesh_consul.testing._agent import free_port

pytestmark = pytest.mark.integration


def test_agent_self_names_the_datacenter(mesh_config, consul_agent):
    with ConsulClient(mesh_config) as client:
        me = client.agent_self()
    assert me["Config"]["Datacenter"] == consul_agent.datacenter
    assert me["Config"]["Version"]


def test_leader_is_known(mesh_config):
    with ConsulClient(mesh_config) as client:
        assert ":" in client.leader()


def test_kv_round_trip_through_both_paths(mesh_config, unique_name):
    key = f"{unique_name}/greeting"
    with ConsulClient(mesh_config) as client:
        put = client.request("PUT", f"/v1/kv/{key}", operation="write", data=b"hello")
        assert put.json() is True
        index, item = client.call("read key", client.consul.kv.get, key)
        assert item["Value"] == b"hello"
        assert int(index) > 0
        raw = client.request("GET", f"/v1/kv/{key}", operation="read", params={"raw": "1"})
        assert raw.body == b"hello"
        assert raw.index >= int(index)
        assert raw.known_leader is True
        client.request("DELETE", f"/v1/kv/{key}", operation="delete")
        with pytest.raises(ConsulNotFound):
            client.request("GET", f"/v1/kv/{key}", operation="read deleted key")
        missing = client.request("GET", f"/v1/kv/{key}", operation="read", allow_404=True)
        assert missing.status == 404


def test_blocking_query_returns_as_soon_as_the_index_moves(mesh_config, unique_name):
    key = f"{unique_name}/watched"
    with ConsulClient(mesh_config) as client:
        client.request("PUT", f"/v1/kv/{key}", operation="write", data=b"1")
        first = client.request("GET", f"/v1/kv/{key}", operation="read")

        def write_later() -> None:
            time.sleep(0.3)
            client.request("PUT", f"/v1/kv/{key}", operation="write", data=b"2")

        writer = threading.Thread(target=write_later, daemon=True)
        started = time.monotonic()
        writer.start()
        second = client.request(
            "GET", f"/v1/kv/{key}", operation="watch", params={"index": first.index}, wait=30
        )
        elapsed = time.monotonic() - started
        writer.join(5)
    assert second.index > first.index
    assert second.json()[0]["Value"] is not None
    assert 0.2 < elapsed < 10, f"blocking query took {elapsed:.2f}s"


def test_blocking_query_read_timeout_exceeds_wait_and_jitter(mesh_config):
    with ConsulClient(mesh_config) as client:
        connect, read = client.timeout_for("5m")
    assert read > 300 + 300 / 16
    assert connect == mesh_config.connect_timeout


def test_acl_denial_maps_to_permission_denied(consul_acl_agent, unique_name):
    anonymous = MeshConfig(address=consul_acl_agent.address)
    with ConsulClient(anonymous) as client, pytest.raises(PermissionDenied) as info:
        client.request(
            "PUT", f"/v1/kv/{unique_name}", operation=f"write {unique_name!r}", data=b"x"
        )
    assert unique_name in str(info.value)
    with ConsulClient(anonymous) as client, pytest.raises(PermissionDenied):
        client.call("read agent self", client.consul.agent.self)


def test_acl_denial_never_shows_the_token(consul_acl_agent, unique_name):
    wrong = "0b3c6f0e-1111-2222-3333-444455556666"
    config = MeshConfig(address=consul_acl_agent.address, token=wrong)
    with ConsulClient(config) as client, pytest.raises(PermissionDenied) as info:
        client.request("PUT", f"/v1/kv/{unique_name}", operation="write", data=b"x")
    assert wrong not in str(info.value)
    assert wrong not in repr(info.value)
    assert wrong not in repr(config)


def test_management_token_is_allowed(consul_acl_agent, unique_name):
    config = MeshConfig(address=consul_acl_agent.address, token=consul_acl_agent.token)
    with ConsulClient(config) as client:
        client.request("PUT", f"/v1/kv/{unique_name}", operation="write", data=b"x")
        got = client.request("GET", f"/v1/kv/{unique_name}", operation="read")
    assert got.status == 200


def test_unreachable_agent_is_consul_unavailable_naming_the_address():
    port = free_port()
    config = MeshConfig(address=f"127.0.0.1:{port}", connect_timeout=1)
    with ConsulClient(config) as client:
        with pytest.raises(ConsulUnavailable) as info:
            client.leader()
        assert f"127.0.0.1:{port}" in str(info.value)
        with pytest.raises(ConsulUnavailable):
            client.call("read agent self", client.consul.agent.self)
    assert info.value.address == f"http://127.0.0.1:{port}"
    assert info.value.__cause__ is not None

"""Our validation agrees with a real Consul agent on the limits it enforces (issue 14.5).

Each pair: the raw agent API (no validation of ours in the way) shows what Consul accepts
or refuses, and ServiceMetadata accepts or refuses the same input before any request.
"""

from __future__ import annotations

from typing import Any

import pytest

from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul._consul.registry import ServiceRegistry, encode_service
from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul._core.registration import HttpCheck, ServiceMetadata, TtlCheck
from lake_mesh_consul.errors import ConsulStatusError, InvalidSetting

pytestmark = pytest.mark.integration


def _consul_accepts(client: ConsulClient, body: dict[str, Any]) -> bool:
    try:
        client.request("PUT", "/v1/agent/service/register", operation="register", json=body)
    except ConsulStatusError as exc:
        if exc.code != 400:
            raise
        return False
    client.request("PUT", f"/v1/agent/service/deregister/{body['ID']}", operation="deregister")
    return True


def _we_accept(name: str, meta: dict[str, str]) -> bool:
    try:
        ServiceMetadata(name, 8080, id=f"{name}-1", meta=meta)
    except InvalidSetting:
        return False
    return True


@pytest.mark.parametrize(
    "value",
    ["a" * 512, "a" * 513, "é" * 256, "é" * 257, "é" * 512, "😀" * 128, "😀" * 129],
    ids=[
        "512 ascii",
        "513 ascii",
        "256 e-acute",
        "257 e-acute",
        "512 e-acute",
        "128 emoji",
        "129 emoji",
    ],
)
def test_meta_value_limits_match_consul(
    mesh_config: MeshConfig, unique_name: str, value: str
) -> None:
    body = {"Name": unique_name, "ID": f"{unique_name}-1", "Port": 8080, "Meta": {"k": value}}
    with ConsulClient(mesh_config) as client:
        assert _we_accept(unique_name, {"k": value}) is _consul_accepts(client, body)


def test_go_durations_we_send_are_accepted_by_consul(
    mesh_config: MeshConfig, unique_name: str
) -> None:
    # "1ns" used to be sent as "1e-06ms": Consul answered 400 (invalid duration).
    service = ServiceMetadata(
        unique_name,
        8080,
        id=f"{unique_name}-1",
        address="127.0.0.1",
        checks=(
            HttpCheck(url="http://127.0.0.1:1/", interval="1ns", timeout="1.5us"),
            TtlCheck(id="ttl", ttl="2562047h"),
        ),
    )
    assert [c.get("Interval", c.get("TTL")) for c in encode_service(service)["Checks"]] == [
        "1ns",
        "2562047h",
    ]
    with ServiceRegistry(mesh_config, drain_on_close=False) as registry:
        registry.register(service)
        registry.deregister(service.id)

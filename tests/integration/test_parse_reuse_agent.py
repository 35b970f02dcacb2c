"""Against a real agent: after a change, unchanged instances are the very same objects.

HealthEntryParser trusts Consul to raise the ModifyIndex of a node, service or check on every
write that changes it; this checks that Consul does so for the writes discovery relies on
(a TTL check's status, a re-registration with a new port) and that nothing else is rebuilt.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence

import pytest
from _consul_support import eventually, register

from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul._consul.discovery import ServiceDiscovery
from lake_mesh_consul._core.changes import EndpointChanges
from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.health import HealthStatus

pytestmark = pytest.mark.integration


def test_a_change_rebuilds_only_the_instance_that_changed(
    mesh_config: MeshConfig, unique_name: str
) -> None:
    name = unique_name
    snapshots: list[Sequence[ServiceEndpoint]] = []
    seen = threading.Condition()

    def on_change(snapshot: Sequence[ServiceEndpoint]) -> None:
        with seen:
            snapshots.append(snapshot)
            seen.notify_all()

    def latest() -> dict[str, ServiceEndpoint]:
        with seen:
            return {e.id: e for e in snapshots[-1]} if snapshots else {}

    with (
        ConsulClient(mesh_config) as client,
        ServiceDiscovery(mesh_config, rng=random.Random(3), wait=30) as discovery,
    ):
        for i in range(4):
            register(
                client, name, f"i{i}", port=9000 + i, Check={"TTL": "10m", "Status": "passing"}
            )
        discovery.watch(name, on_change, passing_only=False)
        assert eventually(lambda: len(latest()) == 4)
        before = latest()

        client.request("PUT", "/v1/agent/check/fail/service:i2", operation="ttl")
        assert eventually(lambda: latest()["i2"].health is HealthStatus.CRITICAL)
        after = latest()
        assert [k for k in before if after[k] is before[k]] == ["i0", "i1", "i3"]

        register(client, name, "i0", port=9100, Check={"TTL": "10m", "Status": "passing"})
        assert eventually(lambda: latest()["i0"].port == 9100)
        again = latest()
        assert again["i1"] is before["i1"]
        assert again["i3"] is before["i3"]
        assert again["i2"] is after["i2"]


def test_a_health_flip_reaches_the_listener_as_a_change_set(
    mesh_config: MeshConfig, unique_name: str
) -> None:
    """subscribe_changes: the flip of one instance is handed down as its position alone.

    (Service ids of its own: an agent keeps a re-registered TTL check's status.)
    """
    name = unique_name
    calls: list[tuple[tuple[ServiceEndpoint, ...], EndpointChanges | None]] = []
    seen = threading.Condition()

    def on_change(snapshot: tuple[ServiceEndpoint, ...], changes: EndpointChanges | None) -> None:
        with seen:
            calls.append((snapshot, changes))
            seen.notify_all()

    def health_of(sid: str) -> HealthStatus | None:
        with seen:
            last = calls[-1][0] if calls else ()
        return next((e.health for e in last if e.id == sid), None)

    with (
        ConsulClient(mesh_config) as client,
        ServiceDiscovery(mesh_config, rng=random.Random(3), wait=30) as discovery,
    ):
        for i in range(4):
            register(
                client, name, f"c{i}", port=9200 + i, Check={"TTL": "10m", "Status": "passing"}
            )
        source = discovery.source(name, passing_only=False, timeout=10)
        assert eventually(lambda: len(source.snapshot()) == 4, timeout=20)
        unsubscribe = source.subscribe_changes(on_change)
        assert eventually(lambda: health_of("c2") is HealthStatus.PASSING, timeout=20)
        assert calls[0][1] is None  # the first call: nothing to compare with
        client.request("PUT", "/v1/agent/check/fail/service:c2", operation="ttl")
        assert eventually(lambda: health_of("c2") is HealthStatus.CRITICAL, timeout=20)
        with seen:
            (before, _), (after, changes) = calls[-2], calls[-1]
        assert changes is not None
        assert changes.applies_to(before, after)
        assert changes.in_place
        assert [after[i].id for i in changes.changed] == ["c2"]
        unsubscribe()

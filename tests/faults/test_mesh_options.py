"""Mesh takes the discovery options the README promises for ServiceDiscovery (issue 12.6).

``persist_dir``: a Mesh that saw a service keeps its snapshot on disk; a new process's Mesh
started while the agent is DOWN routes to those instances at once (source ``persisted``),
where a Mesh without ``persist_dir`` gets DiscoveryTimeout. The other options
(``invalidate_after``, ``failover``, ``consistency``, ``max_stale``, ``cached``) are handed
to ServiceDiscovery the same way.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lake_mesh_consul._consul.registry import ServiceRegistry
from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul._core.registration import ServiceMetadata
from lake_mesh_consul.errors import DiscoveryTimeout
from lake_mesh_consul.mesh import Mesh
from lake_mesh_consul.testing.plugin import ConsulAgentHandle


def test_persist_dir_routes_a_start_while_the_agent_is_down(
    dedicated_consul_agent: ConsulAgentHandle, unique_name: str, tmp_path: Path
) -> None:
    agent = dedicated_consul_agent
    config = MeshConfig(address=agent.address, kv_prefix=unique_name)
    ports = {32001, 32002}
    with ServiceRegistry(config, drain_on_close=False) as registry:
        for port in ports:
            registry.register(ServiceMetadata(unique_name, port, address="127.0.0.1"))
    with Mesh(config, persist_dir=tmp_path, drain_on_sigterm=False) as seen:
        deadline = time.monotonic() + 10
        while seen.balancer(unique_name).stats().registered < len(ports):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    agent.stop()
    options = {"config_start_mode": "defaults", "discovery_timeout": 2.0}
    with Mesh(config, persist_dir=tmp_path, drain_on_sigterm=False, **options) as restarted:
        served = {restarted.call(unique_name, lambda ep: ep.port) for _ in range(10)}
        explained = restarted.explain(unique_name)
    with (
        Mesh(config, drain_on_sigterm=False, **options) as forgetful,
        pytest.raises(DiscoveryTimeout),
    ):
        forgetful.balancer(unique_name)
    print(f"\nagent down at start: persisted snapshot served {sorted(served)}")
    assert served == ports
    assert explained.snapshot_source == "persisted"
    assert explained.stale


@pytest.mark.parametrize("dedicated", [0, 2])
def test_dedicated_watches_sets_the_thread_budget(
    consul_agent: ConsulAgentHandle, unique_name: str, dedicated: int
) -> None:
    config = MeshConfig(address=consul_agent.address, kv_prefix=unique_name)
    names = [f"{unique_name}-{i}" for i in range(4)]
    with ServiceRegistry(config, drain_on_close=False) as registry:
        for port, name in enumerate(names, start=32100):
            registry.register(ServiceMetadata(name, port, address="127.0.0.1"))
        try:
            with Mesh(config, dedicated_watches=dedicated, drain_on_sigterm=False) as mesh:
                for name in names:
                    assert mesh.balancer(name).stats().registered == 1
                hub = mesh.discovery.hub
                multiplexed, threads = hub.multiplexed, hub.threads
        finally:
            for name in names:
                for service in registry.registered:
                    if service.name == name:
                        registry.deregister(service.id)
    print(f"\ndedicated_watches={dedicated}: {multiplexed} of 4 multiplexed, {threads} threads")
    assert multiplexed == len(names) - dedicated

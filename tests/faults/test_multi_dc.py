"""Datacenter failover between two real, WAN-joined datacenters.

``dc1`` and ``dc2`` are one-server clusters (:class:`ConsulCluster` with ``wan_join``), shared
by the module. Promises checked here:

* ``ServiceDiscovery(failover=("dc2",))`` on dc1's agent serves dc1's instances while one is
  healthy; when all of them go critical (TTL check failed) or are deregistered it serves
  dc2's (``source == "failover"``, ``endpoint.datacenter == "dc2"``) within a bounded time,
  and goes back to dc1 when dc1 recovers; the same with ``passing_only=False`` (the mesh's
  query), where an all-critical dc1 must fail over too;
* ``endpoints(name, dc="dc2")`` from dc1's agent returns dc2's instances;
* a query's own ``failover`` list overrides the discovery's;
* a Mesh whose ServiceConfig sets ``failover_datacenters`` picks dc2's endpoints when dc1
  has none.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from lake_mesh_consul._consul.discovery import ServiceDiscovery, ServiceSnapshot
from lake_mesh_consul._core.config import ServiceConfig
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul.mesh import Mesh
from lake_mesh_consul.testing.cluster import ClusterMember, ConsulCluster

from ._loops import until
from .conftest import _binary

#: Seconds within which a switch between datacenters must be served (measured: tens of ms).
SWITCH_BOUND = 5.0


@pytest.fixture(scope="module")
def two_dcs() -> Iterator[tuple[ConsulCluster, ConsulCluster]]:
    """dc1 and dc2, one server each, WAN-joined (dc2's server joins dc1's)."""
    binary = _binary()
    started = time.monotonic()
    with (
        ConsulCluster(servers=1, clients=0, binary=binary, datacenter="dc1") as dc1,
        ConsulCluster(servers=1, clients=0, binary=binary, datacenter="dc2", wan_join=dc1) as dc2,
    ):
        print(f"\ndc1 + dc2 up and WAN-joined in {time.monotonic() - started:.2f}s")
        assert set(dc1.datacenters()) == {"dc1", "dc2"}
        yield dc1, dc2


def _register(agent: ClusterMember, name: str, service_id: str, port: int) -> None:
    """An instance with a TTL check (``service:<id>``), passing from the start."""
    answer = agent.api(
        "PUT",
        "/v1/agent/service/register",
        body={
            "Name": name,
            "ID": service_id,
            "Address": "127.0.0.1",
            "Port": port,
            "Check": {"TTL": "300s", "Status": "passing"},
        },
    )
    assert answer.status == 200, answer


def _ttl(agent: ClusterMember, service_id: str, status: str) -> None:
    answer = agent.api("PUT", f"/v1/agent/check/{status}/service:{service_id}")
    assert answer.status == 200, answer


def _deregister(agent: ClusterMember, service_id: str) -> None:
    answer = agent.api("PUT", f"/v1/agent/service/deregister/{service_id}")
    assert answer.status == 200, answer


def _ids(endpoints: Sequence[ServiceEndpoint]) -> set[str]:
    return {e.id for e in endpoints}


def _served(
    discovery: ServiceDiscovery, name: str, **filters: Any
) -> Callable[[str, set[str]], Callable[[], bool]]:
    """``served(source, ids)``: a predicate true once the snapshot is exactly that."""

    def served(source: str, ids: set[str]) -> Callable[[], bool]:
        def check() -> bool:
            snap = discovery.snapshot(name, **filters)
            return snap.source == source and _ids(snap.endpoints) == ids

        return check

    return served


def _switch(what: str, predicate: Callable[[], bool], since: float | None = None) -> float:
    """Wait until ``predicate`` holds; print and return the seconds since ``since`` (the
    moment before the change was made; default: now)."""
    started = time.monotonic() if since is None else since
    ok = until(predicate, SWITCH_BOUND, interval=0.005)
    took = time.monotonic() - started
    assert ok is not None, f"{what}: not served within {SWITCH_BOUND}s"
    print(f"{what}: served {took * 1000:.0f} ms after the change")
    return took


def _assert_dc(snap: ServiceSnapshot, dc: str) -> None:
    assert snap.endpoints, snap
    assert {e.datacenter for e in snap.endpoints} == {dc}, snap.endpoints


def test_failover_to_dc2_and_back(two_dcs: tuple[ConsulCluster, ConsulCluster]) -> None:
    dc1, dc2 = two_dcs
    name = f"mdc-{uuid.uuid4().hex[:8]}"
    local, remote = dc1.client, dc2.client
    _register(local, name, f"{name}-a1", 9101)
    _register(local, name, f"{name}-a2", 9102)
    _register(remote, name, f"{name}-b1", 9201)
    dc1_ids, dc2_ids = {f"{name}-a1", f"{name}-a2"}, {f"{name}-b1"}
    delivered: list[tuple[ServiceEndpoint, ...]] = []

    with ServiceDiscovery(
        dc1.mesh_config(), failover=("dc2",), rng=random.Random(7), timeout=10
    ) as discovery:
        served = _served(discovery, name)
        _switch("dc1 instances at start", served("consul", dc1_ids))
        snap = discovery.snapshot(name)
        _assert_dc(snap, "dc1")
        assert snap.datacenter is None
        discovery.watch(name, lambda endpoints: delivered.append(tuple(endpoints)))

        # 1. every dc1 instance critical (TTL check failed) -> dc2
        _ttl(local, f"{name}-a1", "fail")
        assert discovery.snapshot(name).source == "consul"  # one healthy left: no failover
        t0 = time.monotonic()
        _ttl(local, f"{name}-a2", "fail")
        _switch("dc1 all critical -> dc2", served("failover", dc2_ids), t0)
        snap = discovery.snapshot(name)
        _assert_dc(snap, "dc2")
        assert snap.datacenter == "dc2"
        assert _ids(delivered[-1]) == dc2_ids  # watchers are told too

        # 2. one dc1 instance healthy again -> back to dc1 (that one only)
        t0 = time.monotonic()
        _ttl(local, f"{name}-a2", "pass")
        _switch("dc1 one passing again -> dc1", served("consul", {f"{name}-a2"}), t0)
        _assert_dc(discovery.snapshot(name), "dc1")
        assert _ids(delivered[-1]) == {f"{name}-a2"}

        # 3. every dc1 instance deregistered -> dc2
        _deregister(local, f"{name}-a1")
        t0 = time.monotonic()
        _deregister(local, f"{name}-a2")
        _switch("dc1 all deregistered -> dc2", served("failover", dc2_ids), t0)
        _assert_dc(discovery.snapshot(name), "dc2")

        # 4. a dc2 change is followed while failed over
        t0 = time.monotonic()
        _register(remote, name, f"{name}-b2", 9202)
        _switch(
            "dc2 instance added while failed over", served("failover", {*dc2_ids, f"{name}-b2"})
        )

        # 5. dc1 registers again -> back to dc1
        t0 = time.monotonic()
        _register(local, name, f"{name}-a1", 9101)
        _switch("dc1 re-registered -> dc1", served("consul", {f"{name}-a1"}), t0)
        _assert_dc(discovery.snapshot(name), "dc1")

    for service_id in (f"{name}-a1", f"{name}-b1", f"{name}-b2"):
        _deregister(local if service_id.endswith("a1") else remote, service_id)


def test_failover_without_passing_filter(two_dcs: tuple[ConsulCluster, ConsulCluster]) -> None:
    """``passing_only=False`` keeps critical instances; an all-critical dc1 still fails over."""
    dc1, dc2 = two_dcs
    name = f"mdc-{uuid.uuid4().hex[:8]}"
    local, remote = dc1.client, dc2.client
    _register(local, name, f"{name}-a1", 9111)
    _register(remote, name, f"{name}-b1", 9211)

    with ServiceDiscovery(
        dc1.mesh_config(), failover=("dc2",), rng=random.Random(8), timeout=10
    ) as discovery:
        served = _served(discovery, name, passing_only=False)
        _switch("all instances kept, dc1 at start", served("consul", {f"{name}-a1"}))
        t0 = time.monotonic()
        _ttl(local, f"{name}-a1", "fail")
        _switch(
            "dc1 all critical (passing_only=False) -> dc2",
            served("failover", {f"{name}-b1"}),
            t0,
        )
        _assert_dc(discovery.snapshot(name, passing_only=False), "dc2")
        t0 = time.monotonic()
        _ttl(local, f"{name}-a1", "warn")  # warning counts as healthy: back to dc1
        _switch("dc1 warning -> dc1", served("consul", {f"{name}-a1"}), t0)

        # no healthy instance anywhere: dc1's (critical) instances stay served
        _ttl(remote, f"{name}-b1", "fail")
        _ttl(local, f"{name}-a1", "fail")

        def all_critical() -> bool:
            snap = discovery.snapshot(name, passing_only=False)
            there = discovery.endpoints(name, dc="dc2", passing_only=False)
            return (
                snap.source == "consul"
                and [e.health.value for e in snap.endpoints] == ["critical"]
                and [e.health.value for e in there] == ["critical"]
            )

        _switch("both critical -> dc1's critical instance kept", all_critical)
        time.sleep(0.3)
        snap = discovery.snapshot(name, passing_only=False)
        assert (snap.source, _ids(snap.endpoints)) == ("consul", {f"{name}-a1"})

    _deregister(local, f"{name}-a1")
    _deregister(remote, f"{name}-b1")


def test_endpoints_of_another_datacenter(two_dcs: tuple[ConsulCluster, ConsulCluster]) -> None:
    dc1, dc2 = two_dcs
    name = f"mdc-{uuid.uuid4().hex[:8]}"
    _register(dc1.client, name, f"{name}-a1", 9121)
    _register(dc2.client, name, f"{name}-b1", 9221)
    _register(dc2.client, name, f"{name}-b2", 9222)

    with ServiceDiscovery(dc1.mesh_config(), rng=random.Random(9), timeout=10) as discovery:
        remote = discovery.endpoints(name, dc="dc2")
        assert _ids(remote) == {f"{name}-b1", f"{name}-b2"}
        assert {e.datacenter for e in remote} == {"dc2"}
        snap = discovery.snapshot(name, dc="dc2")
        assert (snap.source, snap.datacenter) == ("consul", "dc2")
        local = discovery.endpoints(name)
        assert _ids(local) == {f"{name}-a1"}
        assert {e.datacenter for e in local} == {"dc1"}
        # followed live, like the local datacenter
        _deregister(dc2.client, f"{name}-b2")
        took = until(lambda: _ids(discovery.endpoints(name, dc="dc2")) == {f"{name}-b1"}, 5)
        assert took is not None
        print(f"dc2 deregistration seen through dc1's agent after {took * 1000:.0f} ms")

    for agent, service_id in ((dc1.client, f"{name}-a1"), (dc2.client, f"{name}-b1")):
        _deregister(agent, service_id)


def test_failover_per_query(two_dcs: tuple[ConsulCluster, ConsulCluster]) -> None:
    """A query's own ``failover`` list overrides the discovery's (none here)."""
    dc1, dc2 = two_dcs
    name = f"mdc-{uuid.uuid4().hex[:8]}"
    _register(dc2.client, name, f"{name}-b1", 9241)  # none in dc1
    try:
        with ServiceDiscovery(dc1.mesh_config(), rng=random.Random(11), timeout=10) as discovery:
            assert discovery.endpoints(name) == ()  # no failover configured: nothing
            remote = discovery.endpoints(name, failover=("dc2",))
            assert (_ids(remote), {e.datacenter for e in remote}) == ({f"{name}-b1"}, {"dc2"})
            assert discovery.snapshot(name, failover=("dc2",)).source == "failover"
            assert discovery.endpoints(name, failover=()) == ()  # () means none
    finally:
        _deregister(dc2.client, f"{name}-b1")


def test_mesh_fails_over_with_failover_datacenters(
    two_dcs: tuple[ConsulCluster, ConsulCluster],
) -> None:
    dc1, dc2 = two_dcs
    name = f"mdc-{uuid.uuid4().hex[:8]}"
    _register(dc2.client, name, f"{name}-b1", 9231)  # none in dc1
    try:
        with Mesh(
            dc1.mesh_config(),
            services={name: ServiceConfig(failover_datacenters=("dc2",))},
            watch_config=False,
            discovery_timeout=10,
            rng=random.Random(10),
        ) as mesh:
            picked = mesh.balancer(name).pick()
            assert (picked.id, picked.datacenter) == (f"{name}-b1", "dc2")
    finally:
        _deregister(dc2.client, f"{name}-b1")

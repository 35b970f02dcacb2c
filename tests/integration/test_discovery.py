"""ServiceDiscovery against a real agent: the snapshot follows Consul, is served from
memory, survives the agent going away, and is shared by consumers."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _consul_support import deregister, eventually, register

from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul._consul.discovery import ServiceDiscovery, with_diff
from lake_mesh_consul._consul.watch import WatchHub
from lake_mesh_consul._core.blocking import Backoff
from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.ports import EndpointSource
from lake_mesh_consul.errors import DiscoveryError, DiscoveryTimeout
from lake_mesh_consul.testing._agent import free_port

pytestmark = pytest.mark.integration


def ttl(client: ConsulClient, sid: str, status: str) -> None:
    verb = {"passing": "pass", "warning": "warn", "critical": "fail"}[status]
    client.request("PUT", f"/v1/agent/check/{verb}/service:{sid}", operation="ttl")


def ids(endpoints: Any) -> list[str]:
    return sorted(e.id for e in endpoints)


def private(config: MeshConfig, **kwargs: Any) -> ServiceDiscovery:
    """A discovery with its own hub (an rng given), so request counts are its own."""
    return ServiceDiscovery(config, rng=random.Random(7), **kwargs)


def test_snapshot_follows_register_deregister_and_ttl(mesh_config, unique_name):
    name = unique_name
    with ConsulClient(mesh_config) as client, private(mesh_config, wait=30) as discovery:
        assert discovery.endpoints(name) == ()
        register(
            client,
            name,
            "a",
            Check={"TTL": "60s", "Status": "passing"},
            Meta={"zone": "z1"},
            Weights={"Passing": 5, "Warning": 1},
        )
        register(client, name, "b", port=8081, Check={"TTL": "60s", "Status": "passing"})
        assert eventually(lambda: ids(discovery.endpoints(name)) == ["a", "b"])
        a = next(e for e in discovery.endpoints(name) if e.id == "a")
        assert a.zone == "z1"
        assert a.weights.passing == 5
        assert a.address == "127.0.0.1"
        assert a.health is HealthStatus.PASSING
        assert a.service == name
        assert a.datacenter == "dc1"
        ttl(client, "b", "critical")
        assert eventually(lambda: ids(discovery.endpoints(name)) == ["a"])
        # the other views of the same service
        assert ids(discovery.endpoints(name, passing_only=False)) == ["a", "b"]
        ttl(client, "a", "warning")
        assert eventually(lambda: discovery.endpoints(name) == ())
        warn = discovery.endpoints(name, include_warning=True)
        assert ids(warn) == ["a"]
        assert warn[0].health is HealthStatus.WARNING
        ttl(client, "b", "passing")
        assert eventually(lambda: ids(discovery.endpoints(name)) == ["b"])
        deregister(client, "b")
        assert eventually(lambda: discovery.endpoints(name) == ())
        deregister(client, "a")


def test_filters_tags_meta_filter_expression_and_near(mesh_config, unique_name):
    name = unique_name
    with ConsulClient(mesh_config) as client, private(mesh_config, wait=30) as d:
        register(client, name, "a", Tags=["v1", "blue"], Meta={"track": "stable"})
        register(client, name, "b", port=9000, Tags=["v1", "green"], Meta={"track": "canary"})
        register(client, name, "c", port=9001, Tags=["v2"], Address="::1")
        try:
            assert ids(d.endpoints(name)) == ["a", "b", "c"]
            assert ids(d.endpoints(name, tags=["v1"])) == ["a", "b"]
            assert ids(d.endpoints(name, tags=["v1", "green"])) == ["b"]
            assert ids(d.endpoints(name, service_meta={"track": "canary"})) == ["b"]
            assert ids(d.endpoints(name, filter="Service.Port != 8080")) == ["b", "c"]
            assert d.endpoints(name, node_meta={"no-such": "meta"}) == ()
            assert ids(d.endpoints(name, near="_agent")) == ["a", "b", "c"]
            c = next(e for e in d.endpoints(name) if e.id == "c")
            assert c.host_port == "[::1]:9001"
        finally:
            for sid in ("a", "b", "c"):
                deregister(client, sid)


def test_later_calls_are_served_from_memory(mesh_config, unique_name):
    with ConsulClient(mesh_config) as client, private(mesh_config, wait=30) as d:
        register(client, unique_name, "a")
        assert ids(d.endpoints(unique_name)) == ["a"]
        time.sleep(0.2)
        before = d.hub.requests
        for _ in range(20_000):
            assert ids(d.endpoints(unique_name)) == ["a"]
        assert d.hub.requests == before  # zero Consul requests on the request path
        deregister(client, "a")


def test_first_call_times_out_with_a_clear_error():
    dead = MeshConfig(address=f"127.0.0.1:{free_port()}")
    with private(dead) as d:
        started = time.monotonic()
        with pytest.raises(DiscoveryTimeout, match="web") as info:
            d.endpoints("web", timeout=0.5)
        assert 0.4 < time.monotonic() - started < 2.0
        assert "unavailable" in str(info.value)


def test_rejected_queries_fail_at_once(mesh_config, unique_name):
    with private(mesh_config) as d:
        started = time.monotonic()
        with pytest.raises(DiscoveryError, match="datacenter"):
            d.endpoints(unique_name, dc="no-such-dc", timeout=5)
        with pytest.raises(DiscoveryError, match="expression"):
            d.endpoints(unique_name, filter="Service.Port >= 1", timeout=5)
        assert time.monotonic() - started < 3


def test_two_consumers_share_one_blocking_query(mesh_config, unique_name):
    """Two ServiceDiscovery objects of one process, same agent: one watch, one query."""
    first = ServiceDiscovery(mesh_config)
    second = ServiceDiscovery(mesh_config)
    try:
        assert first.hub is second.hub is WatchHub.shared(mesh_config)
        with ConsulClient(mesh_config) as client:
            register(client, unique_name, "a")
            assert ids(first.endpoints(unique_name)) == ["a"]
            assert ids(second.endpoints(unique_name)) == ["a"]
            seen: list[Any] = []
            second.watch(unique_name, seen.append)
            mine = [w for w in first.hub.watches() if w.path.endswith("/" + unique_name)]
            assert len(mine) == 1
            watch = mine[0]
            requests = watch.requests
            register(client, unique_name, "b", port=8081)
            assert eventually(lambda: ids(first.endpoints(unique_name)) == ["a", "b"])
            assert eventually(lambda: len(seen) == 2)
            # one change: one answer to the one blocking query (plus at most one re-poll)
            assert watch.requests - requests <= 2
            deregister(client, "a")
            deregister(client, "b")
    finally:
        first.close()
        second.close()
    assert not [w for w in WatchHub.shared(mesh_config).watches() if unique_name in w.path]


def test_watch_delivers_full_snapshots_and_not_equal_ones(mesh_config, unique_name):
    with ConsulClient(mesh_config) as client, private(mesh_config, wait=30) as d:
        snapshots: list[tuple[ServiceEndpoint, ...]] = []
        diffs: list[tuple[list[str], list[str], list[str]]] = []
        d.watch(unique_name, snapshots.append)
        d.watch(
            unique_name,
            with_diff(
                lambda s, diff: diffs.append(
                    (ids(diff.added), ids(diff.removed), ids(diff.changed))
                )
            ),
            passing_only=False,
        )
        assert eventually(lambda: len(snapshots) == 1)
        register(client, unique_name, "a", Check={"TTL": "60s", "Status": "passing"})
        assert eventually(lambda: len(snapshots) == 2)
        # changes that move the index but not the snapshot: extra passing checks
        for n in range(3):
            client.request(
                "PUT",
                "/v1/agent/check/register",
                operation="check",
                json={"Name": f"x{n}", "ServiceID": "a", "TTL": "60s", "Status": "passing"},
            )
        time.sleep(0.3)
        assert len(snapshots) == 2
        ttl(client, "a", "critical")
        assert eventually(lambda: len(snapshots) == 3)
        assert snapshots[-1] == ()
        assert eventually(lambda: len(diffs) == 3)
        assert diffs == [([], [], []), (["a"], [], []), ([], [], ["a"])]
        deregister(client, "a")


def test_endpoint_source_adapter(mesh_config, unique_name):
    with ConsulClient(mesh_config) as client, private(mesh_config, wait=30) as d:
        register(client, unique_name, "a")
        source = d.source(unique_name)
        assert isinstance(source, EndpointSource)
        assert ids(source.snapshot()) == ["a"]
        got: list[Any] = []
        unsubscribe = source.subscribe(got.append)
        assert ids(got[0]) == ["a"]  # the current snapshot first
        register(client, unique_name, "b", port=8081)
        assert eventually(lambda: len(got) == 2)
        unsubscribe()
        deregister(client, "b")
        assert eventually(lambda: ids(source.snapshot()) == ["a"])
        assert len(got) == 2
        deregister(client, "a")


def test_close_within_a_second_and_no_callback_after(mesh_config, unique_name):
    d = private(mesh_config, wait=300)
    calls: list[Any] = []
    for n in range(5):
        d.watch(f"{unique_name}-{n}", calls.append)
    assert eventually(lambda: len(calls) == 5)
    time.sleep(0.3)  # every watch parked in a 300 s poll
    started = time.monotonic()
    d.close()
    assert time.monotonic() - started < 1.0
    with ConsulClient(mesh_config) as client:
        register(client, f"{unique_name}-0", "x")
        time.sleep(0.3)
        deregister(client, "x")
    assert len(calls) == 5


def test_readers_during_churn_see_whole_snapshots(mesh_config, unique_name):
    """32 threads read while instances churn; each endpoint carries its generation twice
    (tag and meta) and every snapshot must be sorted, unique and consistent."""
    name = unique_name
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = [0] * 32
    with ConsulClient(mesh_config) as client, private(mesh_config, wait=30) as d:
        for i in range(4):
            register(client, name, f"i{i}", port=9000 + i, Tags=["g0"], Meta={"gen": "0"})
        assert eventually(lambda: len(d.endpoints(name)) == 4)

        def reader(slot: int) -> None:
            try:
                while not stop.is_set():
                    snap = d.endpoints(name)
                    assert isinstance(snap, tuple)
                    keys = [(e.node, e.id) for e in snap]
                    assert keys == sorted(set(keys))
                    for e in snap:
                        assert e.tags == (f"g{e.meta['gen']}",)
                    reads[slot] += 1
            except BaseException as exc:  # report any failure
                errors.append(exc)

        threads = [threading.Thread(target=reader, args=(n,), daemon=True) for n in range(32)]
        for t in threads:
            t.start()
        for gen in range(1, 25):
            i = gen % 4
            if gen % 5 == 0:
                deregister(client, f"i{i}")
            else:
                register(
                    client, name, f"i{i}", port=9000 + i, Tags=[f"g{gen}"], Meta={"gen": str(gen)}
                )
            time.sleep(0.02)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(5)
        assert not errors, errors[0]
        assert all(reads)
        for i in range(4):
            deregister(client, f"i{i}")


# --- agent restarts and outages (an agent of the test's own) -------------------------------------


def test_watch_recovers_after_restart_with_wiped_state(dedicated_consul_agent, unique_name):
    config = MeshConfig(address=dedicated_consul_agent.address)
    with private(config, wait=30, backoff=Backoff(base=0.05, cap=0.5)) as d:
        with ConsulClient(config) as client:
            register(client, unique_name, "a")
            register(client, unique_name, "b", port=8081)
            assert eventually(lambda: ids(d.endpoints(unique_name)) == ["a", "b"])
        dedicated_consul_agent.restart(wipe=True)
        with ConsulClient(config) as client:
            register(client, unique_name, "c", port=8082)
        assert eventually(lambda: ids(d.endpoints(unique_name)) == ["c"], 15)
        snap = d.snapshot(unique_name)
        assert not snap.stale
        assert snap.source == "consul"


def test_agent_down_serves_stale_with_growing_age_and_bounded_requests(
    dedicated_consul_agent, unique_name, tmp_path: Path
):
    config = MeshConfig(address=dedicated_consul_agent.address)
    store = tmp_path / "snapshots"
    with private(config, wait=30, persist_dir=store) as d:
        with ConsulClient(config) as client:
            register(client, unique_name, "a")
        assert eventually(lambda: ids(d.endpoints(unique_name)) == ["a"])
        dedicated_consul_agent.stop()
        assert eventually(lambda: d.snapshot(unique_name).stale, 5)
        requests = d.hub.requests
        first = d.snapshot(unique_name)
        time.sleep(3.0)
        later = d.snapshot(unique_name)
        assert ids(later.endpoints) == ["a"]  # last known good
        assert later.stale
        assert later.error
        assert first.age is not None
        assert later.age is not None
        assert later.age >= first.age + 2.5
        # full-jitter backoff (100 ms .. 5 s): a handful of attempts in 3 s, never a busy loop
        assert d.hub.requests - requests <= 15
    # a process starting while Consul is down still has instances, from disk
    assert list(store.glob("*.json"))
    with private(config, persist_dir=store) as fresh:
        started = time.monotonic()
        assert ids(fresh.endpoints(unique_name, timeout=5)) == ["a"]
        assert time.monotonic() - started < 2.0
        snap = fresh.snapshot(unique_name)
        assert snap.source == "persisted"
        assert snap.stale
        assert snap.age is not None


def test_invalidate_after_bounds_the_last_known_good(dedicated_consul_agent, unique_name):
    config = MeshConfig(address=dedicated_consul_agent.address)
    with private(config, wait=30, invalidate_after=1.0) as d:
        with ConsulClient(config) as client:
            register(client, unique_name, "a")
        assert eventually(lambda: ids(d.endpoints(unique_name)) == ["a"])
        dedicated_consul_agent.stop()
        assert eventually(lambda: d.endpoints(unique_name) == (), 10)
        assert d.snapshot(unique_name).stale

"""The multiplexed watcher against a real agent: every kind of change reaches the right
service through /v1/health/state/any and /v1/catalog/services, and hundreds of watched
services cost a fixed number of threads, agent connections and little memory."""

from __future__ import annotations

import gc
import json
import random
import threading
import time
import tracemalloc
from typing import Any
from urllib.parse import urlsplit

import pytest
from _consul_support import deregister, eventually, register

from lake_mesh_consul._consul.agent_sockets import agent_connection_limit, agent_connections
from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul._consul.discovery import ServiceDiscovery
from lake_mesh_consul._consul.watch import Watch, WatchHub, decode_json
from lake_mesh_consul._core.blocking import Backoff
from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul.errors import DiscoveryTimeout
from lake_mesh_consul.testing._agent import free_port

pytestmark = pytest.mark.integration

#: Long enough that no answer in these tests can come from a wait running out.
WAIT = 120.0


def muxed(config: MeshConfig, **kwargs: Any) -> ServiceDiscovery:
    """A private discovery whose every query goes through the multiplexer."""
    return ServiceDiscovery(config, rng=random.Random(3), wait=WAIT, dedicated_watches=0, **kwargs)


def ids(endpoints: Any) -> list[str]:
    return sorted(e.id for e in endpoints)


def one(endpoints: Any) -> ServiceEndpoint:
    (endpoint,) = endpoints
    assert isinstance(endpoint, ServiceEndpoint)
    return endpoint


def agent_put(client: ConsulClient, path: str, **kwargs: Any) -> None:
    client.request("PUT", path, operation=f"PUT {path}", **kwargs)


def host_port(config: MeshConfig) -> tuple[str, int]:
    parts = urlsplit(config.base_url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


def watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("lake-mesh-watch")]


def ttl_check(status: str = "passing") -> dict[str, str]:
    return {"TTL": "300s", "Status": status}


# --- every kind of change ------------------------------------------------------------------


def test_service_changes_propagate_through_the_multiplexer(mesh_config, unique_name):
    """Check status, service maintenance, register/deregister, tag, meta and port changes."""
    name, bystander = unique_name, f"{unique_name}-b"
    seen: list[list[str]] = []
    with ConsulClient(mesh_config) as client, muxed(mesh_config) as d:
        assert d.endpoints(name, passing_only=False) == ()
        d.watch(bystander, lambda snapshot: seen.append(ids(snapshot)))
        assert d.hub.multiplexed == 2
        assert [w.name for w in d.hub.watches()] != []
        view = lambda: d.endpoints(name, passing_only=False)  # noqa: E731

        register(client, name, "a", Check=ttl_check())  # register (with a check)
        assert eventually(lambda: ids(view()) == ["a"])
        assert one(view()).health is HealthStatus.PASSING
        for verb, status in (("warn", HealthStatus.WARNING), ("fail", HealthStatus.CRITICAL)):
            agent_put(client, f"/v1/agent/check/{verb}/service:a")  # check status
            assert eventually(lambda s=status: one(view()).health is s), verb
        agent_put(client, "/v1/agent/service/maintenance/a", params={"enable": "true"})
        assert eventually(lambda: one(view()).health is HealthStatus.MAINTENANCE)
        agent_put(client, "/v1/agent/service/maintenance/a", params={"enable": "false"})
        assert eventually(lambda: one(view()).health is HealthStatus.CRITICAL)

        register(client, name, "a", Tags=["v2"], Check=ttl_check())  # tag change
        assert eventually(lambda: one(view()).tags == ("v2",))
        register(client, name, "a", Tags=["v2"], Meta={"zone": "z9"}, Check=ttl_check())
        assert eventually(lambda: one(view()).meta.get("zone") == "z9")  # meta change
        register(client, name, "a", port=9191, Tags=["v2"], Meta={"zone": "z9"})  # port
        assert eventually(lambda: one(view()).port == 9191)

        register(client, name, "b", port=8081)  # register without any check
        assert eventually(lambda: ids(view()) == ["a", "b"])
        deregister(client, "b")  # deregister (no check)
        assert eventually(lambda: ids(view()) == ["a"])
        deregister(client, "a")  # deregister (it had a check)
        assert eventually(lambda: view() == ())
        # the bystander never changed: notified once (its first answer), never again
        assert seen == [[]]
        member = next(w for w in d.hub.watches() if w.path.endswith("/" + name))
        assert not member.state.stale
        assert d.hub.threads <= 3


def test_node_checks_and_node_maintenance_propagate(dedicated_consul_agent, unique_name):
    """A node-level check and node maintenance reach every service on the node."""
    config = MeshConfig(address=dedicated_consul_agent.address)
    name = unique_name
    with ConsulClient(config) as client, muxed(config) as d:
        register(client, name, "a")  # no check of its own: only the node's checks count
        assert eventually(lambda: ids(d.endpoints(name)) == ["a"])
        agent_put(
            client,
            "/v1/agent/check/register",
            json={"Name": "disk", "ID": "disk", "TTL": "300s", "Status": "passing"},
        )
        agent_put(client, "/v1/agent/check/fail/disk")  # a node check goes critical
        assert eventually(lambda: d.endpoints(name) == ())
        assert one(d.endpoints(name, passing_only=False)).health is HealthStatus.CRITICAL
        agent_put(client, "/v1/agent/check/pass/disk")
        assert eventually(lambda: ids(d.endpoints(name)) == ["a"])
        agent_put(client, "/v1/agent/maintenance", params={"enable": "true"})  # node maint
        assert eventually(lambda: d.endpoints(name) == ())
        assert eventually(
            lambda: one(d.endpoints(name, passing_only=False)).health is HealthStatus.MAINTENANCE
        )
        agent_put(client, "/v1/agent/maintenance", params={"enable": "false"})
        assert eventually(lambda: ids(d.endpoints(name)) == ["a"])


def test_multiplexer_recovers_after_the_agent_restarts_wiped(dedicated_consul_agent, unique_name):
    """Loops fail -> members stale with the last value; agent back -> everyone re-read."""
    config = MeshConfig(address=dedicated_consul_agent.address)
    names = [f"{unique_name}-{n}" for n in range(3)]
    with muxed(config) as d:
        with ConsulClient(config) as client:
            for n, name in enumerate(names):
                register(client, name, f"i{n}", port=8000 + n)
        assert eventually(lambda: all(ids(d.endpoints(n)) for n in names))
        dedicated_consul_agent.stop()
        assert eventually(lambda: all(d.snapshot(n).stale for n in names), 10)
        assert all(ids(d.endpoints(n)) == [f"i{i}"] for i, n in enumerate(names))  # kept
        dedicated_consul_agent.start()
        with ConsulClient(config) as client:
            register(client, names[1], "fresh", port=9000)
        assert eventually(lambda: ids(d.endpoints(names[1])) == ["fresh"], 20)
        assert eventually(lambda: d.endpoints(names[0]) == (), 10)  # wiped: gone
        assert eventually(lambda: not d.snapshot(names[2]).stale, 10)


# --- the budget ----------------------------------------------------------------------------


def test_hundreds_of_services_cost_a_fixed_number_of_threads_and_connections(
    mesh_config, unique_name
):
    count = 300
    names = [f"{unique_name}-{n}" for n in range(count)]
    host, port = host_port(mesh_config)
    with ConsulClient(mesh_config) as client:
        for n in range(0, count, 10):  # every tenth service has an instance
            register(client, names[n], f"{names[n]}-i", Check=ttl_check())
        threads_before = {t.ident for t in threading.enumerate()}
        conns_before = agent_connections(host, port)
        assert conns_before is not None
        with ServiceDiscovery(mesh_config, rng=random.Random(5), wait=WAIT) as d:
            for n, name in enumerate(names):
                assert len(d.endpoints(name)) == (1 if n % 10 == 0 else 0)
            assert d.hub.multiplexed == count - 1  # one dedicated watch, the rest muxed
            assert eventually(lambda: d.hub.threads <= 3)  # the first-read thread is gone

            def new_threads() -> list[threading.Thread]:
                return [
                    t
                    for t in threading.enumerate()
                    if t.ident not in threads_before and t.is_alive()
                ]

            assert eventually(lambda: len(new_threads()) <= 3)
            new = new_threads()
            conns = agent_connections(host, port)
            assert conns is not None
            print(
                f"\n{count} watched services: {len(new)} new threads "
                f"({sorted(t.name for t in new)}), {conns - conns_before} agent connections"
            )
            assert len(new) <= 3
            assert all(t.daemon for t in new)
            assert conns - conns_before <= 3

            # a change in one of them propagates (no wait can have run out: WAIT is long)
            target = names[70]
            agent_put(client, f"/v1/agent/check/fail/service:{target}-i")
            assert eventually(lambda: d.endpoints(target) == ())
            register(client, names[71], "late")  # a service that had no instance
            assert eventually(lambda: ids(d.endpoints(names[71])) == ["late"])
            deregister(client, "late")
        for n in range(0, count, 10):
            deregister(client, f"{names[n]}-i")
    assert eventually(lambda: not [t for t in watch_threads() if t.ident not in threads_before])


def test_memory_per_watched_service_is_small(mesh_config, unique_name):
    count = 400
    names = [f"{unique_name}-{n}" for n in range(count)]
    with ServiceDiscovery(mesh_config, rng=random.Random(9), wait=WAIT) as d:
        d.endpoints(f"{unique_name}-warmup")
        d.endpoints(f"{unique_name}-warmup2")  # the multiplexer is up before measuring
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            for name in names:
                d.endpoints(name)
            assert eventually(lambda: d.hub.threads <= 3)
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        per_service = grown / count
        print(f"\nmemory per watched service: {per_service / 1024:.1f} KiB")
        assert per_service <= 10 * 1024


# --- the engine's promises -----------------------------------------------------------------


@pytest.mark.parametrize("dedicated", [1, 0], ids=["dedicated", "multiplexed"])
def test_first_answer_reaches_listeners_before_wait_first_returns(
    mesh_config, unique_name, dedicated
):
    with ConsulClient(mesh_config) as client:
        register(client, unique_name, "a")
        for attempt in range(20):
            applied: list[Any] = []
            with ServiceDiscovery(
                mesh_config, rng=random.Random(attempt), wait=WAIT, dedicated_watches=dedicated
            ) as d:
                d.endpoints(f"{unique_name}-other")  # with 0 dedicated: the loops run already
                shared = d.hub.watch(
                    f"/v1/health/service/{unique_name}", decode=decode_json, wait=WAIT
                )
                # subscribed before the first answer: called with it (by the watch thread);
                # after it: called with it at once (replay). Either way before wait_first.
                shared.subscribe(applied.append, replay=True)
                assert shared.wait_first(5)
                assert applied, f"attempt {attempt}: wait_first returned before the listener ran"
                assert [e["Service"]["ID"] for e in applied[0]] == ["a"]
                shared.close()
        deregister(client, "a")


def test_a_failed_answer_keeps_no_frames_alive():
    """The error kept in the state has no traceback anywhere in its chain."""
    config = MeshConfig(address=f"127.0.0.1:{free_port()}")  # nothing listens there
    with Watch(config, "/v1/health/service/x", decode=decode_json, wait=WAIT) as watch:
        assert not watch.wait_first(5, or_error=True)
        error = watch.state.error
        assert error is not None
        chain: list[BaseException] = []
        current: BaseException | None = error
        while current is not None and len(chain) < 20:
            chain.append(current)
            current = current.__cause__ or current.__context__
        assert all(link.__traceback__ is None for link in chain)
    del watch


def test_agent_connection_limit_is_read_from_agent_self(mesh_config):
    with ConsulClient(mesh_config) as client:
        assert agent_connection_limit(client.agent_self()) == 200  # Consul's default
    assert agent_connection_limit({"Config": {}}) is None


def test_connection_count_sees_only_this_process(mesh_config):
    host, port = host_port(mesh_config)
    before = agent_connections(host, port)
    assert before is not None
    with ConsulClient(mesh_config) as client:
        client.leader()
        assert agent_connections(host, port) == before + 1
    assert eventually(lambda: agent_connections(host, port) == before)


def test_doctor_shows_the_connection_limit_and_budget(consul_agent, capsys):
    from lake_mesh_consul.cli import main

    assert main(["doctor", "--json", "--http-addr", consul_agent.address]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    conns = report["connections"]
    assert conns["agent_limit_per_client"] == 200
    assert isinstance(conns["this_process"], int)
    assert conns["this_process"] >= 1  # doctor's own client is still open while it counts
    assert conns["watch_budget"]["connections"] <= 4
    assert main(["doctor", "--http-addr", consul_agent.address]) == 0
    out = capsys.readouterr().out
    assert "200 connections per client IP (limits.http_max_conns_per_client)" in out
    assert "watch budget:" in out
    assert "acls enforced: no" in out  # the key column keeps its width


def test_no_multiplexer_thread_survives_its_last_member(mesh_config, unique_name):
    """The loops and the first-read thread stop when the last handle closes (the hub lives)."""
    before = {t.ident for t in threading.enumerate()}
    hub = WatchHub(mesh_config, rng=random.Random(2), dedicated=0, wait=WAIT)
    try:
        handles = [
            hub.watch(f"/v1/health/service/{unique_name}-{n}", decode=decode_json) for n in range(5)
        ]
        assert all(h.wait_first(5) for h in handles)
        assert hub.multiplexed == 5
        for handle in handles:
            handle.close()
        left = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
        assert not [t.name for t in left if t.name.startswith("lake-mesh-watch")]
        again = hub.watch(f"/v1/health/service/{unique_name}-0", decode=decode_json)
        assert again.wait_first(5)  # and the multiplexer starts again for a new member
        again.close()
    finally:
        hub.close()


def test_a_multiplexed_first_call_with_the_agent_down_times_out_then_recovers(
    dedicated_consul_agent, unique_name
):
    config = MeshConfig(address=dedicated_consul_agent.address)
    dedicated_consul_agent.stop()
    with muxed(config, backoff=Backoff(base=0.05, cap=0.5)) as d:
        started = time.monotonic()
        with pytest.raises(DiscoveryTimeout):
            d.endpoints(unique_name, timeout=1.0)
        assert time.monotonic() - started < 3.0
        assert d.hub.requests < 40  # one probe per backoff round, not one per service
        dedicated_consul_agent.start()
        with ConsulClient(config) as client:
            register(client, unique_name, "a")
        assert eventually(lambda: ids(d.endpoints(unique_name, timeout=5)) == ["a"], 20)
        assert not d.snapshot(unique_name).stale

"""ServiceRegistry against a real agent: registration, maintenance, drain, re-registration,
startup against an agent that is not up, shutdown hooks."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lake_mesh_consul._consul.client import ConsulClient
from lake_mesh_consul._consul.health_checks import HealthCheckManager
from lake_mesh_consul._consul.registry import ServiceRegistry
from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul._core.endpoint import Weights
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.registration import HttpCheck, ServiceMetadata, TcpCheck, TtlCheck
from lake_mesh_consul.errors import ConsulUnavailable, MeshError
from lake_mesh_consul.testing._agent import free_port
from lake_mesh_consul.testing.plugin import ConsulAgentHandle

pytestmark = pytest.mark.integration

P = HealthStatus.PASSING


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def instances(client: ConsulClient, name: str, *, passing: bool = False) -> list[dict[str, Any]]:
    params = {"passing": "1"} if passing else None
    result: list[dict[str, Any]] = client.request(
        "GET", f"/v1/health/service/{name}", operation="read health", params=params
    ).json()
    return result


@pytest.fixture
def client(mesh_config: MeshConfig) -> Iterator[ConsulClient]:
    with ConsulClient(mesh_config) as c:
        yield c


@pytest.fixture
def registry(mesh_config: MeshConfig) -> Iterator[ServiceRegistry]:
    with ServiceRegistry(mesh_config, drain_grace=0.1, anti_entropy_interval=0.5) as r:
        yield r


def ttl_service(name: str) -> ServiceMetadata:
    return ServiceMetadata(name, 8080, checks=(TtlCheck(id=f"{name}-ttl", ttl=30),))


def test_register_with_several_checks_then_replace_them(
    registry: ServiceRegistry, client: ConsulClient, unique_name: str
) -> None:
    meta = ServiceMetadata(
        unique_name,
        8080,
        address="127.0.0.1",
        tags=("v1", "primary"),
        meta={"zone": "a"},
        weights=Weights(passing=10, warning=2),
        checks=(
            TtlCheck(id="a", ttl=30),
            TtlCheck(id="b", ttl=30),
            TcpCheck(address="127.0.0.1:1", interval=30),
        ),
    )
    registry.register(meta)
    service = registry.agent_service(meta.id)
    assert service is not None
    assert service["Weights"] == {"Passing": 10, "Warning": 2}
    assert service["Tags"] == ["v1", "primary"]
    assert service["Meta"] == {"zone": "a"}
    assert set(registry.agent_checks(meta.id)) == {"a", "b", f"service:{meta.id}:3"}

    registry.register(meta.replace(checks=(TtlCheck(id="a", ttl=30),)))
    assert set(registry.agent_checks(meta.id)) == {"a"}
    registry.register(meta.replace(checks=(TtlCheck(id="a", ttl=30),)))  # idempotent
    assert len(instances(client, unique_name)) == 1


def test_maintenance_hides_the_instance_from_passing_queries(
    registry: ServiceRegistry, client: ConsulClient, unique_name: str
) -> None:
    meta = registry.register(ttl_service(unique_name))
    registry.update_ttl(f"{unique_name}-ttl", P, "ok")
    wait_for(lambda: len(instances(client, unique_name, passing=True)) == 1)

    registry.maintenance(meta.id, True, "deploying v2")
    assert instances(client, unique_name, passing=True) == []
    [entry] = instances(client, unique_name)
    maint = [c for c in entry["Checks"] if c["CheckID"] == f"_service_maintenance:{meta.id}"]
    assert maint[0]["Notes"] == "deploying v2"
    assert registry.in_maintenance(meta.id)

    registry.maintenance(meta.id, False)
    assert len(instances(client, unique_name, passing=True)) == 1
    assert not registry.in_maintenance(meta.id)


def test_drain_shows_maintenance_before_deregistration(
    mesh_config: MeshConfig, client: ConsulClient, unique_name: str
) -> None:
    registry = ServiceRegistry(mesh_config, drain_grace=0.5)
    registry.register(ttl_service(unique_name))
    registry.update_ttl(f"{unique_name}-ttl", P, "ok")
    wait_for(lambda: len(instances(client, unique_name, passing=True)) == 1)
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        with ConsulClient(mesh_config) as c:
            while not stop.is_set():
                found = instances(c, unique_name)
                if not found:
                    state = "absent"
                elif instances(c, unique_name, passing=True):
                    state = "passing"
                else:
                    state = "maintenance"
                if not seen or seen[-1] != state:
                    seen.append(state)
                time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    wait_for(lambda: bool(seen))
    started = time.monotonic()
    registry.close()  # drains by default
    took = time.monotonic() - started
    wait_for(lambda: seen[-1] == "absent")
    stop.set()
    watcher.join(2)
    assert seen == ["passing", "maintenance", "absent"]
    assert 0.5 <= took < 1.5


def test_reregistered_within_5s_after_agent_wipe(
    dedicated_consul_agent: ConsulAgentHandle, unique_name: str
) -> None:
    config = MeshConfig(address=dedicated_consul_agent.address)
    meta = ServiceMetadata(
        unique_name,
        8080,
        checks=(
            TtlCheck(id="app", ttl=5),
            HttpCheck(id="http", url="http://127.0.0.1:1/health", interval=30),
        ),
    )
    with ServiceRegistry(config, drain_on_close=False, anti_entropy_interval=1.0) as registry:
        registry.register(meta)
        registry.maintenance(meta.id, True, "kept across restarts")
        with HealthCheckManager(registry, meta, interval=0.3) as health:
            health.add_function(lambda: (P, "fine"))
            health.start()
            wait_for(lambda: registry.agent_checks(meta.id)["app"]["Status"] == "passing")

            dedicated_consul_agent.restart(wipe=True)  # returns once the agent answers
            back = time.monotonic()

            def complete() -> bool:
                try:
                    checks = registry.agent_checks(meta.id)
                except ConsulUnavailable:
                    return False
                return {"app", "http", f"_service_maintenance:{meta.id}"} <= set(checks)

            wait_for(complete, 10, "re-registration")
            took = time.monotonic() - back
            assert took < 5.0, f"re-registered after {took:.2f}s"
            assert registry.reregistrations >= 1
            wait_for(lambda: registry.agent_checks(meta.id)["app"]["Status"] == "passing", 3)
            # The heartbeat caught up after its backoff: pushes succeed again.
            # (generous: on a loaded machine the heartbeat may still be in its error backoff)
            wait_for(lambda: health.snapshot().checks["app"].ttl_updates_sent >= 2, 10)


def test_agent_not_up_fail_fast_raises_at_once() -> None:
    address = f"127.0.0.1:{free_port()}"
    registry = ServiceRegistry(MeshConfig(address=address), fail_fast=True)
    started = time.monotonic()
    with pytest.raises(ConsulUnavailable) as info:
        registry.register(ServiceMetadata("web", 8080))
    assert time.monotonic() - started < 1.0
    assert address in str(info.value)
    registry.close()


def test_agent_not_up_retries_then_gives_a_clear_error() -> None:
    address = f"127.0.0.1:{free_port()}"
    registry = ServiceRegistry(MeshConfig(address=address), startup_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(ConsulUnavailable) as info:
        registry.register(ServiceMetadata("web", 8080))
    took = time.monotonic() - started
    assert 1.0 <= took < 2.0
    message = str(info.value)
    assert address in message
    attempts = int(message.split("gave up after ")[1].split(maxsplit=1)[0])
    assert attempts >= 4  # 0.1 s, 0.2 s, 0.4 s... of jittered backoff within one second
    registry.close()


def test_agent_coming_up_during_startup_is_waited_for(
    dedicated_consul_agent: ConsulAgentHandle, unique_name: str
) -> None:
    dedicated_consul_agent.stop()
    starter = threading.Timer(1.0, dedicated_consul_agent.start)
    starter.start()
    config = MeshConfig(address=dedicated_consul_agent.address)
    try:
        with ServiceRegistry(config, startup_timeout=30, drain_on_close=False) as registry:
            started = time.monotonic()
            meta = registry.register(ttl_service(unique_name))
            assert time.monotonic() - started >= 0.9
            assert registry.agent_service(meta.id) is not None
    finally:
        starter.join()


def test_close_without_drain_is_fast_and_stops_the_daemon_thread(
    mesh_config: MeshConfig, unique_name: str
) -> None:
    registry = ServiceRegistry(mesh_config, anti_entropy_interval=0.2)
    meta = registry.register(ttl_service(unique_name))
    threads = [t for t in threading.enumerate() if t.name == "lake-mesh-registry"]
    assert threads
    assert all(t.daemon for t in threads)
    started = time.monotonic()
    registry.close(drain=False)
    assert time.monotonic() - started < 1.0
    with pytest.raises(MeshError, match="closed"):
        registry.register(meta)
    with ServiceRegistry(mesh_config) as other:
        assert other.agent_service(meta.id) is not None  # not drained
        other.deregister(meta.id)


def test_deregistered_service_is_not_reregistered(
    registry: ServiceRegistry, unique_name: str
) -> None:
    meta = registry.register(ttl_service(unique_name))
    registry.deregister(meta.id)
    time.sleep(0.7)  # more than one anti-entropy interval
    assert registry.agent_service(meta.id) is None
    assert registry.registered == ()


def test_sigterm_hook_drains_before_exit(mesh_config: MeshConfig, unique_name: str) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from lake_mesh_consul._core.config import MeshConfig
        from lake_mesh_consul._consul.registry import ServiceRegistry
        from lake_mesh_consul._core.registration import ServiceMetadata
        registry = ServiceRegistry(MeshConfig(address=sys.argv[1]), drain_grace=0.2)
        registry.register(ServiceMetadata(sys.argv[2], 8080, id=sys.argv[2] + "-1"))
        registry.install_shutdown_hooks()
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, mesh_config.address, unique_name],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        with ConsulClient(mesh_config) as client:
            assert len(instances(client, unique_name)) == 1
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 128 + signal.SIGTERM
            assert instances(client, unique_name) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_registration_paths_are_quoted(registry: ServiceRegistry, unique_name: str) -> None:
    meta = registry.register(ServiceMetadata(unique_name, 8080, id=f"{unique_name}:a+b"))
    assert registry.agent_service(meta.id) is not None
    registry.deregister(meta.id)
    assert registry.agent_service(meta.id) is None

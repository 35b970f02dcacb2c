"""Registration and heartbeat costs against a local Consul dev agent.

Rows:

* ``registry.register``: round trip of ServiceRegistry.register (service with an HTTP and a
  TTL check, replace-existing-checks) - median and p99 - compared with a bare
  ``requests.put`` of the same JSON body in alternated pairs (ours, bare, bare, ours, ...)
  (what the registry adds: validation is done once
  at ServiceMetadata construction, so this is encoding + error mapping + bookkeeping).
* ``registry.update_ttl``: one TTL update round trip.
* ``health.cycle``: CPU seconds (process time, all threads) of one HealthCheckManager cycle
  with three trivial check functions: run them on their threads, aggregate, damp, record
  metrics, push one TTL update. ``health.cycle.local`` is the same without the agent call.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import requests
from _common import Context, Row, alternate, compare, compare_alternated, percentile

from lake_mesh_consul._consul.health_checks import HealthCheckManager
from lake_mesh_consul._consul.registry import ServiceRegistry, encode_service
from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul._core.health import HealthStatus
from lake_mesh_consul._core.registration import HttpCheck, ServiceMetadata, TtlCheck


def _once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _latencies(fn: Callable[[], object], n: int) -> list[float]:
    fn()  # warm the connection pool
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


class _NullRegistry:
    """What HealthCheckManager needs from a registry, doing nothing (isolates local CPU)."""

    registered: tuple[ServiceMetadata, ...] = ()

    def in_maintenance(self, service_id: str) -> bool:
        return False

    def update_ttl(self, check_id: str, status: HealthStatus, output: str = "") -> None:
        return None

    def agent_checks(self, service_id: str) -> dict[str, Any]:
        return {}


def _cycle_cpu(manager: HealthCheckManager, n: int) -> tuple[float, float]:
    manager.run_once()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        manager.run_once()
    return (time.process_time() - cpu0) / n, (time.perf_counter() - wall0) / n


def run(ctx: Context) -> Iterator[Row]:
    address = ctx.consul_address()
    n = 40 if ctx.quick else 300
    name = f"bench-{uuid.uuid4().hex[:8]}"
    meta = ServiceMetadata(
        name,
        8080,
        address="127.0.0.1",
        checks=(
            HttpCheck(id=f"{name}-http", url="http://127.0.0.1:1/health", interval=60),
            TtlCheck(id=f"{name}-ttl", ttl=60),
        ),
    )
    config = MeshConfig(address=address)
    with ServiceRegistry(config, drain_on_close=False, anti_entropy_interval=None) as registry:
        body = encode_service(meta)
        url = f"http://{address}/v1/agent/service/register"
        with requests.Session() as session:
            session.trust_env = False

            def bare_put() -> None:
                session.put(
                    url, params={"replace-existing-checks": "true"}, json=body, timeout=10
                ).raise_for_status()

            registry.register(meta)  # warm both connection pools
            bare_put()
            ours, bare = alternate(
                lambda: _once(lambda: registry.register(meta)), lambda: _once(bare_put), n
            )
        ms = 1000.0
        yield compare_alternated(
            "registry.register round trip (median)",
            [x * ms for x in ours],
            [y * ms for y in bare],
            "ms",
            baseline_is="requests.put of the same JSON body, alternated pairs",
        )
        if len(ours) >= 200:
            yield Row("registry.register round trip (p99)", percentile(ours, 99) * ms, "ms", n=n)
        ttl_id = f"{name}-ttl"
        ttl = _latencies(lambda: registry.update_ttl(ttl_id, HealthStatus.PASSING, "ok"), n)
        yield Row("registry.update_ttl round trip (median)", statistics.median(ttl) * ms, "ms")

        cycles = 30 if ctx.quick else 200
        with HealthCheckManager(registry, meta, observe_agent_checks=False) as manager:
            for i in range(3):
                manager.add_function(lambda: (HealthStatus.PASSING, "ok"), name=f"f{i}")
            cpu, wall = _cycle_cpu(manager, cycles)
        yield Row("health.cycle CPU (3 functions + TTL push)", cpu * 1e6, "us", extra={"n": cycles})
        yield Row("health.cycle wall (3 functions + TTL push)", wall * 1e6, "us")
        null: Any = _NullRegistry()
        with HealthCheckManager(null, meta, observe_agent_checks=False) as local:
            for i in range(3):
                local.add_function(lambda: (HealthStatus.PASSING, "ok"), name=f"f{i}")
            cpu_local, _ = _cycle_cpu(local, cycles * 5)
        yield compare("health.cycle.local CPU (no agent call)", cpu_local * 1e6, cpu * 1e6, "us")
        registry.deregister(meta.id)

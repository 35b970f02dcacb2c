"""Observability against a real agent: a Mesh's metrics (Prometheus and OpenTelemetry at once)
and log lines move as the scenario dictates.

An instance dies: retries are counted, its breaker opens and it is ejected; a bad KV write is
counted as a rejection and logged with its key, field and reason; the agent forgetting an
instance is counted as a re-registration. The gauges (endpoints, staleness, registrations)
come from the mesh at scrape time.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest
from _mesh_support import mesh_with_instances, wait_for
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lake_mesh_consul._core.config import MeshConfig
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul.errors import MeshError
from lake_mesh_consul.mesh import Mesh
from lake_mesh_consul.observability import LOGGER_NAME, combine
from lake_mesh_consul.observability.otel import OtelInstruments
from lake_mesh_consul.observability.prometheus import PrometheusInstruments

pytestmark = pytest.mark.integration


def _ping(endpoint: ServiceEndpoint) -> bool:
    with socket.create_connection((endpoint.address, endpoint.port), timeout=2):
        return True


def _prom(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _v(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _otel(reader: InMemoryMetricReader) -> dict[str, float]:
    """Each instrument's points summed (sum for counters and gauges, count for histograms)."""
    data = reader.get_metrics_data()
    out: dict[str, float] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points = metric.data.data_points
                out[metric.name] = sum(getattr(p, "count", None) or p.value for p in points)
    return out


def test_a_mesh_scrapes_failures_rejections_and_reregistrations(
    mesh_config: Any, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    registry = CollectorRegistry()
    reader = InMemoryMetricReader()
    prom = PrometheusInstruments(registry)
    otel = OtelInstruments(MeterProvider(metric_readers=[reader]))
    name = unique_name
    with mesh_with_instances(mesh_config, name, 3, instruments=combine(prom, otel)) as (
        mesh,
        instances,
    ):
        for _ in range(6):
            assert mesh.call(name, _ping, idempotent=True)
        s = _prom(registry)
        assert _v(s, "lake_mesh_requests_total", service=name, outcome="success") == 6
        assert _v(s, "lake_mesh_endpoints", service=name) == 3
        assert _v(s, "lake_mesh_endpoints_eligible", service=name) == 3
        assert _v(s, "lake_mesh_discovery_snapshot_stale", service=name) == 0
        assert _v(s, "lake_mesh_registered_instances") == 3
        # One heartbeat series per registered instance (TTL 60 s: few pushes in a test).
        for inst in instances:
            assert ("lake_mesh_heartbeats_total", (("service_id", inst.name),)) in s
            assert _v(s, "lake_mesh_heartbeat_consecutive_failures", service_id=inst.name) == 0

        # One instance dies: its connections are refused, retried elsewhere, until its
        # breaker opens and the detector ejects it.
        instances[0].kill()

        def tripped() -> bool:
            mesh.call(name, _ping, idempotent=True)
            samples = _prom(registry)
            return (
                _v(samples, "lake_mesh_breaker_transitions_total", service=name, state="open") >= 1
                and _v(
                    samples,
                    "lake_mesh_ejections_total",
                    service=name,
                    reason="consecutive_failures",
                )
                >= 1
            )

        wait_for(tripped, 30, "the dead instance's breaker to open and its ejection")
        s = _prom(registry)
        refused = _v(s, "lake_mesh_request_failures_total", service=name, outcome="connect_failure")
        assert refused >= 1
        assert _v(s, "lake_mesh_retries_total", service=name) == refused
        assert _v(s, "lake_mesh_ejections_active", service=name) == 1
        assert _v(s, "lake_mesh_breakers", service=name, state="open") == 1
        o = _otel(reader)
        assert o["lake_mesh.client.retries"] == refused
        assert o["lake_mesh.breaker.transitions"] >= 1
        assert o["lake_mesh.ejections"] == 1
        assert o["lake_mesh.ejections.active"] == 1
        ejected = [r for r in caplog.records if getattr(r, "event", "") == "endpoint_ejected"]
        assert ejected
        assert ejected[0].levelno == logging.WARNING
        assert ejected[0].name == LOGGER_NAME
        assert ejected[0].__dict__["endpoint"] == instances[0].name
        assert ejected[0].__dict__["service"] == name

        # A bad KV write: rejected (the last good stays), counted and logged with its fields.
        key = mesh.store.layout.service_key(name)
        mesh.client.request(
            "PUT", f"/v1/kv/{key}", operation="write", data=b'{"strategy": "fastest"}'
        )
        wait_for(
            lambda: _v(_prom(registry), "lake_mesh_config_rejections_total", field="strategy"),
            10,
            "the rejection counted",
        )
        assert _otel(reader)["lake_mesh.config.rejections"] == 1
        (record,) = [r for r in caplog.records if getattr(r, "event", "") == "config_rejected"]
        assert record.levelno == logging.WARNING
        assert record.__dict__["key"] == key
        assert record.__dict__["field"] == "strategy"
        assert "fastest" in record.__dict__["reason"]

        # The agent forgets an instance: anti-entropy registers it again, counted and logged.
        forgotten = instances[1].name
        mesh.client.request("PUT", f"/v1/agent/service/deregister/{forgotten}", operation="forget")
        wait_for(
            lambda: _v(_prom(registry), "lake_mesh_reregistrations_total") >= 1,
            15,
            "the re-registration counted",
        )
        again = [r for r in caplog.records if getattr(r, "event", "") == "reregistered"]
        assert again[0].__dict__["service_id"] == forgotten
        assert again[0].levelno == logging.WARNING
        assert _otel(reader)["lake_mesh.registration.reregistrations"] >= 1
    # Closing the mesh unregisters the collectors: nothing is left to scrape.
    assert "lake_mesh" not in generate_latest(registry).decode()
    with pytest.raises(MeshError):
        mesh.call(name, _ping)


def test_an_agent_outage_shows_as_stale_and_fresh_again(
    dedicated_consul_agent: Any, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    registry = CollectorRegistry()
    config = MeshConfig(address=dedicated_consul_agent.address, kv_prefix=unique_name)
    mesh = Mesh(
        config,
        drain_on_sigterm=False,
        discovery_timeout=5.0,
        instruments=PrometheusInstruments(registry),
    )
    with mesh:
        mesh.route(unique_name)  # follows the service (none registered: an empty answer)
        s = _prom(registry)
        assert _v(s, "lake_mesh_discovery_snapshot_stale", service=unique_name) == 0
        assert _v(s, "lake_mesh_config_stale") == 0

        dedicated_consul_agent.stop()
        try:
            wait_for(
                lambda: (
                    _v(_prom(registry), "lake_mesh_discovery_snapshot_stale", service=unique_name)
                    == 1
                ),
                20,
                "the snapshot marked stale",
            )
            wait_for(
                lambda: _v(_prom(registry), "lake_mesh_config_unavailable_total") == 1,
                20,
                "KV unavailable counted",
            )
            wait_for(
                lambda: (
                    _v(_prom(registry), "lake_mesh_discovery_watch_failures", service=unique_name)
                    >= 2
                ),
                20,
                "the watch's failed queries counted",
            )
        finally:
            dedicated_consul_agent.start()
        wait_for(
            lambda: (
                _v(_prom(registry), "lake_mesh_discovery_snapshot_stale", service=unique_name) == 0
            ),
            30,
            "the snapshot fresh again",
        )
        assert _v(_prom(registry), "lake_mesh_discovery_watch_failures", service=unique_name) == 0
    events = {getattr(r, "event", None): r for r in caplog.records}
    stale, fresh = events["snapshot_stale"], events["snapshot_fresh"]
    assert stale.levelno == logging.WARNING
    assert unique_name in stale.__dict__["watch"]
    assert fresh.levelno == logging.INFO
    assert fresh.__dict__["failures"] >= 1
    assert events["config_unavailable"].levelno == logging.WARNING

"""Prometheus and OpenTelemetry exporters: every instrument moves as the scenario dictates.

Prometheus figures are read back from the text exposition with prometheus_client's own
parser; OpenTelemetry's from the SDK's InMemoryMetricReader. The route runs on a FakeClock.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lake_mesh_consul._core.breaker import BreakerPolicy
from lake_mesh_consul._core.detector import DetectorPolicy, EjectionPolicy
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.instruments import Instruments, Readings, ServiceReadings
from lake_mesh_consul._core.retry import BudgetPolicy, CallOptions, RetryPolicy
from lake_mesh_consul._core.route import Route, RouteSettings
from lake_mesh_consul.errors import RetryExhausted
from lake_mesh_consul.observability.otel import OtelInstruments
from lake_mesh_consul.observability.prometheus import PrometheusInstruments
from lake_mesh_consul.testing import FakeClock

NO_WAIT = RetryPolicy(attempts=3, backoff_base=0.0, backoff_max=0.0)
TRIPPY = DetectorPolicy(
    consecutive_failures=3,
    window=None,
    ejection=EjectionPolicy(max_ejection_percent=50.0),
    breaker=BreakerPolicy(consecutive_failures=3, window=None, reset_timeout=30.0),
)
READINGS = Readings(
    services=(
        ServiceReadings(
            service="s",
            endpoints=2,
            eligible=1,
            panic=False,
            breakers={"closed": 1, "open": 1},
            ejected=1,
            snapshot_age=4.5,
            snapshot_stale=True,
            watch_failures=3,
        ),
    ),
    config_stale=False,
    registered=1,
    reregistrations=2,
    heartbeat_failures={"web-1": 3},
    heartbeats_sent={"web-1": 40},
    heartbeats_failed={"web-1": 5},
)


def _endpoints(n: int) -> list[ServiceEndpoint]:
    return [ServiceEndpoint.create(f"e{i}", "10.0.0.1", 8000 + i, service="s") for i in range(n)]


def _scenario(instruments: Instruments) -> None:
    """e0 refuses connections: its breaker opens, it is ejected, each failure is retried;
    then a route whose budget is empty refuses its retries; a KV key is rejected."""
    clock = FakeClock()
    route = Route(
        "s",
        RouteSettings(retry=NO_WAIT, detector=TRIPPY),
        endpoints=_endpoints(2),
        clock=clock,
        rng=random.Random(1),
        instruments=instruments,
    )

    def fn(endpoint: ServiceEndpoint, timeout: float | None) -> str:
        clock.advance(0.02)
        if endpoint.id == "e0":
            raise ConnectionRefusedError("refused")
        return "ok"

    for _ in range(8):
        assert route.call(fn, CallOptions(idempotent=True)) == "ok"
    broke = Route(
        "b",
        RouteSettings(
            retry=NO_WAIT,
            budget=BudgetPolicy(min_retries_per_sec=0, percent_can_retry=0.0),
            detector=DetectorPolicy(breaker=None),
        ),
        endpoints=_endpoints(2),
        clock=clock,
        instruments=instruments,
    )

    def fail(endpoint: ServiceEndpoint, timeout: float | None) -> str:
        raise ConnectionRefusedError("refused")

    for _ in range(2):
        with pytest.raises(RetryExhausted):
            broke.call(fail, CallOptions(idempotent=True))
    instruments.config_event("rejected", "lake-mesh/services/s", "retry.attempts", "must be >= 1")
    instruments.config_event("applied", "lake-mesh/services/s", None, "")


# --- Prometheus ------------------------------------------------------------------------------


@pytest.fixture
def prom() -> Iterator[tuple[PrometheusInstruments, CollectorRegistry]]:
    registry = CollectorRegistry()
    instruments = PrometheusInstruments(registry)
    yield instruments, registry
    instruments.close()


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_prometheus_counts_the_scenario(
    prom: tuple[PrometheusInstruments, CollectorRegistry],
) -> None:
    instruments, registry = prom
    _scenario(instruments)
    s = _samples(registry)
    failures = _value(s, "lake_mesh_request_failures_total", service="s", outcome="connect_failure")
    successes = _value(s, "lake_mesh_requests_total", service="s", outcome="success")
    assert successes == 8
    assert failures >= 3  # until e0 was ejected and its breaker opened
    assert _value(s, "lake_mesh_retries_total", service="s") == failures
    assert _value(s, "lake_mesh_breaker_transitions_total", service="s", state="open") == 1
    assert _value(s, "lake_mesh_ejections_total", service="s", reason="consecutive_failures") == 1
    assert _value(s, "lake_mesh_retries_refused_total", service="b", reason="budget") == 2
    assert _value(s, "lake_mesh_request_duration_seconds_count", service="s") == 8 + failures
    assert _value(s, "lake_mesh_request_duration_seconds_bucket", service="s", le="0.025") == (
        8 + failures
    )
    assert _value(s, "lake_mesh_config_rejections_total", field="retry.attempts") == 1
    assert _value(s, "lake_mesh_config_reloads_total") == 1


def test_prometheus_reads_the_gauges_at_scrape(
    prom: tuple[PrometheusInstruments, CollectorRegistry],
) -> None:
    instruments, registry = prom
    assert "lake_mesh_breakers" not in generate_latest(registry).decode()  # not attached yet
    reads = []

    def source() -> Readings:
        reads.append(1)
        return READINGS

    instruments.attach(source)
    s = _samples(registry)
    assert len(reads) == 1  # one reading per scrape
    assert _value(s, "lake_mesh_breakers", service="s", state="open") == 1
    assert _value(s, "lake_mesh_ejections_active", service="s") == 1
    assert _value(s, "lake_mesh_endpoints_eligible", service="s") == 1
    assert _value(s, "lake_mesh_discovery_snapshot_age_seconds", service="s") == 4.5
    assert _value(s, "lake_mesh_discovery_snapshot_stale", service="s") == 1
    assert _value(s, "lake_mesh_discovery_watch_failures", service="s") == 3
    assert _value(s, "lake_mesh_reregistrations_total") == 2
    assert _value(s, "lake_mesh_heartbeat_consecutive_failures", service_id="web-1") == 3
    assert _value(s, "lake_mesh_registered_instances") == 1
    assert _value(s, "lake_mesh_heartbeats_total", service_id="web-1") == 40
    assert _value(s, "lake_mesh_heartbeat_failures_total", service_id="web-1") == 5


def test_prometheus_per_endpoint_labels_are_opt_in() -> None:
    registry = CollectorRegistry()
    instruments = PrometheusInstruments(registry, per_endpoint=True)
    try:
        _scenario(instruments)
        s = _samples(registry)
        assert (
            _value(
                s,
                "lake_mesh_breaker_transitions_total",
                service="s",
                state="open",
                endpoint="e0",
            )
            == 1
        )
        assert _value(s, "lake_mesh_requests_total", service="s", outcome="success", endpoint="e1")
    finally:
        instruments.close()


def test_prometheus_close_unregisters_and_a_second_instance_may_register() -> None:
    registry = CollectorRegistry()
    first = PrometheusInstruments(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        PrometheusInstruments(registry)
    first.close()
    first.close()  # idempotent
    assert "lake_mesh" not in generate_latest(registry).decode()
    PrometheusInstruments(registry).close()


# --- OpenTelemetry ---------------------------------------------------------------------------


def _otel() -> tuple[OtelInstruments, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return OtelInstruments(MeterProvider(metric_readers=[reader])), reader


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    if data is None:  # nothing measured since the last collection
        return out
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "lake_mesh_consul"
            for metric in scope.metrics:
                out[metric.name] = list(metric.data.data_points)
    return out


def _sum(points: dict[str, list[Any]], name: str, **attrs: Any) -> float:
    return sum(
        p.value
        for p in points.get(name, ())
        if all(p.attributes.get(k) == v for k, v in attrs.items())
    )


def test_otel_counts_the_scenario() -> None:
    instruments, reader = _otel()
    _scenario(instruments)
    points = _points(reader)
    durations = points["lake_mesh.client.request.duration"]
    ok = [p for p in durations if p.attributes["lake_mesh.outcome"] == "success"]
    failed = [p for p in durations if p.attributes.get("error.type") == "connect_failure"]
    assert sum(p.count for p in ok) == 8
    failures = sum(p.count for p in failed if p.attributes["lake_mesh.service"] == "s")
    assert failures >= 3
    assert "error.type" not in ok[0].attributes
    assert ok[0].sum == pytest.approx(8 * 0.02)
    ok_attrs = {"lake_mesh.service": "s", "lake_mesh.outcome": "success"}
    assert _sum(points, "lake_mesh.client.requests", **ok_attrs) == 8
    assert _sum(points, "lake_mesh.client.retries", **{"lake_mesh.service": "s"}) == failures
    refused = {"lake_mesh.service": "b", "lake_mesh.reason": "budget"}
    assert _sum(points, "lake_mesh.client.retries.refused", **refused) == 2
    assert _sum(points, "lake_mesh.breaker.transitions", **{"lake_mesh.breaker.state": "open"}) == 1
    assert _sum(points, "lake_mesh.ejections", **{"lake_mesh.reason": "consecutive_failures"}) == 1
    rejected = {"lake_mesh.config.field": "retry.attempts"}
    assert _sum(points, "lake_mesh.config.rejections", **rejected) == 1
    assert _sum(points, "lake_mesh.config.reloads") == 1


def test_otel_gauges_come_from_one_reading_per_collection() -> None:
    instruments, reader = _otel()
    reads = []

    def source() -> Readings:
        reads.append(1)
        return READINGS

    instruments.attach(source)
    points = _points(reader)
    assert len(reads) == 1  # every gauge of one collection from one reading
    assert _sum(points, "lake_mesh.breaker.endpoints", **{"lake_mesh.breaker.state": "open"}) == 1
    assert _sum(points, "lake_mesh.ejections.active") == 1
    assert _sum(points, "lake_mesh.discovery.snapshot.age") == 4.5
    assert _sum(points, "lake_mesh.discovery.snapshot.stale") == 1
    assert _sum(points, "lake_mesh.discovery.watch.failures") == 3
    assert _sum(points, "lake_mesh.registration.reregistrations") == 2
    assert _sum(points, "lake_mesh.heartbeat.consecutive_failures") == 3
    assert _sum(points, "lake_mesh.heartbeats") == 40
    assert _sum(points, "lake_mesh.heartbeat.failures") == 5
    instruments.close()
    assert "lake_mesh.ejections.active" not in {
        name for name, pts in _points(reader).items() if pts
    }


def test_otel_http_status_follows_the_http_client_conventions() -> None:
    instruments, reader = _otel()
    route = Route("s", endpoints=_endpoints(1), clock=FakeClock(), instruments=instruments)
    with route.request() as attempt:
        attempt.fail(status=503)
    (point,) = _points(reader)["lake_mesh.client.request.duration"]
    assert point.attributes["http.response.status_code"] == 503
    assert point.attributes["error.type"] == "503"  # the status code, as the conventions say
    assert point.attributes["lake_mesh.outcome"] == "gateway_error"


# --- the request tally both exporters share --------------------------------------------------


def test_the_tally_counts_exactly_across_threads_and_buckets_by_le() -> None:
    import sys
    import threading

    from lake_mesh_consul._core.outcome import SUCCESS, Classifier
    from lake_mesh_consul.observability._tally import FOLD_AT, RequestTally

    tally = RequestTally((0.1, 1.0))
    endpoint = _endpoints(1)[0]
    unavailable = Classifier().of_status(503)
    n = 3 * FOLD_AT  # each thread's appends race with folds (theirs and the scrapes')
    scraped = threading.Event()

    def work() -> None:
        for i in range(n):
            tally.add("s", endpoint, SUCCESS if i % 2 else unavailable, 0.1 if i % 4 else 2.0)

    def scrape() -> None:
        while not scraped.is_set():
            tally.cells()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as CPython allows
    try:
        threads = [threading.Thread(target=work) for _ in range(4)]
        scraper = threading.Thread(target=scrape)
        scraper.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        scraped.set()
        scraper.join()
    finally:
        sys.setswitchinterval(interval)
    cells = {c.key: c for c in tally.cells()}
    ok = cells[("s", "success", False, None, None)]
    bad = cells[("s", "gateway_error", True, 503, None)]
    assert ok.count == bad.count == 2 * n
    assert ok.buckets == (2 * n, 0, 0)  # 0.1 is "le 0.1"
    assert bad.buckets == (n, 0, n)  # every other one took 2 s: above every bound
    assert bad.sum == pytest.approx(n * 0.1 + n * 2.0)


def test_the_tally_keys_error_outcomes_by_kind_not_by_object() -> None:
    from lake_mesh_consul._core.outcome import Classifier
    from lake_mesh_consul.observability._tally import RequestTally

    tally = RequestTally((), keep_samples=2)
    endpoint = _endpoints(1)[0]
    for _ in range(3):  # a new Outcome object per error
        tally.add("s", endpoint, Classifier().of_error(ConnectionRefusedError()), 0.5)
    (cell,) = tally.cells()
    assert (cell.key, cell.count) == (("s", "connect_failure", True, None, None), 3)
    assert tally.drain_samples() == [(cell.key, [0.5, 0.5])]  # at most keep_samples kept
    assert tally.drain_samples() == []


def test_otel_per_endpoint_attributes_are_opt_in() -> None:
    reader = InMemoryMetricReader()
    instruments = OtelInstruments(MeterProvider(metric_readers=[reader]), per_endpoint=True)
    _scenario(instruments)
    points = _points(reader)
    opened = {"lake_mesh.breaker.state": "open", "lake_mesh.endpoint": "e0"}
    assert _sum(points, "lake_mesh.breaker.transitions", **opened) == 1
    ok = {"lake_mesh.endpoint": "e1", "lake_mesh.outcome": "success"}
    assert _sum(points, "lake_mesh.client.requests", **ok) == 8
    default, default_reader = _otel()
    _scenario(default)
    assert all(
        "lake_mesh.endpoint" not in p.attributes
        for pts in _points(default_reader).values()
        for p in pts
    )


def test_otel_reads_the_mesh_again_once_its_readings_are_a_second_old() -> None:
    clock = FakeClock()
    reader = InMemoryMetricReader()
    instruments = OtelInstruments(MeterProvider(metric_readers=[reader]), clock=clock)
    reads = []

    def source() -> Readings:
        reads.append(1)
        return READINGS

    instruments.attach(source)
    _points(reader)
    _points(reader)
    assert len(reads) == 1
    clock.advance(1.0)
    _points(reader)
    assert len(reads) == 2

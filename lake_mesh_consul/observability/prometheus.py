"""Prometheus metrics of the mesh on a ``prometheus_client`` registry (extra ``[prometheus]``).

:class:`PrometheusInstruments` counts the events of the request path and the configuration
store, and reads the mesh's gauges when scraped. Names follow Prometheus' conventions
(``lake_mesh_`` prefix, base units, ``_total`` counters, ``_seconds`` durations):

=============================================  ========================================
metric                                          labels
=============================================  ========================================
lake_mesh_requests_total                        service, outcome
lake_mesh_request_failures_total                service, outcome
lake_mesh_request_duration_seconds (histogram)  service
lake_mesh_retries_total                         service
lake_mesh_retries_refused_total                 service, reason (budget, attempts,
                                                deadline, not_idempotent, ...)
lake_mesh_breaker_transitions_total             service, state (the state entered)
lake_mesh_breakers                              service, state (endpoints per state)
lake_mesh_ejections_total                       service, reason
lake_mesh_ejections_returned_total              service
lake_mesh_ejections_overflow_total              service
lake_mesh_ejections_active                      service
lake_mesh_panic_requests_total                  service
lake_mesh_panic                                 service (1 while in panic mode)
lake_mesh_no_endpoint_total                     service
lake_mesh_endpoints / lake_mesh_endpoints_eligible  service
lake_mesh_discovery_snapshot_age_seconds        service
lake_mesh_discovery_snapshot_stale              service
lake_mesh_discovery_watch_failures              service (failed queries in a row)
lake_mesh_config_reloads_total                  (applied or deleted keys)
lake_mesh_config_rejections_total               field
lake_mesh_config_unavailable_total
lake_mesh_config_stale
lake_mesh_registered_instances
lake_mesh_reregistrations_total
lake_mesh_heartbeat_consecutive_failures        service_id
lake_mesh_heartbeats_total                      service_id
lake_mesh_heartbeat_failures_total              service_id
=============================================  ========================================

Per-endpoint labels are opt-in (``per_endpoint=True`` adds ``endpoint``, the instance id, to
the request, breaker and ejection metrics): by default every label set is bounded by the
number of services.

Example::

    from prometheus_client import CollectorRegistry, generate_latest
    registry = CollectorRegistry()
    with Mesh.from_env(instruments=PrometheusInstruments(registry)) as mesh:
        ...
        print(generate_latest(registry).decode())
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import REGISTRY, Collector

from lake_mesh_consul._core.breaker import BreakerTransition
from lake_mesh_consul._core.detector import EjectionEvent
from lake_mesh_consul._core.instruments import (
    Readings,
    ReadingsSource,
    endpoint_name,
    stop_category,
)
from lake_mesh_consul.observability._tally import RequestTally, TallyCell

__all__ = ["DURATION_BUCKETS", "PREFIX", "PrometheusInstruments"]

#: The prefix of every metric name.
PREFIX = "lake_mesh"
#: Histogram buckets of request durations (seconds): OpenTelemetry's HTTP client advice.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class PrometheusInstruments(RequestTally):
    """Every figure of the mesh as Prometheus metrics on ``registry``.

    Args:
        registry: the collector registry (default: ``prometheus_client``'s global one).
        per_endpoint: add an ``endpoint`` label (the instance id) to request, breaker and
            ejection metrics (cardinality grows with the number of instances).
        buckets: the request-duration histogram's buckets, seconds.

    Pass it to ``Mesh(instruments=...)``: the mesh attaches its gauges and, on close,
    :meth:`close` unregisters everything. One instance per mesh (and per registry).

    Raises:
        ValueError: ``registry`` already has these metrics (another instance registered
            them; close it first).

    Thread-safety: every method may be called from any thread.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        per_endpoint: bool = False,
        buckets: tuple[float, ...] = DURATION_BUCKETS,
    ) -> None:
        self.registry = REGISTRY if registry is None else registry
        self.per_endpoint = per_endpoint
        #: The request-duration histogram's bounds, seconds.
        self.buckets = tuple(buckets)
        self._readings: ReadingsSource | None = None
        self._lock = threading.Lock()
        ep = ("endpoint",) if per_endpoint else ()
        reg = self.registry
        # Requests are tallied without prometheus_client (see _tally), read at scrape.
        RequestTally.__init__(self, buckets, per_endpoint=per_endpoint)
        self._retries = Counter(
            f"{PREFIX}_retries",
            "Retries attempted after a failed attempt.",
            ("service",),
            registry=None,
        )
        self._refused = Counter(
            f"{PREFIX}_retries_refused",
            "Failed attempts not retried, by reason (budget: refused by the retry budget).",
            ("service", "reason"),
            registry=None,
        )
        self._transitions = Counter(
            f"{PREFIX}_breaker_transitions",
            "Circuit breaker transitions, by the state entered.",
            ("service", "state", *ep),
            registry=None,
        )
        self._ejections = Counter(
            f"{PREFIX}_ejections",
            "Outlier ejections, by trigger.",
            ("service", "reason", *ep),
            registry=None,
        )
        self._returns = Counter(
            f"{PREFIX}_ejections_returned",
            "Ejected endpoints returned to rotation.",
            ("service", *ep),
            registry=None,
        )
        self._overflow = Counter(
            f"{PREFIX}_ejections_overflow",
            "Ejections refused by the ejection cap (max_ejection_percent).",
            ("service",),
            registry=None,
        )
        self._panic = Counter(
            f"{PREFIX}_panic_requests",
            "Requests sent to the best candidate while nothing was eligible (panic).",
            ("service",),
            registry=None,
        )
        self._no_endpoint = Counter(
            f"{PREFIX}_no_endpoint",
            "Requests failed: no endpoint routable.",
            ("service",),
            registry=None,
        )
        self._reloads = Counter(
            f"{PREFIX}_config_reloads",
            "Configuration keys applied or deleted (live reload).",
            registry=None,
        )
        self._rejections = Counter(
            f"{PREFIX}_config_rejections",
            "Configuration keys rejected (last good kept).",
            ("field",),
            registry=None,
        )
        self._unavailable = Counter(
            f"{PREFIX}_config_unavailable",
            "Times KV configuration became unreadable.",
            registry=None,
        )
        self._collectors: list[Collector] = [
            self._retries, self._refused,
            self._transitions, self._ejections, self._returns, self._overflow, self._panic,
            self._no_endpoint, self._reloads, self._rejections, self._unavailable,
            _GaugeCollector(self),
        ]  # fmt: skip
        registered: list[Collector] = []
        try:
            for collector in self._collectors:
                reg.register(collector)
                registered.append(collector)
        except ValueError:
            for collector in registered:
                reg.unregister(collector)
            raise
        self._closed = False

    # --- events --------------------------------------------------------------------------

    def retry(self, service: str, attempt: int, stop: str | None) -> None:
        """Count a retry, or a refusal by its reason."""
        if stop is None:
            self._retries.labels(service).inc()
        else:
            self._refused.labels(service, stop_category(stop)).inc()

    def breaker_transition(self, service: str, transition: BreakerTransition) -> None:
        """Count the transition by the state entered."""
        ep = (transition.name,) if self.per_endpoint else ()
        self._transitions.labels(service, transition.new.value, *ep).inc()

    def ejection(self, service: str, event: EjectionEvent) -> None:
        """Count an ejection, a return or an overflow."""
        ep = (endpoint_name(event.endpoint),) if self.per_endpoint else ()
        if event.kind == "ejected":
            self._ejections.labels(service, event.reason, *ep).inc()
        elif event.kind == "returned":
            self._returns.labels(service, *ep).inc()
        else:
            self._overflow.labels(service).inc()

    def panic(self, service: str, reason: str | None) -> None:
        """Count a request sent in panic mode."""
        self._panic.labels(service).inc()

    def no_endpoint(self, service: str, reason: str) -> None:
        """Count a request that found nothing routable."""
        self._no_endpoint.labels(service).inc()

    def config_event(self, kind: str, key: str | None, field: str | None, reason: str) -> None:
        """Count reloads (applied/deleted), rejections (by field) and KV outages."""
        if kind in ("applied", "deleted"):
            self._reloads.inc()
        elif kind == "rejected":
            self._rejections.labels(field or "").inc()
        elif kind == "unavailable":
            self._unavailable.inc()

    # --- gauges --------------------------------------------------------------------------

    def attach(self, readings: ReadingsSource) -> None:
        """Read the mesh's gauges from ``readings`` at each scrape."""
        self._readings = readings

    def requests(self) -> list[TallyCell]:
        """The request tally's cells now (what the scrape reports)."""
        return self.cells()

    def read(self) -> Readings | None:
        """The attached readings now (``None`` before :meth:`attach` or after close)."""
        source = self._readings
        return None if source is None or self._closed else source()

    def close(self) -> None:
        """Unregister every metric from the registry. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for collector in self._collectors:
            try:
                self.registry.unregister(collector)
            except KeyError:
                pass

    def __repr__(self) -> str:
        return f"PrometheusInstruments(per_endpoint={self.per_endpoint})"


class _GaugeCollector(Collector):
    """The gauges read at scrape time (one :meth:`Mesh.readings` per scrape)."""

    def __init__(self, owner: PrometheusInstruments) -> None:
        self._owner = owner

    def describe(self) -> list[Metric]:
        """Nothing up front: the families depend on the readings (and need no describe)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The request families from the tally, then one family per gauge."""
        yield from _request_families(self._owner)
        readings = self._owner.read()
        if readings is None:
            return
        g = {
            name: GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)
            for name, doc, labels in (
                ("endpoints", "Endpoints discovery reports.", ("service",)),
                ("endpoints_eligible", "Endpoints a pick may choose now.", ("service",)),
                ("panic", "1 while nothing (or too little) is eligible.", ("service",)),
                ("breakers", "Endpoints per circuit breaker state.", ("service", "state")),
                ("ejections_active", "Endpoints ejected now.", ("service",)),
                (
                    "discovery_snapshot_age_seconds",
                    "Seconds since discovery's last good answer.",
                    ("service",),
                ),
                (
                    "discovery_snapshot_stale",
                    "1 while discovery serves its last good answer after a failure.",
                    ("service",),
                ),
                (
                    "discovery_watch_failures",
                    "Failed queries in a row of discovery's watch (0 while fresh).",
                    ("service",),
                ),
            )
        }
        for s in readings.services:
            name = (s.service,)
            g["endpoints"].add_metric(name, s.endpoints)
            g["endpoints_eligible"].add_metric(name, s.eligible)
            g["panic"].add_metric(name, 1.0 if s.panic else 0.0)
            for state, n in sorted(s.breakers.items()):
                g["breakers"].add_metric((s.service, state), n)
            g["ejections_active"].add_metric(name, s.ejected)
            if s.snapshot_age is not None:
                g["discovery_snapshot_age_seconds"].add_metric(name, s.snapshot_age)
            g["discovery_snapshot_stale"].add_metric(name, 1.0 if s.snapshot_stale else 0.0)
            g["discovery_watch_failures"].add_metric(name, s.watch_failures)
        yield from g.values()
        yield GaugeMetricFamily(
            f"{PREFIX}_config_stale",
            "1 while the KV configuration could not be read lately.",
            value=1.0 if readings.config_stale else 0.0,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_registered_instances",
            "Instances this process registered.",
            value=readings.registered,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_reregistrations",
            "Times the agent forgot an instance and it was registered again.",
            value=readings.reregistrations,
        )
        beats = GaugeMetricFamily(
            f"{PREFIX}_heartbeat_consecutive_failures",
            "TTL heartbeats failed in a row, per registered instance.",
            labels=("service_id",),
        )
        for sid, n in sorted(readings.heartbeat_failures.items()):
            beats.add_metric((sid,), n)
        yield beats
        for metric, doc, values in (
            ("heartbeats", "TTL updates the agent accepted.", readings.heartbeats_sent),
            ("heartbeat_failures", "TTL updates that failed.", readings.heartbeats_failed),
        ):
            family = CounterMetricFamily(f"{PREFIX}_{metric}", doc, labels=("service_id",))
            for sid, n in sorted(values.items()):
                family.add_metric((sid,), n)
            yield family


def _request_families(owner: PrometheusInstruments) -> Iterator[Metric]:
    """requests_total and request_failures_total by outcome; the duration histogram."""
    ep = ("endpoint",) if owner.per_endpoint else ()
    requests = CounterMetricFamily(
        f"{PREFIX}_requests",
        "Attempts finished, by outcome kind.",
        labels=("service", "outcome", *ep),
    )
    failures = CounterMetricFamily(
        f"{PREFIX}_request_failures",
        "Attempts that failed (counted against the endpoint), by outcome kind.",
        labels=("service", "outcome", *ep),
    )
    histogram = HistogramMetricFamily(
        f"{PREFIX}_request_duration_seconds",
        "Seconds per attempt, admission to outcome.",
        labels=("service", *ep),
    )
    counts: dict[tuple[str, ...], int] = {}
    failed: dict[tuple[str, ...], int] = {}
    series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
    for cell in owner.requests():
        service, kind, failure, _status, endpoint = cell.key
        where = (service,) if endpoint is None else (service, endpoint)
        labels = (service, kind, *where[1:])
        counts[labels] = counts.get(labels, 0) + cell.count
        if failure:
            failed[labels] = failed.get(labels, 0) + cell.count
        buckets, total = series.setdefault(where, ([0] * len(cell.buckets), [0.0]))
        for i, n in enumerate(cell.buckets):
            buckets[i] += n
        total[0] += cell.sum
    for labels, n in counts.items():
        requests.add_metric(labels, n)
    for labels, n in failed.items():
        failures.add_metric(labels, n)
    bounds = [*(_go_float(b) for b in owner.buckets), "+Inf"]
    for place, (buckets, total) in series.items():
        cumulative, running = [], 0
        for bound, n in zip(bounds, buckets, strict=True):
            running += n
            cumulative.append((bound, float(running)))
        histogram.add_metric(place, cumulative, total[0])
    yield requests
    yield failures
    yield histogram


def _go_float(value: float) -> str:
    """A bucket bound as prometheus_client writes it (``0.005``, ``1.0``, ``10.0``)."""
    return repr(float(value))

"""OpenTelemetry metrics of the mesh (extra ``[otel]``, on ``opentelemetry-api``).

:class:`OtelInstruments` creates its instruments on a meter of the given (or the global)
meter provider; the application's SDK decides where they go (OTLP, Prometheus, console).
Names follow OpenTelemetry's conventions (dotted, lower case, units in ``unit``, no
``_total``); attribute names are namespaced ``lake_mesh.*`` except the semantic conventions'
own: ``error.type`` (a failed attempt's status code as text, else its outcome kind) and
``http.response.status_code`` (where the attempt had an HTTP status, as on the HTTP paths),
following the HTTP client conventions for ``lake_mesh.client.request.duration``.

============================================  ==========  ==============================
instrument                                     kind        attributes
============================================  ==========  ==============================
lake_mesh.client.request.duration (s)          histogram   lake_mesh.service,
                                                           lake_mesh.outcome, error.type,
                                                           http.response.status_code
lake_mesh.client.requests                      obs. count  as the duration histogram
lake_mesh.client.retries                       counter     lake_mesh.service
lake_mesh.client.retries.refused               counter     lake_mesh.service,
                                                           lake_mesh.reason
lake_mesh.breaker.transitions                  counter     lake_mesh.service,
                                                           lake_mesh.breaker.state
lake_mesh.breaker.endpoints                    gauge       lake_mesh.service,
                                                           lake_mesh.breaker.state
lake_mesh.ejections                            counter     lake_mesh.service,
                                                           lake_mesh.reason
lake_mesh.ejections.returned / .overflow       counter     lake_mesh.service
lake_mesh.ejections.active                     gauge       lake_mesh.service
lake_mesh.panic.requests                       counter     lake_mesh.service
lake_mesh.panic                                gauge       lake_mesh.service
lake_mesh.no_endpoint                          counter     lake_mesh.service
lake_mesh.endpoints / lake_mesh.endpoints.eligible  gauge  lake_mesh.service
lake_mesh.discovery.snapshot.age (s)           gauge       lake_mesh.service
lake_mesh.discovery.snapshot.stale             gauge       lake_mesh.service
lake_mesh.config.reloads                       counter
lake_mesh.config.rejections                    counter     lake_mesh.config.field
lake_mesh.config.unavailable                   counter
lake_mesh.config.stale                         gauge
lake_mesh.registration.instances               gauge
lake_mesh.registration.reregistrations         obs. counter
lake_mesh.heartbeat.consecutive_failures       gauge       lake_mesh.service.id
lake_mesh.heartbeats / .heartbeat.failures     obs. count  lake_mesh.service.id
============================================  ==========  ==============================

The count of requests is the histogram's count (and ``lake_mesh.client.requests``).
Per-endpoint attributes are opt-in (``per_endpoint=True`` adds ``lake_mesh.endpoint``, the
instance id).

Example::

    from opentelemetry.sdk.metrics import MeterProvider
    provider = MeterProvider(metric_readers=[...])
    mesh = Mesh.from_env(instruments=OtelInstruments(provider))
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter

from lake_mesh_consul._core.breaker import BreakerTransition
from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock
from lake_mesh_consul._core.detector import EjectionEvent
from lake_mesh_consul._core.instruments import (
    Readings,
    ReadingsSource,
    endpoint_name,
    stop_category,
)
from lake_mesh_consul._version import __version__
from lake_mesh_consul.observability._tally import CellKey, RequestTally

__all__ = ["DURATION_BOUNDARIES", "KEEP_SAMPLES", "METER_NAME", "OtelInstruments"]

#: The instrumentation scope's name.
METER_NAME = "lake_mesh_consul"
#: The request-duration histogram's bucket boundaries (the HTTP client conventions' advice).
DURATION_BOUNDARIES = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
#: Durations kept per attribute set between collections (OtelInstruments' keep_samples).
KEEP_SAMPLES = 100_000
#: Seconds one Mesh.readings() serves every gauge callback of one collection.
READINGS_TTL = 1.0

_Attrs = dict[str, Any]


class OtelInstruments(RequestTally):
    """Every figure of the mesh as OpenTelemetry instruments.

    Args:
        meter_provider: where the meter comes from (default: the global provider).
        per_endpoint: add ``lake_mesh.endpoint`` (the instance id) to request, breaker and
            ejection measurements.
        keep_samples: durations kept per attribute set between two collections (beyond
            it the histogram misses them; ``lake_mesh.client.requests`` still counts them).
        clock: time for the readings cache (one Mesh.readings() per collection).

    The success path does not call the SDK: attempts are tallied, and each collection
    replays the durations kept since the last one into the histogram (the SDK's ``record``
    costs tens of microseconds per call on a slow machine; see bench_instruments).

    Pass it to ``Mesh(instruments=...)``; the gauges are read from the mesh at collection
    (one :meth:`~lake_mesh_consul.mesh.Mesh.readings` serves every gauge of a collection).
    After :meth:`close` the gauges report nothing.

    Thread-safety: every method may be called from any thread.
    """

    def __init__(
        self,
        meter_provider: MeterProvider | None = None,
        *,
        per_endpoint: bool = False,
        keep_samples: int = KEEP_SAMPLES,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.per_endpoint = per_endpoint
        self._clock = clock
        meter = get_meter(METER_NAME, __version__, meter_provider=meter_provider)
        self._readings: ReadingsSource | None = None
        self._cached: tuple[float, Readings] | None = None
        self._lock = threading.Lock()
        self._attrs: dict[tuple[Any, ...], _Attrs] = {}
        # Requests are tallied without the SDK (its record() costs tens of us): see _tally.
        RequestTally.__init__(self, (), per_endpoint=per_endpoint, keep_samples=keep_samples)
        self._duration = meter.create_histogram(
            "lake_mesh.client.request.duration",
            unit="s",
            description="Seconds per attempt, admission to outcome.",
            explicit_bucket_boundaries_advisory=list(DURATION_BOUNDARIES),
        )
        self._retries = meter.create_counter(
            "lake_mesh.client.retries", description="Retries attempted after a failed attempt."
        )
        self._refused = meter.create_counter(
            "lake_mesh.client.retries.refused",
            description="Failed attempts not retried, by reason (budget: the retry budget).",
        )
        self._transitions = meter.create_counter(
            "lake_mesh.breaker.transitions", description="Breaker transitions, by state entered."
        )
        self._ejections = meter.create_counter(
            "lake_mesh.ejections", description="Outlier ejections, by trigger."
        )
        self._returns = meter.create_counter(
            "lake_mesh.ejections.returned", description="Ejected endpoints back in rotation."
        )
        self._overflow = meter.create_counter(
            "lake_mesh.ejections.overflow", description="Ejections refused by the ejection cap."
        )
        self._panic = meter.create_counter(
            "lake_mesh.panic.requests", description="Requests sent in panic mode."
        )
        self._no_endpoint = meter.create_counter(
            "lake_mesh.no_endpoint", description="Requests failed: no endpoint routable."
        )
        self._reloads = meter.create_counter(
            "lake_mesh.config.reloads", description="Configuration keys applied or deleted."
        )
        self._rejections = meter.create_counter(
            "lake_mesh.config.rejections", description="Configuration keys rejected."
        )
        self._unavailable = meter.create_counter(
            "lake_mesh.config.unavailable", description="Times KV became unreadable."
        )
        gauges: tuple[tuple[str, str, str, Callable[[Readings], Iterable[Observation]]], ...] = (
            ("lake_mesh.endpoints", "1", "Endpoints discovery reports.", _endpoints),
            ("lake_mesh.endpoints.eligible", "1", "Endpoints a pick may choose.", _eligible),
            ("lake_mesh.panic", "1", "1 while in panic mode.", _panic),
            ("lake_mesh.breaker.endpoints", "1", "Endpoints per breaker state.", _breakers),
            ("lake_mesh.ejections.active", "1", "Endpoints ejected now.", _ejected),
            ("lake_mesh.discovery.snapshot.age", "s", "Seconds since the last good answer.", _age),
            ("lake_mesh.discovery.snapshot.stale", "1", "1 while serving a stale answer.", _stale),
            (
                "lake_mesh.discovery.watch.failures",
                "1",
                "Failed queries in a row of discovery's watch.",
                _watch_failures,
            ),
            ("lake_mesh.config.stale", "1", "1 while KV could not be read lately.", _cfg_stale),
            ("lake_mesh.registration.instances", "1", "Instances registered.", _registered),
            (
                "lake_mesh.heartbeat.consecutive_failures",
                "1",
                "TTL heartbeats failed in a row.",
                _heartbeats,
            ),
        )
        for name, unit, doc, read in gauges:
            meter.create_observable_gauge(
                name, callbacks=[self._callback(read)], unit=unit, description=doc
            )
        meter.create_observable_counter(
            "lake_mesh.client.requests",
            callbacks=[self._requests],
            description="Attempts finished (also the duration histogram's count).",
        )
        for name, doc, read in (
            ("lake_mesh.heartbeats", "TTL updates the agent accepted.", _beats_sent),
            ("lake_mesh.heartbeat.failures", "TTL updates that failed.", _beats_failed),
        ):
            meter.create_observable_counter(name, callbacks=[self._callback(read)], description=doc)
        meter.create_observable_counter(
            "lake_mesh.registration.reregistrations",
            callbacks=[self._callback(_reregistrations)],
            description="Times the agent forgot an instance and it was registered again.",
        )

    def _callback(
        self, read: Callable[[Readings], Iterable[Observation]]
    ) -> Callable[[CallbackOptions], Iterator[Observation]]:
        def callback(_options: CallbackOptions) -> Iterator[Observation]:
            readings = self.read()
            if readings is not None:
                yield from read(readings)

        return callback

    # --- events --------------------------------------------------------------------------

    def _service_attrs(self, service: str, *extra: Any) -> _Attrs:
        """Attribute dicts are cached: the SDK hashes them, building one costs more."""
        key = (service, *extra)
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = {"lake_mesh.service": service}
            for name, value in zip(extra[::2], extra[1::2], strict=True):
                attrs[name] = value
            with self._lock:
                attrs = self._attrs.setdefault(key, attrs)
        return attrs

    def _cell_attrs(self, key: CellKey) -> _Attrs:
        """A tally cell's attributes (the HTTP client conventions' where they apply)."""
        attrs = self._attrs.get(key)
        if attrs is None:
            service, kind, failure, status, endpoint = key
            attrs = {"lake_mesh.service": service, "lake_mesh.outcome": kind}
            if failure:
                # The HTTP client conventions: the status code as text when there is one.
                attrs["error.type"] = kind if status is None else str(status)
            if status is not None:
                attrs["http.response.status_code"] = status
            if endpoint is not None:
                attrs["lake_mesh.endpoint"] = endpoint
            with self._lock:
                attrs = self._attrs.setdefault(key, attrs)
        return attrs

    def _requests(self, _options: CallbackOptions) -> Iterator[Observation]:
        """Collection: replay the kept durations into the histogram, then the counts."""
        record = self._duration.record
        for key, samples in self.drain_samples():
            attrs = self._cell_attrs(key)
            for seconds in samples:
                record(seconds, attrs)
        for cell in self.cells():
            yield Observation(cell.count, self._cell_attrs(cell.key))

    def retry(self, service: str, attempt: int, stop: str | None) -> None:
        """Count a retry, or a refusal by its reason."""
        if stop is None:
            self._retries.add(1, self._service_attrs(service))
        else:
            reason = stop_category(stop)
            self._refused.add(1, self._service_attrs(service, "lake_mesh.reason", reason))

    def breaker_transition(self, service: str, transition: BreakerTransition) -> None:
        """Count the transition by the state entered."""
        extra: tuple[Any, ...] = ("lake_mesh.breaker.state", transition.new.value)
        if self.per_endpoint:
            extra += ("lake_mesh.endpoint", transition.name)
        self._transitions.add(1, self._service_attrs(service, *extra))

    def ejection(self, service: str, event: EjectionEvent) -> None:
        """Count an ejection, a return or an overflow."""
        ep: tuple[Any, ...] = (
            ("lake_mesh.endpoint", endpoint_name(event.endpoint)) if self.per_endpoint else ()
        )
        if event.kind == "ejected":
            attrs = self._service_attrs(service, "lake_mesh.reason", event.reason, *ep)
            self._ejections.add(1, attrs)
        elif event.kind == "returned":
            self._returns.add(1, self._service_attrs(service, *ep))
        else:
            self._overflow.add(1, self._service_attrs(service))

    def panic(self, service: str, reason: str | None) -> None:
        """Count a request sent in panic mode."""
        self._panic.add(1, self._service_attrs(service))

    def no_endpoint(self, service: str, reason: str) -> None:
        """Count a request that found nothing routable."""
        self._no_endpoint.add(1, self._service_attrs(service))

    def config_event(self, kind: str, key: str | None, field: str | None, reason: str) -> None:
        """Count reloads (applied/deleted), rejections (by field) and KV outages."""
        if kind in ("applied", "deleted"):
            self._reloads.add(1)
        elif kind == "rejected":
            self._rejections.add(1, {"lake_mesh.config.field": field or ""})
        elif kind == "unavailable":
            self._unavailable.add(1)

    # --- gauges --------------------------------------------------------------------------

    def attach(self, readings: ReadingsSource) -> None:
        """Read the mesh's gauges from ``readings`` at each collection."""
        self._readings = readings
        self._cached = None

    def read(self) -> Readings | None:
        """The attached readings (one per :data:`READINGS_TTL`); ``None`` if none/closed."""
        source = self._readings
        if source is None:
            return None
        now = self._clock.monotonic()
        cached = self._cached
        if cached is not None and now - cached[0] < READINGS_TTL:
            return cached[1]
        readings = source()
        self._cached = (now, readings)
        return readings

    def close(self) -> None:
        """Stop reading the mesh (the gauges report nothing from now on). Idempotent."""
        self._readings = None
        self._cached = None

    def __repr__(self) -> str:
        return f"OtelInstruments(per_endpoint={self.per_endpoint})"


def _per_service(readings: Readings, value: Callable[[Any], float | None]) -> list[Observation]:
    out = []
    for s in readings.services:
        v = value(s)
        if v is not None:
            out.append(Observation(v, {"lake_mesh.service": s.service}))
    return out


def _endpoints(r: Readings) -> list[Observation]:
    return _per_service(r, lambda s: s.endpoints)


def _eligible(r: Readings) -> list[Observation]:
    return _per_service(r, lambda s: s.eligible)


def _panic(r: Readings) -> list[Observation]:
    return _per_service(r, lambda s: 1 if s.panic else 0)


def _ejected(r: Readings) -> list[Observation]:
    return _per_service(r, lambda s: s.ejected)


def _age(r: Readings) -> list[Observation]:
    return _per_service(r, lambda s: s.snapshot_age)


def _stale(r: Readings) -> list[Observation]:
    return _per_service(r, lambda s: 1 if s.snapshot_stale else 0)


def _watch_failures(r: Readings) -> list[Observation]:
    return _per_service(r, lambda s: s.watch_failures)


def _breakers(r: Readings) -> list[Observation]:
    return [
        Observation(n, {"lake_mesh.service": s.service, "lake_mesh.breaker.state": state})
        for s in r.services
        for state, n in sorted(s.breakers.items())
    ]


def _cfg_stale(r: Readings) -> list[Observation]:
    return [Observation(1 if r.config_stale else 0)]


def _registered(r: Readings) -> list[Observation]:
    return [Observation(r.registered)]


def _reregistrations(r: Readings) -> list[Observation]:
    return [Observation(r.reregistrations)]


def _heartbeats(r: Readings) -> list[Observation]:
    return [
        Observation(n, {"lake_mesh.service.id": sid})
        for sid, n in sorted(r.heartbeat_failures.items())
    ]


def _beats_sent(r: Readings) -> list[Observation]:
    return [
        Observation(n, {"lake_mesh.service.id": sid})
        for sid, n in sorted(r.heartbeats_sent.items())
    ]


def _beats_failed(r: Readings) -> list[Observation]:
    return [
        Observation(n, {"lake_mesh.service.id": sid})
        for sid, n in sorted(r.heartbeats_failed.items())
    ]

"""Observability: the events and gauges of the mesh, as logs and metrics.

The request path and the mesh report to one :class:`Instruments` (see
:mod:`lake_mesh_consul._core.instruments` for every event); this package holds the public
names and the exporters, each in its own submodule so that its library loads only when used:

* :class:`LogInstruments`: log lines (logger ``lake_mesh_consul.events``) for ejections,
  breaker transitions, retry-budget refusals, panic and no-endpoint failures, with structured
  ``extra`` fields. :class:`~lake_mesh_consul.mesh.Mesh` adds it by default.
* :mod:`lake_mesh_consul.observability.prometheus`: ``PrometheusInstruments`` (extra
  ``[prometheus]``), every figure on a ``prometheus_client`` collector registry.
* :mod:`lake_mesh_consul.observability.otel`: ``OtelInstruments`` (extra ``[otel]``), every
  figure as an OpenTelemetry instrument of a meter provider.

Example::

    from prometheus_client import start_http_server
    from lake_mesh_consul import Mesh
    from lake_mesh_consul.observability.prometheus import PrometheusInstruments

    mesh = Mesh.from_env(instruments=PrometheusInstruments())
    start_http_server(9100)  # GET :9100/metrics

Importing this package imports neither ``prometheus_client`` nor ``opentelemetry``.
"""

from __future__ import annotations

from lake_mesh_consul._core.instruments import (
    LOGGER_NAME,
    NO_INSTRUMENTS,
    Instruments,
    LogInstruments,
    MultiInstruments,
    Readings,
    ReadingsSource,
    ServiceReadings,
    combine,
    endpoint_name,
    listens,
    stop_category,
)

__all__ = [
    "LOGGER_NAME",
    "NO_INSTRUMENTS",
    "Instruments",
    "LogInstruments",
    "MultiInstruments",
    "Readings",
    "ReadingsSource",
    "ServiceReadings",
    "combine",
    "endpoint_name",
    "listens",
    "stop_category",
]

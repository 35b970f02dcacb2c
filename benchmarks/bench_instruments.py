"""What instrumentation costs on the success path: ``Route.call`` with and without listeners.

Issue 18's targets: with nothing listening, within 0.2 us of the route without the
instrumentation hooks; with Prometheus or OpenTelemetry listening, at most 2 us more per
request. The route is bench_route's (three endpoints, default settings, a function that
returns at once); CPU time of the calling thread, alternated rounds.

Rows:

* ``instruments.none.success_cpu``: CPU us per ``Route.call`` with the default instruments
  (``NO_INSTRUMENTS``), minus the bare call (as ``route.call.success_cpu``).
* ``instruments.logs.over_none_cpu``: the Mesh's default (``LogInstruments``: nothing on the
  success path) minus no instruments, per call; ``baseline`` = the route with none.
* ``instruments.prometheus.over_none_cpu``, ``instruments.otel.over_none_cpu``: the same with
  ``PrometheusInstruments`` (a fresh registry) and ``OtelInstruments`` (an SDK meter provider
  with an in-memory reader) listening.
* ``instruments.none.python_calls`` and ``instruments.prometheus.python_calls``:
  Python-level calls per ``Route.call`` (cProfile): deterministic; the first equals
  ``route.call.python_calls`` when nothing listens (no hook runs).

Against the tree without the hooks, compare ``route.call.python_calls`` and
``route.call.success_cpu`` of both trees, alternated (bench_route measures the same route).
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import time
from collections.abc import Callable, Iterator

from _common import Context, Row, alternate, compare_alternated

from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.instruments import NO_INSTRUMENTS, Instruments, LogInstruments
from lake_mesh_consul._core.retry import CallOptions
from lake_mesh_consul._core.route import Route

#: Issue 18's budget per request with an exporter listening, microseconds.
TARGET_LISTENING_US = 2.0
#: Issue 18's budget with nothing listening, microseconds over the route without hooks.
TARGET_IDLE_US = 0.2


def _fn(endpoint: ServiceEndpoint, timeout: float | None) -> int:
    return 1


def _route(instruments: Instruments) -> Route:
    endpoints = [ServiceEndpoint.create(f"w{i}", f"127.0.0.{i}", 80) for i in range(1, 4)]
    return Route("bench-instruments", endpoints=endpoints, instruments=instruments)


def _timed(route: Route, loop: int) -> Callable[[], float]:
    options = CallOptions(idempotent=True)
    call = route.call

    def run() -> float:
        start = time.thread_time()
        for _ in range(loop):
            call(_fn, options)
        return (time.thread_time() - start) / loop * 1e6

    run()  # warm: breakers, stats, label children exist before measuring
    return run


def _bare(loop: int) -> Callable[[], float]:
    endpoint = ServiceEndpoint.create("w1", "127.0.0.1", 80)

    def run() -> float:
        start = time.thread_time()
        for _ in range(loop):
            _fn(endpoint, None)
        return (time.thread_time() - start) / loop * 1e6

    return run


def _over(row: Row, xs: list[float], ys: list[float]) -> Row:
    """``row`` valued as the median per-round difference (xs minus ys)."""
    row.value = statistics.median(x - y for x, y in zip(xs, ys, strict=True))
    return row


def _python_calls(route: Route, n: int) -> float:
    options = CallOptions(idempotent=True)
    call = route.call
    call(_fn, options)
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(n):
        call(_fn, options)
    profile.disable()
    return (pstats.Stats(profile).total_calls - 1) / n - 1  # minus disable() and _fn


def _prometheus() -> Instruments | None:
    try:
        from prometheus_client import CollectorRegistry

        from lake_mesh_consul.observability.prometheus import PrometheusInstruments
    except ImportError:  # the [prometheus] extra is not installed: no row
        return None
    return PrometheusInstruments(CollectorRegistry())


def _otel() -> Instruments | None:
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        from lake_mesh_consul.observability.otel import OtelInstruments
    except ImportError:  # the [otel] extra or the SDK is not installed: no row
        return None
    return OtelInstruments(MeterProvider(metric_readers=[InMemoryMetricReader()]))


def run(ctx: Context) -> Iterator[Row]:
    """Yield the instrumentation-overhead rows (quick: a few seconds)."""
    loop, rounds = (5_000, 6) if ctx.quick else (20_000, 12)
    none = _route(NO_INSTRUMENTS)
    through_none = _timed(none, loop)
    xs, ys = alternate(through_none, _bare(loop), rounds)
    yield _over(
        compare_alternated(
            "instruments.none.success_cpu",
            xs,
            ys,
            "us/call",
            baseline_is="fn(endpoint, timeout) called bare",
            measures="Route.call with no instruments minus the bare call",
        ),
        xs,
        ys,
    )
    base = "the same Route.call with no instruments"
    xs, ys = alternate(_timed(_route(LogInstruments()), loop), through_none, rounds)
    yield _over(
        compare_alternated(
            "instruments.logs.over_none_cpu",
            xs,
            ys,
            "us/call",
            baseline_is=base,
            target=TARGET_IDLE_US,
        ),
        xs,
        ys,
    )
    prometheus = _prometheus()
    if prometheus is not None:
        route = _route(prometheus)
        xs, ys = alternate(_timed(route, loop), through_none, rounds)
        yield _over(
            compare_alternated(
                "instruments.prometheus.over_none_cpu",
                xs,
                ys,
                "us/call",
                baseline_is=base,
                target=TARGET_LISTENING_US,
            ),
            xs,
            ys,
        )
        yield Row(
            "instruments.prometheus.python_calls",
            _python_calls(route, 1_000),
            "calls/call",
            n=1_000,
            extra={"measures": "Python-level calls per Route.call, Prometheus listening"},
        )
        prometheus.close()
    otel = _otel()
    if otel is not None:
        xs, ys = alternate(_timed(_route(otel), loop), through_none, rounds)
        yield _over(
            compare_alternated(
                "instruments.otel.over_none_cpu",
                xs,
                ys,
                "us/call",
                baseline_is=base,
                target=TARGET_LISTENING_US,
            ),
            xs,
            ys,
        )
    yield Row(
        "instruments.none.python_calls",
        _python_calls(none, 1_000),
        "calls/call",
        n=1_000,
        extra={"measures": "Python-level calls per Route.call, nothing listening"},
    )

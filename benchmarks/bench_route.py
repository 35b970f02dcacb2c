"""The request path's own cost: ``Route.call`` of a function that does nothing.

Issue 13's ceiling for the ``execute``-equivalent success path (pick + breaker permit,
budget deposit, classify, record to balancer, detector and breaker) is 5 us. This module
measures exactly that, with no Consul and no I/O: a :class:`Route` over three endpoints with
default settings (round robin, outlier detection, a breaker per endpoint, retry budget),
calling ``fn(endpoint, timeout)`` that returns at once, against calling ``fn`` bare.

Rows:

* ``route.call.success``: microseconds of wall time per ``Route.call`` minus the bare call
  (median of per-round differences, alternated rounds).
* ``route.call.success_cpu``: the same in CPU time of the calling thread (on a shared,
  loaded machine the wall figure also measures the scheduler).
* ``route.call.floor_cpu``: CPU microseconds per call of :func:`_floor_call`, the same
  bookkeeping written as one inlined function with one lock (round-robin pick, budget
  bucket, closed-breaker check, outstanding count, latency EWMA, one time-bucketed window,
  consecutive-failure count), minus the bare call. ``route.call.over_floor_cpu``: the
  route's CPU cost (``route.call.success_cpu``) over that floor. Not a design to adopt
  (it gives up every seam the route has): the floor that clean Python code doing this work
  cannot go below on this machine, to read the 5 us ceiling against.
* ``route.call.python_calls``: Python-level function calls per ``Route.call`` as counted by
  cProfile (builtins included). Not a time: a deterministic figure that moves only when
  the code does, so a change of a few percent shows even where timings vary by +-20%.
"""

from __future__ import annotations

import cProfile
import itertools
import math
import pstats
import statistics
import threading
import time
from collections.abc import Callable, Iterator

from _common import Context, Row, alternate, compare_alternated

from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.retry import CallOptions
from lake_mesh_consul._core.route import Route

#: The ceiling of issue 13 for the success path, microseconds.
TARGET_US = 5


def _fn(endpoint: ServiceEndpoint, timeout: float | None) -> int:
    return 1


class _FloorState:
    """The per-endpoint state :func:`_floor_call` keeps (one lock for all of it)."""

    __slots__ = ("buckets", "consecutive", "lock", "outstanding", "requests", "rtt", "stamp")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outstanding = self.requests = self.consecutive = 0
        self.rtt = 0.0
        self.stamp = 0.0
        self.buckets = [0] * 10


class _Floor:
    """Three endpoints, a budget bucket and a rotation counter for :func:`_floor_call`."""

    def __init__(self, endpoints: tuple[ServiceEndpoint, ...]) -> None:
        self.endpoints = endpoints
        self.states = [_FloorState() for _ in endpoints]
        self.turn = itertools.count()
        self.budget = [0] * 10
        self.breaker_closed = True


def _floor_call(floor: _Floor, fn: Callable[[ServiceEndpoint, float | None], int]) -> int:
    """The route's success-path bookkeeping, inlined (see ``route.call.floor_cpu``)."""
    now = time.monotonic()
    floor.budget[int(now) % 10] += 1
    i = next(floor.turn) % len(floor.endpoints)
    st = floor.states[i]
    if not floor.breaker_closed:
        raise RuntimeError("open")
    with st.lock:
        st.outstanding += 1
    result = fn(floor.endpoints[i], None)
    end = time.monotonic()
    rtt = end - now
    with st.lock:
        st.outstanding -= 1
        st.requests += 1
        weight = math.exp(-(end - st.stamp) / 10.0)
        st.rtt = rtt if rtt > st.rtt else st.rtt * weight + rtt * (1.0 - weight)
        st.stamp = end
        st.buckets[int(end) % 10] += 1
        st.consecutive = 0
    return result


def _floor_series(loop: int, rounds: int) -> tuple[list[float], list[float]]:
    """Alternated per-round CPU microseconds per call: the inlined floor, and bare."""
    floor = _Floor(_route().endpoints)
    endpoint = floor.endpoints[0]

    def through() -> float:
        start = time.thread_time()
        for _ in range(loop):
            _floor_call(floor, _fn)
        return (time.thread_time() - start) / loop * 1e6

    def bare() -> float:
        start = time.thread_time()
        for _ in range(loop):
            _fn(endpoint, None)
        return (time.thread_time() - start) / loop * 1e6

    through()
    return alternate(through, bare, rounds)


def _route() -> Route:
    endpoints = [ServiceEndpoint.create(f"w{i}", f"127.0.0.{i}", 80) for i in range(1, 4)]
    return Route("bench-route", endpoints=endpoints)


def _series(
    route: Route, timer: Callable[[], float], loop: int, rounds: int
) -> tuple[list[float], list[float]]:
    """Alternated per-round microseconds per call: through the route, and bare."""
    options = CallOptions(idempotent=True)
    endpoint = route.endpoints[0]
    call = route.call

    def through() -> float:
        start = timer()
        for _ in range(loop):
            call(_fn, options)
        return (timer() - start) / loop * 1e6

    def bare() -> float:
        start = timer()
        for _ in range(loop):
            _fn(endpoint, None)
        return (timer() - start) / loop * 1e6

    through()  # warm: breakers, stats and the budget's buckets exist before measuring
    return alternate(through, bare, rounds)


def _python_calls(route: Route, n: int) -> float:
    """Function calls per Route.call, counted by cProfile (deterministic)."""
    options = CallOptions(idempotent=True)
    call = route.call
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(n):
        call(_fn, options)
    profile.disable()
    stats = pstats.Stats(profile)
    own = 1  # the profiler's own disable() is not the route's
    return (stats.total_calls - own) / n - 1  # minus _fn itself


def _difference(row: Row, series: tuple[list[float], list[float]]) -> Row:
    """``row`` valued as the median per-round difference (through the route minus bare)."""
    xs, ys = series
    row.value = statistics.median(x - y for x, y in zip(xs, ys, strict=True))
    row.extra["measures"] = "Route.call minus the bare call, fn without I/O"
    return row


def run(ctx: Context) -> Iterator[Row]:
    """Yield the success-path rows (quick: about 2 s)."""
    loop, rounds = (5_000, 6) if ctx.quick else (20_000, 12)
    route = _route()
    base = "fn(endpoint, timeout) called bare"
    # Row names are written out (not looped over) so the README-claims test can see them.
    wall = _series(route, time.perf_counter, loop, rounds)
    yield _difference(
        compare_alternated(
            "route.call.success", *wall, "us/call", baseline_is=base, target=TARGET_US
        ),
        wall,
    )
    cpu = _series(route, time.thread_time, loop, rounds)
    yield _difference(
        compare_alternated(
            "route.call.success_cpu", *cpu, "us/call", baseline_is=base, target=TARGET_US
        ),
        cpu,
    )
    floor = _floor_series(loop, rounds)
    floor_us = statistics.median(x - y for x, y in zip(*floor, strict=True))
    route_cpu_us = statistics.median(x - y for x, y in zip(*cpu, strict=True))
    yield Row(
        "route.call.floor_cpu",
        floor_us,
        "us/call",
        n=rounds,
        extra={
            "measures": "the same bookkeeping inlined in one function, minus the bare call",
            "target": TARGET_US,
        },
    )
    yield Row(
        "route.call.over_floor_cpu",
        route_cpu_us,
        "us/call",
        baseline=floor_us,
        ratio=route_cpu_us / floor_us if floor_us > 0 else None,
        n=rounds,
        extra={"baseline_is": "route.call.floor_cpu: the bookkeeping inlined"},
    )
    yield Row(
        "route.call.python_calls",
        _python_calls(route, 1_000),
        "calls/call",
        n=1_000,
        extra={"measures": "Python-level calls per Route.call (cProfile, builtins included)"},
    )
